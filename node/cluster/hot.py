"""Hot copies on a node: watch the models it serves, ask for more copies of a hot one.

Every ``sample_s`` the node samples, for each model resident here, its requests in flight
here (``Executor.busy``) and its recent queue time (``Executor.queue_ms``); every
``observe_s`` it feeds the mean in flight and the queue time of the batches run since the
last observation to the pure policy (``shardline.router.hot_copies``),
for the models it *decides* for: those whose first warm owner, in owner order, is this node
(one decider per model, with no election: every node sees the same owners and loaded
sets). When the policy changes the number of extra copies, the decider writes it to etcd
(``hot/<key>``: ``{"copies", "by", "at"}``; deleted at 0). Every node reads it with the
rest of the catalog: placement gives the model ``R + copies`` owners
(``shardline.router.placement_policy``), the new owners load it at once
(``shardline.node.cluster.placement``) and replica choice spreads requests over every warm
copy. When the model has been cold for a while the copies are dropped one by one, and
the nodes that held them let them go. The policy's hysteresis (separate up and down
thresholds, sustain times, a cooldown) keeps a copy from being loaded and evicted in a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from shardline.node.cluster.routing import ClusterRouter
from shardline.node.serving.executor import Executor
from shardline.router.hot_copies import HotPolicy, HotState, observe

log = logging.getLogger("shardline.hot")

Write = Callable[[str, bytes | None], Awaitable[None]]


class HotCopies:
    """The hot-copy loop of one node (see the module docstring)."""

    def __init__(
        self,
        node_id: str,
        executor: Executor,
        router: ClusterRouter,
        policy: HotPolicy,
        write: Write,
        *,
        sample_s: float = 0.25,
        observe_s: float = 1.0,
    ) -> None:
        self.node_id = node_id
        self.executor = executor
        self.router = router
        self.policy = policy
        self._write = write
        self.sample_s = sample_s
        self.observe_s = observe_s
        self.states: dict[str, HotState] = {}
        self._samples: dict[str, list[float]] = {}
        self._task: asyncio.Task[None] | None = None
        self.changes = executor.metrics.hot_copy_changes

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"hot-copies-{self.node_id}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def decides(self, key: str) -> bool:
        """Is this node the first warm owner of ``key`` (the one that decides for it)?"""
        state = self.router.state
        members = state.view.members
        for owner in state.owners(key):
            if owner == self.node_id:
                return key in self.executor.models
            member = members.get(owner)
            if member is not None and key in member.models:
                return False
        return False

    def decides_cold(self, key: str) -> bool:
        """No owner of ``key`` holds it warm: is this node its first live owner?

        A model with extra copies can go cold everywhere (evicted by colder traffic on
        every owner); its copies must still drop, so the first owner in owner order
        decides for it then, observing no load.
        """
        state = self.router.state
        members = state.view.members
        owners = list(state.owners(key))
        if any(key in m.models for o in owners if (m := members.get(o)) is not None):
            return False
        return bool(owners) and owners[0] == self.node_id

    async def _run(self) -> None:
        next_observe = time.monotonic() + self.observe_s
        while True:
            # A sampling timer: load is a level to measure, not an event to wait for.
            await asyncio.sleep(self.sample_s)
            busy = self.executor.busy
            for key in self.executor.models:
                self._samples.setdefault(key, []).append(float(busy.get(key, 0)))
            if time.monotonic() >= next_observe:
                next_observe = time.monotonic() + self.observe_s
                try:
                    await self.observe_once(time.monotonic())
                except Exception:
                    log.exception("hot-copy pass failed")

    async def observe_once(self, now: float) -> None:
        samples, self._samples = self._samples, {}
        hot = self._hot()
        cold = {k for k, n in hot.items() if n > 0 and k not in samples and self.decides_cold(k)}
        for key in list(self.states):
            if key not in self.executor.models and key not in cold:
                del self.states[key]  # no longer served here: another node decides
        for key in cold:
            samples[key] = []  # warm nowhere: no load to observe, so its copies can drop
        for key, values in samples.items():
            if key not in cold and (key not in self.executor.models or not self.decides(key)):
                continue
            copies = hot.get(key, 0)
            state = self.states.get(key) or HotState(copies=copies)
            if state.copies != copies:  # someone else changed it (a former decider)
                state = HotState(copies=copies, changed_at=now)
            members = self.router.state.view.members.values()
            warm = sum(1 for m in members if key in m.models)  # (for the log line)
            mean = sum(values) / len(values) if values else 0.0
            # The queue time of the batches run since the last observation (none: 0).
            queue_ms = self.executor.queue_ms.pop(key, 0.0)
            # In flight per copy: this copy's own load stands for each warm copy's (replica
            # choice spreads requests evenly over them).
            new = observe(
                self.policy, state, now,
                in_flight_per_copy=mean, queue_ms=queue_ms,
            )  # fmt: skip
            self.states[key] = new
            if new.copies != copies:
                direction = "up" if new.copies > copies else "down"
                log.info("%s: %s is %s: %d -> %d extra copies (%d warm, %.1f in flight here, "
                         "queue %.0f ms)", self.node_id, key,
                         "hot" if direction == "up" else "cold", copies, new.copies, warm,
                         mean, queue_ms)  # fmt: skip
                self.changes.labels(direction).inc()
                doc = {
                    "copies": new.copies,
                    "by": self.node_id,
                    "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
                }
                await self._write(key, json.dumps(doc).encode() if new.copies else None)

    def _hot(self) -> dict[str, int]:
        snapshot = self.router.snapshot
        return dict(snapshot.hot) if snapshot is not None else {}


__all__ = ["HotCopies"]
