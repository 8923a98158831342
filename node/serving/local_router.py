"""Routing on a standalone node, and the shadow copies both routers start.

``LocalRouter`` is the router of a standalone node: every model is here, so it runs the
decided request on the executor (``Executor.execute``) and each shadow copy on the local
actors. ``Shadows`` runs shadow copies in the background for either router
(``shardline.node.cluster.routing.ClusterRouter`` sends a copy to its owner, or here through
``run_here``): bounded by ``max_shadow_in_flight``, never awaited, never changing the answer; each
outcome is counted in ``shardline_shadow_requests_total``.

Like every router it is handed a decided request by the ingress and calls only downward
(the executor here, or ``shardline.node.cluster.peers`` there), never back into the ingress.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from shardline.node.sdk.errors import Overloaded, RequestError
from shardline.node.serving.executor import Executor
from shardline.router.decision import Decision
from shardline.router.rules import RequestContext

log = logging.getLogger("shardline.node")


class Shadows:
    """Shadow copies in flight: bounded, never awaited, outcomes counted per model key."""

    def __init__(self, executor: Executor, max_in_flight: int, timeout_s: float) -> None:
        self.executor = executor
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        """How long a shadow copy sent to a peer may take (one run here: the executor's)."""
        self.counter = executor.metrics.shadow_requests
        self._tasks: set[asyncio.Future[None]] = set()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @property
    def full(self) -> bool:
        return len(self._tasks) >= self.max_in_flight

    def run_here(self, key: str, context: RequestContext, raw: bytes) -> None:
        """Run a shadow copy on the local actor of ``key``: bounded, never awaited."""
        if key not in self.executor.models:
            self.counter.labels(key, "not_loaded").inc()
            return
        if self.full:
            self.counter.labels(key, "dropped").inc()
            return
        self.track(key, self.executor.run_shadow(raw, key, context))

    def track(self, key: str, work: Awaitable[object]) -> None:
        """Run ``work`` in the background and count its outcome under ``key``."""
        task = asyncio.ensure_future(self._count(key, work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _count(self, key: str, work: Awaitable[object]) -> None:
        outcome = "ok"
        try:
            await work
        except Overloaded:
            outcome = "dropped"
        except RequestError as exc:
            outcome = "error"
            log.info("shadow %s failed: %s", key, exc)
        except Exception as exc:
            outcome = "error"
            log.info("shadow %s failed: %s", key, exc)
        self.counter.labels(key, outcome).inc()

    async def drain(self) -> None:
        """Wait for the shadow copies now in flight (tests and shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def cancel(self) -> None:
        """Cancel the shadow copies still in flight (shutdown, once the actors stopped)."""
        for task in list(self._tasks):
            task.cancel()


class LocalRouter:
    """Standalone: every model is local; shadows run on the local actors."""

    def __init__(self, executor: Executor, shadows: Shadows) -> None:
        self.executor = executor
        self.shadows = shadows

    async def route(
        self,
        raw: bytes,
        context: RequestContext,
        decision: Decision,
        timeout_s: float,
        started: float,
    ) -> tuple[bytes, str]:
        for key in decision.shadows:
            self.shadows.run_here(key, context, raw)
        answer = await self.executor.execute(
            raw,
            decision.model_key,
            decision.cell,
            hops=0,
            timeout_s=timeout_s,
            started=started,
            context=context,
        )
        return answer, "served"
