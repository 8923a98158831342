"""Failover policy: retry once on the next owner, only for retryable failures."""

from __future__ import annotations

import pytest

from shardline.router.forward import AttemptFailed, attempt_order, call_with_failover


def test_attempt_order_wraps_in_ring_order() -> None:
    assert attempt_order("b", ["a", "b", "c"]) == ("b", "c")
    assert attempt_order("c", ["a", "b", "c"]) == ("c", "a")
    assert attempt_order("a", ["a"]) == ("a",)
    assert attempt_order("x", ["a", "b"]) == ("x",)


async def test_retries_once_on_unavailable() -> None:
    tried: list[str] = []

    async def call(node: str) -> str:
        tried.append(node)
        if node == "a":
            raise AttemptFailed(node, "UNAVAILABLE", "gone")
        return f"answer from {node}"

    assert await call_with_failover(["a", "b"], call, lambda: 1.0) == "answer from b"
    assert tried == ["a", "b"]


@pytest.mark.parametrize("status", ["DEADLINE_EXCEEDED", "INVALID_ARGUMENT", "NOT_FOUND"])
async def test_final_answers_are_not_retried(status: str) -> None:
    tried: list[str] = []

    async def call(node: str) -> str:
        tried.append(node)
        raise AttemptFailed(node, status, "no")

    with pytest.raises(AttemptFailed) as err:
        await call_with_failover(["a", "b"], call, lambda: 1.0)
    assert err.value.status == status and tried == ["a"]


async def test_no_retry_without_time_left() -> None:
    async def call(node: str) -> str:
        raise AttemptFailed(node, "CONNECTION", "refused")

    with pytest.raises(AttemptFailed) as err:
        await call_with_failover(["a", "b"], call, lambda: 0.0)
    assert err.value.node_id == "a"


async def test_all_attempts_fail_raises_the_last() -> None:
    async def call(node: str) -> str:
        raise AttemptFailed(node, "UNAVAILABLE", "down")

    with pytest.raises(AttemptFailed) as err:
        await call_with_failover(["a", "b"], call, lambda: 1.0)
    assert err.value.node_id == "b"
