"""Routing decisions on a simulated node, as ``node.routing.ClusterRouter`` makes them.

``candidates`` is ``router.handoff.serving_candidates`` with the node's warm-model test
(memoized per node until its view or anyone's models change); ``choose`` is
``ClusterRouter.choose`` around ``router.replica.choose_replica``; ``replicas_of`` reads R
per model key from the catalog like ``node.placement.replicas_of``.

A candidate tuple is interned per world as a ``Serving``, which carries what is pure in it
and so can be shared by every node: each user's rendezvous winner and the failover order
from each chosen candidate (``router.forward.attempt_order``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from membership.snapshot import ClusterSnapshot
from router import handoff
from router.forward import attempt_order
from router.replica import ReplicaPolicy, choose_replica, rendezvous

if TYPE_CHECKING:
    from sim.node import SimNode

POLICY = ReplicaPolicy()
_limit = POLICY.limit
MAX_INTERNED = 4096  # distinct candidate tuples remembered per world (then start over)


class Serving:
    """One candidate tuple (``ids``, best first) with its pure results memoized:
    ``sticky`` (user index -> ``rendezvous(user_id, ids)``) and ``orders`` (chosen ->
    ``attempt_order(chosen, ids)``)."""

    __slots__ = ("ids", "orders", "sticky")

    def __init__(self, ids: tuple[str, ...]) -> None:
        self.ids = ids
        self.sticky: dict[int, str] = {}
        self.orders: dict[str, tuple[str, ...]] = {}

    def rendezvous(self, user: int, user_id: str) -> str:
        """``rendezvous(user_id, ids)`` for the user of that index (memoized)."""
        sticky = self.sticky.get(user)
        if sticky is None:
            ids = self.ids
            sticky = ids[0] if len(ids) == 1 else rendezvous(user_id, ids)
            self.sticky[user] = sticky
        return sticky

    def attempts(self, chosen: str) -> tuple[str, ...]:
        order = self.orders.get(chosen)
        if order is None:
            order = self.orders[chosen] = attempt_order(chosen, self.ids)
        return order


def interned(registry: dict[tuple[str, ...], Serving], ids: tuple[str, ...]) -> Serving:
    serving = registry.get(ids)
    if serving is None:
        if len(registry) >= MAX_INTERNED:
            registry.clear()
        serving = registry[ids] = Serving(ids)
    return serving


def replicas_of(snapshot: ClusterSnapshot) -> dict[str, int]:
    """Model key -> R from the catalog's workflow documents (as ``node.placement``)."""
    out: dict[str, int] = {}
    for key, doc in snapshot.workflows.items():
        manifest = doc.get("manifest")
        r = manifest.get("replicas", 2) if isinstance(manifest, dict) else None
        out[key] = r if isinstance(r, int) and not isinstance(r, bool) and r >= 1 else 2
    return out


def candidates(node: SimNode, key: str, owners: tuple[str, ...]) -> Serving:
    """``router.handoff.serving_candidates`` as ``node.routing`` calls it, over the owners of
    ``key`` on the node's current ring (memoized in ``node.cand`` while they have some: the
    node drops entries when its ring, its replica counts, its view's members or anyone's
    models change)."""
    hit = node.cand.get(key)
    if hit is not None:
        return hit
    me, members, models, local = node.node_id, node.view.members, node.models_of, node.executors

    def warm(node_id: str) -> bool:
        if node_id == me:
            return key in local
        return node_id in members and key in models.get(node_id, ())

    found = interned(node.world.serving, handoff.serving_candidates(key, owners, node.view, warm))
    if owners:
        node.cand[key] = found
    return found


def serving_for(node: SimNode, key: str) -> Serving | None:
    """The candidates for ``key`` on ``node``'s ring (None: the ring has no owner)."""
    hit = node.cand.get(key)
    if hit is not None:
        return hit
    owners = node.ring.owners(key, node.replicas.get(key, 2))
    return candidates(node, key, owners) if owners else None


def choose(node: SimNode, serving: Serving, user: int) -> str:
    """``ClusterRouter.choose``: here when a warm owner under the limit, else the policy.

    ``choose_replica`` returns the user's sticky candidate (``rendezvous``) exactly when
    its in-flight count is within ``POLICY.limit`` of the candidates' mean (its documented
    contract, checked against the real function in tests/sim; a single candidate is its
    own sticky one and always within). So that case is answered from the memoized
    ``rendezvous``; any other case calls the real function. When this node is not a
    candidate, the counts are all gossiped ones, so the limit is remembered per candidate
    tuple until gossip brings new counts (``node.limits`` is emptied then). ``user`` is
    the user's index (its id is ``user_ids[user]`` of the engine)."""
    ids = serving.ids
    me = node.node_id
    in_flight = node.in_flight_of
    if me in ids:
        local = node.in_flight
        total = 0
        for c in ids:
            total += local if c == me else in_flight.get(c, 0)
        limit = _limit(total / len(ids))
        if local <= limit:
            return me
        sticky = serving.sticky.get(user)
        if sticky is None:
            sticky = serving.rendezvous(user, node.world.engine.user_ids[user])
        if (local if sticky == me else in_flight.get(sticky, 0)) <= limit:
            return sticky
        counts = {c: local if c == me else in_flight.get(c, 0) for c in ids}
    else:
        known = node.limits.get(serving)
        if known is None:
            total = 0
            for c in ids:
                total += in_flight.get(c, 0)
            known = node.limits[serving] = _limit(total / len(ids))
        limit = known
        sticky = serving.sticky.get(user)
        if sticky is None:
            sticky = serving.rendezvous(user, node.world.engine.user_ids[user])
        if in_flight.get(sticky, 0) <= limit:
            return sticky
        counts = in_flight  # (all gossiped: the same counts)
    user_id = node.world.engine.user_ids[user]
    chosen = choose_replica(ids, user_id, counts, node.replica_rng, POLICY)
    assert chosen is not None
    return chosen
