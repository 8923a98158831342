"""Placement: map a model key to its R owner nodes on a consistent hash ring (pure).

Step 3 of the request path. A `Ring` is built from the *active* members of a membership
view (the caller filters) and answers `owners("name@version", R)`: the R distinct nodes met
walking clockwise from the key's point, primary first. Nothing here reads a clock, global
random state or the network; the simulator runs this very code.

The ring is a ``uhashring.HashRing`` in its default (non-ketama) mode: every member gets
``VNODES_PER_WEIGHT * weight`` points at ``md5("<node_id>-<i>")`` and a key sits at
``md5(key)``. md5 is the same in every process (unlike the salted built-in ``hash()``),
and a member's points depend only on its own id and weight -- not on the other members, as
in uhashring's ketama mode -- so adding or removing one member of N moves only the keys
that member gains or loses (about 1/N of them for R=1, about R/N of the owner *sets*).
Members are inserted in id order, so the continuum, and hence every answer, is a pure
function of the member set: every node that sees the same view computes the same owners.

Capacity weighting: ``weight = max(1, round(capacity * WEIGHT_SCALE))`` (capacity is
resolved to 0.1; anything below 0.05 counts as 0.1), so a capacity-2 member has twice the
points, and owns about twice the keys, of a capacity-1 member. A capacity-1 member has 160
points (uhashring's default per node): a 50-member ring builds in a few tens of ms.

Rings are immutable. `owners` is on the hot path, so a ring memoizes each (key, R) answer
(a dict lookup after the first call); the keys are model keys, a bounded set, and a view
change builds a new ring anyway. Rings compare and hash by membership (ids and
capacities), so a caller can keep its ring when a new view has the same active members.

Building the continuum is not cheap (about 35 ms for 100 capacity-1 members: 16 000 md5
points), and callers build rings freely (the handoff state machine builds one per pass and
one per key it considers releasing, on every view change). So equal member sets share one
continuum and one owners memo: the last ``CONTINUUM_CACHE_SIZE`` distinct member sets are
kept, and a ring over a recent member set costs a dict lookup. Sharing is safe because
both are pure functions of the (id, weight) pairs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from uhashring import HashRing

WEIGHT_SCALE = 10  # ring weight units per unit of capacity
VNODES_PER_WEIGHT = 16  # ring points per weight unit: 160 for a capacity-1 member
CONTINUUM_CACHE_SIZE = 64  # distinct member sets whose continuum (and owners memo) is kept

_Continuum = tuple[HashRing, dict[tuple[str, int], tuple[str, ...]]]
_continuums: dict[tuple[tuple[str, int], ...], _Continuum] = {}


@dataclass(frozen=True)
class RingMember:
    """One active node on the ring: its id and its relative capacity (> 0, 1.0 = typical)."""

    node_id: str
    capacity: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.node_id, str) or not self.node_id:
            raise ValueError(f"node_id must be a non-empty string, got {self.node_id!r}")
        # (A bool counts as a number here, as it does compiled: records from etcd reject
        # one in ``NodeRecord``.)
        cap = self.capacity
        if not isinstance(cap, int | float) or not math.isfinite(cap) or cap <= 0:
            raise ValueError(
                f"capacity of {self.node_id!r} must be a finite number > 0, got {self.capacity!r}"
            )

    @property
    def weight(self) -> int:
        """The integer uhashring weight: capacity in tenths, at least 1."""
        return max(1, round(self.capacity * WEIGHT_SCALE))


def _continuum(members: tuple[RingMember, ...]) -> _Continuum:
    """The (shared) uhashring continuum and owners memo of a sorted member tuple."""
    spec = tuple((m.node_id, m.weight) for m in members)
    found = _continuums.get(spec)
    if found is None:
        hash_ring = HashRing(
            nodes={node_id: {"weight": w, "vnodes": VNODES_PER_WEIGHT} for node_id, w in spec}
        )
        found = (hash_ring, {})
        while len(_continuums) >= CONTINUUM_CACHE_SIZE:
            del _continuums[next(iter(_continuums))]  # the oldest entry
        _continuums[spec] = found
    return found


class Ring:
    """An immutable consistent hash ring over a set of members (see the module docstring)."""

    __slots__ = ("_cache", "_hash_ring", "_identity", "_members")

    def __init__(self, members: Iterable[RingMember]) -> None:
        by_id: dict[str, RingMember] = {}
        for member in members:
            if not isinstance(member, RingMember):
                raise TypeError(f"ring members must be RingMember, got {member!r}")
            if member.node_id in by_id:
                raise ValueError(f"duplicate ring member {member.node_id!r}")
            by_id[member.node_id] = member
        self._members = tuple(by_id[node_id] for node_id in sorted(by_id))
        self._identity = frozenset((m.node_id, m.capacity) for m in self._members)
        # Insertion in id order: the continuum does not depend on the caller's order.
        self._hash_ring, self._cache = _continuum(self._members)

    @property
    def members(self) -> tuple[RingMember, ...]:
        """The members, sorted by node id."""
        return self._members

    @property
    def node_ids(self) -> tuple[str, ...]:
        """The member ids, sorted."""
        return tuple(m.node_id for m in self._members)

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, node_id: object) -> bool:
        return any(m.node_id == node_id for m in self._members)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ring):
            return NotImplemented
        return self._identity == other._identity

    def __hash__(self) -> int:
        return hash(self._identity)

    def __repr__(self) -> str:
        inner = ", ".join(f"{m.node_id}:{m.capacity:g}" for m in self._members)
        return f"Ring({inner})"

    def owners(self, key: str, replicas: int) -> tuple[str, ...]:
        """The distinct owner node ids of `key`, primary first, in ring order.

        ``min(replicas, len(self))`` of them; ``()`` on an empty ring. ValueError if
        ``replicas < 1``. Memoized per (key, replicas).
        """
        cached = self._cache.get((key, replicas))
        if cached is not None:
            return cached
        if isinstance(replicas, bool) or not isinstance(replicas, int):
            raise TypeError(f"replicas must be an int, got {replicas!r}")
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        if not self._members:
            found: tuple[str, ...] = ()
        else:
            size = min(replicas, len(self._members))
            found = tuple(
                str(conf["nodename"]) for conf in self._hash_ring.range(key, size=size, unique=True)
            )
        self._cache[(key, replicas)] = found
        return found

    def assignment(
        self, keys: Iterable[str], replicas: int | Mapping[str, int]
    ) -> dict[str, tuple[str, ...]]:
        """Owners of every key: one R for all keys, or R per key (KeyError if one is missing)."""
        if isinstance(replicas, int):
            return {key: self.owners(key, replicas) for key in keys}
        result: dict[str, tuple[str, ...]] = {}
        for key in keys:
            if key not in replicas:
                raise KeyError(f"no replica count for model key {key!r}")
            result[key] = self.owners(key, replicas[key])
        return result


def moved_keys(before: Mapping[str, tuple[str, ...]], after: Mapping[str, tuple[str, ...]]) -> int:
    """How many keys changed owner *set* (order ignored); a key missing on one side has ()."""
    changed = 0
    for key in before.keys() | after.keys():
        if frozenset(before.get(key, ())) != frozenset(after.get(key, ())):
            changed += 1
    return changed


def key_moves(
    before: Ring, after: Ring, keys: Iterable[str], replicas: int | Mapping[str, int]
) -> float:
    """The fraction of `keys` whose owner set differs between two rings (0.0 for no keys)."""
    key_list = list(keys)
    if not key_list:
        return 0.0
    moved = moved_keys(before.assignment(key_list, replicas), after.assignment(key_list, replicas))
    return moved / len(set(key_list))
