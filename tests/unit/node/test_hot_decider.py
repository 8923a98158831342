"""HotCopies deciders: a model with extra copies that went cold on every owner still drops them."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from shardline.node.cluster.hot import HotCopies
from shardline.router.hot_copies import HotPolicy

KEY = "m@1"


class _Counter:
    def labels(self, *_: str) -> _Counter:
        return self

    def inc(self) -> None:
        pass


def _hot(node_id: str, owners: list[str], warm: dict[str, set[str]]) -> tuple[HotCopies, list]:
    members = {n: SimpleNamespace(models=frozenset(warm.get(n, set()))) for n in owners}
    state = SimpleNamespace(view=SimpleNamespace(members=members), owners=lambda _k: owners)
    router: Any = SimpleNamespace(state=state, snapshot=SimpleNamespace(hot={KEY: 1}))
    executor: Any = SimpleNamespace(
        models={k: object() for k in warm.get(node_id, set())},
        busy={},
        queue_ms={},
        metrics=SimpleNamespace(hot_copy_changes=_Counter()),
    )
    writes: list[tuple[str, bytes | None]] = []

    async def write(key: str, value: bytes | None) -> None:
        writes.append((key, value))

    policy = HotPolicy(down_after_s=2.0, cooldown_s=0.0, up_after_s=1.0)
    return HotCopies(node_id, executor, router, policy, write), writes


def _observe(hot: HotCopies, times: list[float]) -> None:
    async def run() -> None:
        for t in times:
            await hot.observe_once(t)

    asyncio.run(run())


def test_first_owner_drops_the_copies_of_a_model_warm_nowhere() -> None:
    first, writes = _hot("a", ["a", "b", "c"], warm={})
    assert first.decides_cold(KEY)
    _observe(first, [0.0, 1.0, 2.5])
    assert writes == [(KEY, None)]


def test_only_the_first_owner_decides_when_cold_everywhere() -> None:
    second, writes = _hot("b", ["a", "b", "c"], warm={})
    assert not second.decides_cold(KEY)
    _observe(second, [0.0, 1.0, 2.5])
    assert writes == []


def test_no_cold_decider_while_an_owner_holds_it() -> None:
    first, writes = _hot("a", ["a", "b", "c"], warm={"c": {KEY}})
    assert not first.decides_cold(KEY)
    _observe(first, [0.0, 1.0, 2.5])
    assert writes == []  # c is warm and decides (with its own load)
