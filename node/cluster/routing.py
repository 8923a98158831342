"""Cluster routing on a node: owners on the ring, replica choice, forward or serve here.

The router of a cluster node: the ingress (``shardline.node.serving.ingress``) hands it a decided
request (model key, cell, shadows), and it calls only downward, never back into the ingress: the
executor here (``shardline.node.serving.executor.Executor.execute``) or a peer there
(``shardline.node.cluster.peers.PeerPool.forward``).

``ClusterRouter`` keeps an immutable ``RoutingState`` (membership view, ring over the
active members, replicas per model key) swapped atomically on every view change; the
hot path only reads it. For a decided request it picks a replica among the owners that
have the model warm (sticky per user unless loaded, else power of two choices), runs it
here or forwards the original bytes to the owner, and fails over once to the next owner
on UNAVAILABLE, a broken connection or overload. Shadow copies go to their own owners,
bounded and never awaited (``shardline.node.serving.local_router.Shadows``). ``serve_forward``
answers a peer's ``Peer.Forward``: on the executor here, or passed on once to another owner.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from shardline.membership.snapshot import ClusterSnapshot
from shardline.membership.view import MembershipView
from shardline.node.cluster.peers import PeerPool
from shardline.node.cluster.placement import needs_of, replicas_of
from shardline.node.cluster.residence import Residence
from shardline.node.sdk.errors import (
    InvalidArgument,
    Overloaded,
    Unavailable,
    clip,
    error_for_status,
)
from shardline.node.serving.executor import Executor
from shardline.node.serving.inputs import DEFAULT_HEAD_LIMITS
from shardline.node.serving.local_router import Shadows
from shardline.router import handoff
from shardline.router.decision import Decision
from shardline.router.forward import MAX_HOPS, AttemptFailed, attempt_order, call_with_failover
from shardline.router.handoff import Owners, ring_of
from shardline.router.replica import ReplicaPolicy, choose_replica, rendezvous
from shardline.router.ring import Ring
from shardline.router.rules import RequestContext

log = logging.getLogger("shardline.routing")

DEFAULT_REPLICAS = handoff.DEFAULT_REPLICAS
FIRST_ATTEMPT_SHARE = 0.5  # of the remaining deadline, when another owner can be tried


@dataclass(frozen=True)
class RoutingState:
    view: MembershipView = field(default_factory=MembershipView)
    ring: Owners = field(default_factory=lambda: Ring(()))
    replicas: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def owners(self, model_key: str) -> tuple[str, ...]:
        return self.ring.owners(model_key, self.replicas.get(model_key, DEFAULT_REPLICAS))


class ClusterRouter:
    def __init__(
        self,
        executor: Executor,
        shadows: Shadows,
        peers: PeerPool,
        *,
        rng: random.Random | None = None,
        policy: ReplicaPolicy | None = None,
        residence: Residence | None = None,
    ) -> None:
        self.residence = residence
        """Loads a model placed here on its first request (None: only resident ones serve)."""
        self.executor = executor
        self.shadows = shadows
        self.metrics = executor.metrics
        self.node_id = executor.config.node_id
        self.peers = peers
        self.catalog_models: frozenset[str] = frozenset()
        """The model keys in the catalog (``serve_forward`` refuses others)."""
        self.rng = rng or random.Random()
        self.policy = policy or ReplicaPolicy()
        self.state = RoutingState()
        self.snapshot: ClusterSnapshot | None = None

    # -- state -----------------------------------------------------------------------------

    def on_view(self, view: MembershipView, snapshot: ClusterSnapshot) -> None:
        """Swap in the routing state for a new view (ring rebuilt only when members change).

        The node divides its admission limits by ``len(self.state.ring)`` afterwards."""
        self.snapshot = snapshot
        replicas = replicas_of(snapshot)
        ring = ring_of(view, (), needs_of(snapshot))
        if ring == self.state.ring:
            ring = self.state.ring  # keep the memoized owners
        elif len(self.state.ring) or len(ring):
            metrics = self.metrics
            metrics.ring_changes.inc()
            moved = sum(
                set(self.state.ring.owners(k, r)) != set(ring.owners(k, r))
                for k, r in replicas.items()
            )
            metrics.keys_moved.inc(moved)
        self.state = RoutingState(view, ring, MappingProxyType(replicas))
        self.peers.retain({m.record.grpc_address for m in view.members.values()})

    def is_warm(self, model_key: str, node_id: str) -> bool:
        if node_id == self.node_id:
            return model_key in self.executor.models
        member = self.state.view.members.get(node_id)
        return member is not None and model_key in member.models

    def serving(self, model_key: str, owners: tuple[str, ...]) -> tuple[str, ...]:
        """Where a request may go while keys move, best first
        (``shardline.router.handoff.serving_candidates``): with lazy loading, the warm ones
        and then the cold owners, which load it on demand if the warm ones fail."""
        lazy = self.residence is not None  # a cold owner loads on the first request
        return handoff.serving_candidates(
            model_key, owners, self.state.view, lambda n: self.is_warm(model_key, n), lazy=lazy
        )

    def warm_part(self, model_key: str, candidates: tuple[str, ...]) -> tuple[str, ...]:
        """The candidates that hold the model warm (all of them when none does): the
        replica is chosen among these; the cold owners are only failover targets."""
        warm = tuple(c for c in candidates if self.is_warm(model_key, c))
        return warm or candidates

    def in_flight(self) -> dict[str, int]:
        counts = self.state.view.in_flight()
        counts[self.node_id] = self.executor.in_flight
        return counts

    def choose(self, candidates: tuple[str, ...], user_id: str) -> str:
        """Serve here when this node is a warm owner and not loaded above the policy's
        limit (no hop; what a smart client relies on); otherwise sticky / two choices."""
        in_flight = self.in_flight()
        if self.node_id in candidates:
            mean = sum(in_flight.get(c, 0) for c in candidates) / len(candidates)
            if in_flight[self.node_id] <= self.policy.limit(mean):
                return self.node_id
        chosen = choose_replica(candidates, user_id, in_flight, self.rng, self.policy)
        assert chosen is not None
        return chosen

    # -- request path ----------------------------------------------------------------------

    async def route(
        self,
        raw: bytes,
        context: RequestContext,
        decision: Decision,
        timeout_s: float,
        started: float,
    ) -> tuple[bytes, str]:
        key = decision.model_key
        owners = self.state.owners(key)
        if not owners:
            raise Unavailable(f"no live owner for model {key}: the ring is empty")
        candidates = self.serving(key, owners)
        chosen = self.choose(self.warm_part(key, candidates), context.user_id)
        for shadow in decision.shadows:
            self._shadow(shadow, context, raw)
        return await self._run(
            raw, key, decision.cell, attempt_order(chosen, candidates), 1, timeout_s, started,
            context,
        )  # fmt: skip

    async def _run(
        self,
        raw: bytes,
        key: str,
        cell: str,
        attempts: tuple[str, ...],
        hops: int,
        timeout_s: float,
        started: float,
        context: RequestContext | None,
    ) -> tuple[bytes, str]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        tried: list[str] = []
        metrics = self.metrics

        async def call(node_id: str) -> bytes:
            if tried:
                metrics.failovers.labels(key).inc()
            tried.append(node_id)
            remaining = deadline - loop.time()
            if node_id == self.node_id:
                try:
                    await self._resident(key, remaining)
                    return await self.executor.execute(
                        raw, key, cell, hops=hops - 1, timeout_s=remaining, started=started,
                        context=context,
                    )  # fmt: skip
                except (Unavailable, Overloaded) as exc:
                    raise AttemptFailed(node_id, exc.status.name, exc.message) from None
            member = self.state.view.members.get(node_id)
            if member is None:
                raise AttemptFailed(node_id, "UNAVAILABLE", "not in the membership view")
            # An owner behind a partition or paused never answers: give a forward that has a
            # fallback only part of the time left, so the failover still fits the deadline.
            last = node_id == attempts[-1]
            budget = remaining if last else remaining * FIRST_ATTEMPT_SHARE
            try:
                answer = await self.peers.forward(
                    node_id, member.record.grpc_address, raw, model_key=key, cell=cell,
                    hops=hops, ingress_node=self.node_id, timeout_s=budget,
                )  # fmt: skip
            except AttemptFailed as exc:
                metrics.forwards.labels(node_id, exc.status).inc()
                if exc.status == "DEADLINE_EXCEEDED" and not last:
                    raise AttemptFailed(
                        node_id, "UNAVAILABLE", f"no answer within {budget:.3f}s"
                    ) from None
                raise
            metrics.forwards.labels(node_id, "OK").inc()
            return answer

        try:
            answer = await call_with_failover(attempts, call, lambda: deadline - loop.time())
        except AttemptFailed as exc:
            if exc.status == "INVALID_ARGUMENT":  # already names the field: pass it on as is
                raise error_for_status(exc.status, exc.message) from None
            raise error_for_status(exc.status, f"{key} on {exc.node_id}: {exc.message}") from None
        if len(tried) > 1:
            return answer, "failover"
        return answer, "served" if tried[0] == self.node_id else "forwarded"

    async def _resident(self, key: str, timeout_s: float) -> None:
        """Make sure ``key`` is resident here: a model placed here but evicted or never
        loaded is loaded now, the request waiting for it (``Residence.ensure``)."""
        residence = self.residence
        if residence is None:
            return
        if key in self.executor.models:
            residence.touch(key)
            return
        if key in self.catalog_models:
            await residence.ensure(key, timeout_s)

    def _shadow(self, key: str, context: RequestContext, raw: bytes) -> None:
        owners = self.warm_part(key, self.serving(key, self.state.owners(key)))
        shadows = self.shadows
        if not owners:
            shadows.counter.labels(key, "not_loaded").inc()
            return
        target = rendezvous(context.user_id, owners)
        if target == self.node_id:
            shadows.run_here(key, context, raw)
            return
        member = self.state.view.members.get(target)
        if member is None or shadows.full:
            shadows.counter.labels(key, "dropped").inc()
            return
        shadows.track(
            key,
            self.peers.forward(
                target, member.record.grpc_address, raw, model_key=key, cell="shadow", hops=1,
                ingress_node=self.node_id, timeout_s=shadows.timeout_s, shadow=True,
            ),
        )  # fmt: skip

    async def serve_forward(self, message: Any, timeout_s: float, started: float) -> bytes:
        """Answer a ``Peer.Forward``: run it here, or pass it on once more (hop limit 2)."""
        key, hops = message.model_key, message.hops
        limit = DEFAULT_HEAD_LIMITS.model_key_chars  # a peer's fields, bounded like a client's
        if len(key) > limit or len(message.cell) > limit:
            raise InvalidArgument("model_key", f"longer than {limit} characters")
        if key not in self.catalog_models and key not in self.executor.models:
            # Unavailable, not NOT_FOUND: during a deploy this node may apply the catalog
            # after the ingress did, and the ingress then tries another owner.
            raise Unavailable(f"model {clip(key)} is not in the catalog of {self.node_id}")
        if hops > MAX_HOPS:
            raise Unavailable(f"{key}: hop limit of {MAX_HOPS} exceeded")
        if key in self.executor.models or self.node_id in self.state.owners(key):
            await self._resident(key, timeout_s)  # placed here: a cold start loads it
            return await self.executor.execute(
                message.request, key, message.cell, hops=hops, timeout_s=timeout_s,
                started=started,
            )  # fmt: skip
        if hops >= MAX_HOPS:
            raise Unavailable(
                f"{key} is not loaded on {self.node_id} and the hop limit of {MAX_HOPS} is reached"
            )
        owners = self.state.owners(key)
        others = tuple(
            o for o in self.serving(key, owners) if o not in (self.node_id, message.ingress_node)
        )
        if not others:
            raise Unavailable(f"{key} is not loaded on {self.node_id} and no other owner has it")
        answer, _ = await self._run(
            message.request, key, message.cell, others[:1], hops + 1, timeout_s, started, None
        )
        return answer


__all__ = ["ClusterRouter", "RoutingState"]
