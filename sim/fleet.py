"""Owners at fleet scale: the real ring's order per key, computed once, shared by every node.

A ring over 1 000 members takes about 0.6 s to build and 0.7 ms per ``owners`` call
(``shardline.router.ring``); during a zone failure every node's view passes through its own
sequence of member sets, so a node-by-node ring per view would cost hours at 100 000
models. Consistent hashing makes this unnecessary: a key's owners over any subset ``S`` of
the members are the first ``R`` members of ``S`` met on the walk from the key's point on
the continuum of *all* members (the points of a node do not depend on the others). So
``FleetOwners`` computes, once per roster, each key's first ``DEPTH`` distinct nodes on
that walk -- with ``shardline.router.placement_policy.assign`` at zero bytes and rates,
which is documented (and tested there) to equal ``Ring.owners`` -- and ``FleetRing`` (one
per member set, shared by every node whose view has that set) answers
``owners(key, replicas)`` by filtering that list, falling back to the real ``Ring`` for
the rare key whose list holds fewer than ``replicas`` members of ``S``.
tests/sim/test_fleet.py checks it against ``Ring`` on random subsets.

Hot copies (``shardline.router.hot_copies``): ``copies`` extra owners of a key are the next
nodes of the same walk, so ``owners(key, R + copies)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from shardline.router.placement_policy import ModelNeed, NodeSpace, assign
from shardline.router.ring import Ring, RingMember

DEPTH = 24  # nodes per key's precomputed walk (R + hot copies + the dead it can skip)
_HUGE = 1 << 50  # a budget no model reaches: placement at zero bytes is the plain ring


class FleetOwners:
    """Every catalog key's walk over one roster (see the module docstring)."""

    def __init__(self, members: Iterable[tuple[str, float]], keys: Iterable[str]) -> None:
        self.capacity = dict(members)
        nodes = [NodeSpace(n, _HUGE, c) for n, c in sorted(self.capacity.items())]
        depth = min(DEPTH, len(nodes))
        needs = [ModelNeed(k, 0, replicas=depth) for k in keys]
        self.walk: Mapping[str, tuple[str, ...]] = assign(nodes, needs, balance=math.inf).owners
        by_node: dict[str, list[str]] = {n: [] for n in self.capacity}
        for key, walk in self.walk.items():
            for node_id in walk:
                by_node[node_id].append(key)
        self.keys_near: dict[str, frozenset[str]] = {n: frozenset(k) for n, k in by_node.items()}
        """node -> the keys whose walk passes through it (only they can change owner when
        it comes or goes)."""
        self._rings: dict[frozenset[str], FleetRing] = {}
        self.fallbacks = 0

    def covers(self, members: Iterable[tuple[str, float]]) -> bool:
        """Members all in this roster, with the same capacities."""
        cap = self.capacity
        return all(cap.get(n) == c for n, c in members)

    def ring(self, members: Iterable[tuple[str, float]]) -> FleetRing:
        ids = frozenset(n for n, _ in members)
        found = self._rings.get(ids)
        if found is None:
            found = self._rings[ids] = FleetRing(self, ids)
        return found


class FleetRing:
    """The owners over one member set (``Ring``'s interface as the simulator uses it)."""

    __slots__ = ("_cache", "_ring", "fleet", "ids", "node_ids")

    def __init__(self, fleet: FleetOwners, ids: frozenset[str]) -> None:
        self.fleet = fleet
        self.ids = ids
        self.node_ids = tuple(sorted(ids))
        self._cache: dict[tuple[str, int], tuple[str, ...]] = {}
        self._ring: Ring | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.ids

    def owners(self, key: str, replicas: int) -> tuple[str, ...]:
        found = self._cache.get((key, replicas))
        if found is not None:
            return found
        ids = self.ids
        walk = self.fleet.walk.get(key)
        want = min(replicas, len(ids))
        out: tuple[str, ...] = ()
        if walk is not None:
            out = tuple([n for n in walk if n in ids][:want])
        if len(out) < want:  # not enough of this set on the precomputed walk: the real ring
            self.fleet.fallbacks += 1
            if self._ring is None:
                cap = self.fleet.capacity
                self._ring = Ring(RingMember(n, cap[n]) for n in self.node_ids)
            out = self._ring.owners(key, replicas)
        self._cache[(key, replicas)] = out
        return out
