"""Routing decisions on a simulated node, as ``node.routing.ClusterRouter`` makes them.

``candidates`` is ``router.handoff.serving_candidates`` with the node's warm-model test
(memoized per node until its view or anyone's models change); ``choose`` is
``ClusterRouter.choose`` around ``router.replica.choose_replica``; ``replicas_of`` reads R
per model key from the catalog like ``node.placement.replicas_of``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from membership.snapshot import ClusterSnapshot
from router import handoff
from router.replica import ReplicaPolicy, choose_replica, rendezvous

if TYPE_CHECKING:
    from sim.node import SimNode

POLICY = ReplicaPolicy()


def replicas_of(snapshot: ClusterSnapshot) -> dict[str, int]:
    """Model key -> R from the catalog's workflow documents (as ``node.placement``)."""
    out: dict[str, int] = {}
    for key, doc in snapshot.workflows.items():
        manifest = doc.get("manifest")
        r = manifest.get("replicas", 2) if isinstance(manifest, dict) else None
        out[key] = r if isinstance(r, int) and not isinstance(r, bool) and r >= 1 else 2
    return out


def candidates(node: SimNode, key: str, owners: tuple[str, ...]) -> tuple[str, ...]:
    """``router.handoff.serving_candidates`` as ``node.routing`` calls it (memoized)."""
    hit = node.cand.get(key)
    if hit is not None and hit[0] is owners:
        return hit[1]
    me, members, models, local = node.node_id, node.view.members, node.models_of, node.executors

    def warm(node_id: str) -> bool:
        if node_id == me:
            return key in local
        return node_id in members and key in models.get(node_id, ())

    found = handoff.serving_candidates(key, owners, node.view, warm)
    node.cand[key] = (owners, found)
    return found


def choose(node: SimNode, serving: tuple[str, ...], user_id: str) -> str:
    """``ClusterRouter.choose``: here when a warm owner under the limit, else the policy.

    ``choose_replica`` returns the user's sticky candidate exactly when its in-flight
    count is within ``POLICY.limit`` of the candidates' mean (its documented contract,
    checked against the real function in tests/sim). So once the real function has
    returned the sticky candidate (``rendezvous``), later requests of that user to the
    same candidates (from any node: ``World.sticky``) get it back without the hashing
    while it stays within the limit; any other case calls the real function."""
    me = node.node_id
    in_flight_of = node.in_flight_of
    local = node.in_flight
    loads = [local if c == me else in_flight_of.get(c, 0) for c in serving]
    limit = POLICY.limit(sum(loads) / len(loads))
    if me in serving and local <= limit:
        return me
    memo_key = (serving, user_id)
    sticky = node.world.sticky.get(memo_key)
    if sticky is not None and loads[serving.index(sticky)] <= limit:
        return sticky
    counts = dict(zip(serving, loads, strict=True))
    chosen = choose_replica(serving, user_id, counts, node.replica_rng, POLICY)
    assert chosen is not None
    if sticky is None and chosen == rendezvous(user_id, serving):
        if len(node.world.sticky) >= 500_000:
            node.world.sticky.clear()
        node.world.sticky[memo_key] = chosen
    return chosen
