"""Routing decisions on a simulated node, as ``shardline.node.cluster.routing.ClusterRouter`` makes
them: where.

``candidates`` is ``shardline.router.handoff.serving_candidates`` with the node's warm-model test
(``lazy`` when the node has a memory budget, as ``ClusterRouter.serving``) and its warm part
(``ClusterRouter.warm_part``), memoized per node until its view or anyone's models change;
``choose`` is ``ClusterRouter.choose`` around ``shardline.router.replica.choose_replica`` (among the
warm part); ``replicas_of`` reads R per model key from the catalog like
``shardline.node.cluster.placement.replicas_of``.

A candidate tuple is interned per world as a ``shardline.sim.candidates.Serving`` (``registry``: the
request engine's), which memoizes what is pure in it. These functions read a node only as
a ``shardline.sim.request.Host`` and answer a node id; they never call the request engine back.
"""

from __future__ import annotations

from shardline.membership.snapshot import ClusterSnapshot
from shardline.router import handoff
from shardline.router.replica import ReplicaPolicy, choose_replica
from shardline.sim.candidates import Registry, Serving, interned
from shardline.sim.request import Host

POLICY = ReplicaPolicy()
_limit = POLICY.limit


_REPLICAS: list[tuple[object, dict[str, int]]] = []


def replicas_of(snapshot: ClusterSnapshot) -> dict[str, int]:
    """Model key -> R from the catalog's workflow documents (as
    ``shardline.node.cluster.placement``); one dict per catalog section (shared: do not
    change it)."""
    workflows = snapshot.workflows
    for seen, replicas in _REPLICAS:
        if seen is workflows:
            return replicas
    out = _replicas_of(snapshot)
    _REPLICAS[:] = [(workflows, out), *_REPLICAS[:3]]
    return out


def _replicas_of(snapshot: ClusterSnapshot) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, doc in snapshot.workflows.items():
        manifest = doc.get("manifest")
        r = manifest.get("replicas", 2) if isinstance(manifest, dict) else None
        out[key] = r if isinstance(r, int) and not isinstance(r, bool) and r >= 1 else 2
    return out


def candidates(node: Host, key: str, owners: tuple[str, ...], registry: Registry) -> Serving:
    """``shardline.router.handoff.serving_candidates`` as ``shardline.node.cluster.routing`` calls
    it (``lazy`` with a memory budget: the warm owners, then the cold ones, which load on
    demand, as failover targets), over the owners of ``key`` on the node's current ring, with
    its warm part (``ClusterRouter.warm_part``: the replica is chosen among these) (memoized in
    ``node.cand`` while they have some: the node drops entries when its ring, its replica
    counts, its view's members or anyone's models change); interned in ``registry``."""
    hit = node.cand.get(key)
    if hit is not None:
        return hit
    me, members, models, local = node.node_id, node.view.members, node.models_of, node.executors

    def warm(node_id: str) -> bool:
        if node_id == me:
            return key in local
        return node_id in members and key in models.get(node_id, frozenset())

    lazy = node.cold is not None  # a cold owner loads on the first request
    serving = handoff.serving_candidates(key, owners, node.view, warm, lazy=lazy)
    warm_part = tuple([c for c in serving if warm(c)]) if lazy else serving
    found = interned(registry, warm_part or serving, serving)
    if owners:
        node.cand[key] = found
    return found


def serving_for(node: Host, key: str, registry: Registry) -> Serving | None:
    """The candidates for ``key`` on ``node``'s ring (None: the ring has no owner)."""
    hit = node.cand.get(key)
    if hit is not None:
        return hit
    owners = node.ring.owners(key, node.replicas.get(key, 2))
    return candidates(node, key, owners, registry) if owners else None


def choose(node: Host, serving: Serving, user: int, user_ids: list[str]) -> str:
    """``ClusterRouter.choose``: here when a warm owner under the limit, else the policy.

    ``choose_replica`` returns the user's sticky candidate (``rendezvous``) exactly when
    its in-flight count is within ``POLICY.limit`` of the candidates' mean (its documented
    contract, checked against the real function in tests/sim; a single candidate is its
    own sticky one and always within). So that case is answered from the memoized
    ``rendezvous``; any other case calls the real function. When this node is not a
    candidate, the counts are all gossiped ones, so the limit is remembered per candidate
    tuple until gossip brings new counts (``node.limits`` is emptied then). ``user`` is
    the user's index (its id is ``user_ids[user]``)."""
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
            sticky = serving.rendezvous(user, user_ids[user])
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
            sticky = serving.rendezvous(user, user_ids[user])
        if in_flight.get(sticky, 0) <= limit:
            return sticky
        counts = in_flight  # (all gossiped: the same counts)
    user_id = user_ids[user]
    chosen = choose_replica(ids, user_id, counts, node.replica_rng, POLICY)
    assert chosen is not None
    return chosen
