"""Owners at fleet scale: placement's order per key, computed once, shared by every node.

A ring over 1 000 members takes about 0.6 s to build and 0.7 ms per ``owners`` call
(``shardline.router.ring``); during a zone failure every node's view passes through its own
sequence of member sets, so a node-by-node ring per view would cost hours at 100 000
models. Consistent hashing makes this unnecessary: the points of a node on the continuum
do not depend on the other members, so the walk from a key's point over any subset ``S``
of the members meets the members of ``S`` in the order the walk over *all* members meets
them. ``FleetOwners`` computes, once per roster, each key's first ``DEPTH`` distinct nodes
on that walk (with ``shardline.router.placement_policy.assign`` at zero bytes and rates,
every node its own zone: the plain ring order), and ``FleetRing`` (one per member set,
shared by every node whose view has that set) answers ``owners(key, replicas)`` as
``assign`` over ``S`` with the members' zones and zero bytes does (what
``shardline.router.handoff.ring_of`` gives a node whose catalog declares no bytes): the
members of ``S`` in walk order, skipping one whose zone already holds one of the key's
owners while ``S`` has at least as many zones as owners wanted. For the rare key whose
list holds too few of them it asks ``assign`` over ``S`` for that key alone.
tests/sim/test_fleet.py checks it against ``assign`` on random subsets, with and without
zones.

Hot copies (``shardline.router.hot_copies``): ``copies`` extra owners of a key are the next
nodes of the same walk, so ``owners(key, R + copies)``.

Where the two could differ: ``assign`` looks for distinct zones among the first
``8 * owners + 64`` points of the walk and then completes without zones; a key whose walk
over ``S`` meets fewer zones than it wants owners within those points (with 10 zones and
at most 6 owners, not seen in the tests) gets distinct zones here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from shardline.router.placement_policy import ModelNeed, NodeSpace, assign

DEPTH = 24  # nodes per key's precomputed walk (R + hot copies + the dead it can skip)
_HUGE = 1 << 50  # a budget no model reaches: placement at zero bytes is the plain ring


class FleetOwners:
    """Every catalog key's walk over one roster (see the module docstring)."""

    def __init__(
        self,
        members: Iterable[tuple[str, float]],
        keys: Iterable[str],
        zones: Mapping[str, str] | None = None,
    ) -> None:
        self.capacity = dict(members)
        given = zones or {}
        self.zone = {n: given.get(n, "") for n in self.capacity}
        """node -> its zone ("" none: each such node counts as a zone of its own)"""
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

    __slots__ = ("_cache", "_zone", "fleet", "ids", "n_zones", "node_ids")

    def __init__(self, fleet: FleetOwners, ids: frozenset[str]) -> None:
        self.fleet = fleet
        self.ids = ids
        self.node_ids = tuple(sorted(ids))
        self._cache: dict[tuple[str, int], tuple[str, ...]] = {}
        # As in assign: a node without a zone counts as a zone of its own.
        self._zone = {n: fleet.zone[n] or f"\0{n}" for n in ids}
        self.n_zones = len(set(self._zone.values()))

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.ids

    def owners(self, key: str, replicas: int) -> tuple[str, ...]:
        found = self._cache.get((key, replicas))
        if found is not None:
            return found
        zone = self._zone
        walk = self.fleet.walk.get(key, ())
        want = min(replicas, len(zone))
        chosen: list[str] = []
        if self.n_zones >= want:  # owners in distinct zones (assign's ``spread``)
            taken: set[str] = set()
            for n in walk:
                z = zone.get(n)
                if z is not None and z not in taken:
                    chosen.append(n)
                    if len(chosen) == want:
                        break
                    taken.add(z)
        else:
            for n in walk:
                if n in zone:
                    chosen.append(n)
                    if len(chosen) == want:
                        break
        out = tuple(chosen)
        if len(out) < want:  # too few of this set on the precomputed walk: assign itself
            self.fleet.fallbacks += 1
            cap, zones = self.fleet.capacity, self.fleet.zone
            nodes = [NodeSpace(n, _HUGE, cap[n], zones[n]) for n in self.node_ids]
            placed = assign(nodes, [ModelNeed(key, 0, replicas=want)], balance=math.inf)
            out = placed.owners[key]
        self._cache[(key, replicas)] = out
        return out
