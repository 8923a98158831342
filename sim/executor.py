"""A simulated model actor: a bounded batch queue in front of one model key on one node.

It mirrors ``shardline.node.serving.model_actor`` with the real batch-closing policy
(``shardline.workflows.batching.BatchPolicy``): a batch closes when it holds ``max_batch`` requests
or ``max_delay_ms`` after its first request was enqueued; requests whose deadline passed
while queued are dropped at closing (their asker already gave up); a full queue rejects
with RESOURCE_EXHAUSTED. A batch of n takes ``(base + per_item * n)`` ms, times the node's
slow-down factor, times a lognormal jitter. Closing an executor (unload) stops new work and
lets the queue finish; killing it (crash) drops everything on the floor.

It knows nothing of routing: requests are handed to ``offer`` (by ``shardline.sim.serving``), its
outcomes go to ``Answers`` (the request engine), and the node it runs on is a
``shardline.sim.request.Host`` (its in-flight count, pause and slow-down); ``drained`` tells the
node's placement that a closing executor has finished.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from heapq import heappush
from typing import Protocol

from shardline.sim.core import EventLoop
from shardline.sim.request import Host, Request
from shardline.sim.scenario import WorkflowSpec
from shardline.workflows.batching import BatchPolicy


class Answers(Protocol):
    """Where an executor's outcomes go (``shardline.sim.serving.RequestEngine``)."""

    def executed(self, batch: list[Request], executor: Executor) -> None:
        """A batch finished on ``executor``."""

    def expired_in_queue(self, req: Request) -> None:
        """Dropped at batch closing: its deadline passed while it was queued."""


class Executor:
    """One model key's batch queue on one node (see the module docstring)."""

    __slots__ = (
        "_base_s",
        "_busy",
        "_close_fn",
        "_close_token",
        "_complete_fn",
        "_drained",
        "_engine",
        "_loop",
        "_max_batch",
        "_per_item_s",
        "_rng",
        "_running",
        "_touch",
        "alive",
        "batches",
        "capacity",
        "closing",
        "key",
        "node",
        "policy",
        "queue",
        "sigma",
    )

    def __init__(
        self,
        node: Host,
        spec: WorkflowSpec,
        loop: EventLoop,
        engine: Answers,
        rng: random.Random,
        drained: Callable[[Executor], None],
    ) -> None:
        self.node = node
        self.key = spec.key
        self.policy = BatchPolicy(spec.max_batch, spec.max_delay_ms)
        self._max_batch = self.policy.max_batch_size
        self.capacity = spec.queue_capacity
        self._base_s = spec.base_ms / 1000.0
        self._per_item_s = spec.per_item_ms / 1000.0
        self.sigma = spec.jitter
        self._loop = loop
        self._engine = engine
        self._rng = rng
        self._drained = drained
        self.queue: deque[Request] = deque()  # (each with its ``t_queued``)
        self._busy = False
        self._running: list[Request] = []
        self._close_token = 0
        self.alive = True
        self.closing = False
        self.batches = 0
        residency = getattr(node, "residency", None)  # (a budget: every use is an LRU touch)
        self._touch = None if residency is None else residency.touch
        self._close_fn = self._close  # (bound once: scheduled for every batch)
        self._complete_fn = self._complete

    def offer(self, req: Request) -> str | None:
        """Enqueue ``req``; an error status when it cannot be taken."""
        if self.closing or not self.alive:
            return "UNAVAILABLE"
        queue = self.queue
        if len(queue) >= self.capacity:
            return "RESOURCE_EXHAUSTED"
        now = self._loop.now
        if self._touch is not None:
            self._touch(self.key, now)
        req.t_queued = now
        queue.append(req)
        self.node.in_flight += 1
        if not self._busy and (len(queue) == 1 or len(queue) >= self._max_batch):
            self._schedule_close(now)
        return None

    def _schedule_close(self, now: float) -> None:
        self._close_token += 1
        first = self.queue[0].t_queued
        wait = self.policy.wait_s(len(self.queue), first, now)
        loop = self._loop  # loop.at(now + wait, self._close, token), inline (wait >= 0)
        loop.seq += 1
        heappush(loop.heap, (now + wait, loop.seq, self._close_fn, self._close_token))

    def _close(self, token: int) -> None:
        if token != self._close_token or self._busy or not self.alive:
            return
        node = self.node
        if node.frozen:
            node.defer(self._close, token)
            return
        now = self._loop.now
        queue = self.queue
        limit = self._max_batch
        if len(queue) <= limit:
            taken = list(queue)
            queue.clear()
        else:
            taken = [queue.popleft() for _ in range(limit)]
        batch = [req for req in taken if req.deadline > now]
        if len(batch) < len(taken):  # some expired: one by one, topping up from the queue
            queue.extendleft(reversed(taken))
            batch = []
            engine = self._engine
            while queue and len(batch) < limit:
                req = queue.popleft()
                if req.deadline <= now:
                    node.in_flight -= 1
                    engine.expired_in_queue(req)
                else:
                    batch.append(req)
        if not batch:
            if queue:
                self._schedule_close(now)
            elif self.closing:
                self._drained(self)
            return
        cost = (self._base_s + self._per_item_s * len(batch)) * node.slow_factor
        if self.sigma:
            cost *= math.exp(self._rng.gauss(0.0, self.sigma))
        self._busy = True
        self._running = batch
        self.batches += 1
        loop = self._loop  # loop.at(now + cost, self._complete, batch), inline (cost >= 0)
        loop.seq += 1
        heappush(loop.heap, (now + cost, loop.seq, self._complete_fn, batch))

    def _complete(self, batch: list[Request]) -> None:
        if not self.alive:
            return
        node = self.node
        if node.frozen:
            node.defer(self._complete, batch)
            return
        self._busy = False
        self._running = []
        node.in_flight -= len(batch)
        self._engine.executed(batch, self)
        if self.queue:
            self._schedule_close(self._loop.now)
        elif self.closing:
            self._drained(self)

    def kill(self) -> list[Request]:
        """A crash: everything queued or running is dropped (and returned)."""
        self.alive = False
        dropped = [*self._running, *self.queue]
        self.queue.clear()
        self._running = []
        return dropped

    @property
    def pending(self) -> bool:
        """Requests are queued or running."""
        return bool(self.queue) or self._busy
