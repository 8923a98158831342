"""Join and drain without a failed request: the handoff protocol as a pure state machine.

Every node runs ``step`` on each new view (the placement actor does the I/O it asks for);
the router asks ``serving_candidates`` where a request may go while keys move.

Join (make before break): a ``joining`` node computes the ring it *will* be part of
(the active members plus itself), loads and warms its share, and only then asks to turn
``active``. Until then it is not on anyone's ring, so nothing is routed to it cold.

Drain: a ``draining`` node is off the ring at once, so new owners (successors) load its
keys; meanwhile requests keep going to whoever holds the key warm — the other replica or
the draining node itself. The draining node lets a key go only when every current owner
reports it warm, and leaves (deregisters, exits) once it holds nothing and has no
request in flight. An active node that lost a key to a joiner lets it go the same way.

Owners: with per-key needs (``ModelNeed``: bytes, R, hot copies), the owners come from
``shardline.router.placement_policy.assign`` over the members' memory budgets — the ring's
order, skipping nodes past their share of the placed bytes (consistent hashing with
bounded loads); without, from the plain ring. ``ring_of`` hands back either behind one
interface (``owners(key, replicas)``), so everything below works the same on both.

Pure: views in, actions out; no clock, no I/O (reused by the simulator).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass
from enum import StrEnum
from typing import overload

from shardline.membership.registry import NodeState
from shardline.membership.view import MembershipView
from shardline.router.placement_policy import Assignment, ModelNeed, NodeSpace, assign
from shardline.router.ring import Ring, RingMember

DEFAULT_REPLICAS = 2


class Phase(StrEnum):
    JOINING = "joining"  # loading its future share
    READY = "ready"  # joining, share warm: may turn active
    ACTIVE = "active"
    DRAINING = "draining"  # successors loading; still serving what it holds
    DRAINED = "drained"  # holds nothing, nothing in flight: may deregister and exit
    GONE = "gone"  # not in the view


Needs = Mapping[str, ModelNeed]
UNDECLARED_BUDGET = 1 << 50
"""The budget placement assumes for a node that declares none (every node, in a cluster
run without ``--memory-budget`` records: shares then follow capacity alone)."""


class Placed:
    """Owners from ``placement_policy.assign`` with the ``Ring`` interface the callers use;
    a key placement was not asked about (undeployed, still held) falls back to the ring."""

    __slots__ = ("_identity", "assignment", "ring")

    def __init__(self, ring: Ring, assignment: Assignment, identity: object) -> None:
        self.ring = ring
        self.assignment = assignment
        self._identity = identity

    def owners(self, key: str, replicas: int) -> tuple[str, ...]:
        found = self.assignment.owners.get(key)
        return found if found is not None else self.ring.owners(key, replicas)

    @property
    def node_ids(self) -> tuple[str, ...]:
        return self.ring.node_ids

    def __len__(self) -> int:
        return len(self.ring)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.ring

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Placed) and self._identity == other._identity

    def __hash__(self) -> int:
        return hash(self._identity)


Owners = Ring | Placed


@overload
def ring_of(view: MembershipView, extra: tuple[str, ...] = ..., needs: None = ...) -> Ring: ...
@overload
def ring_of(view: MembershipView, extra: tuple[str, ...], needs: Needs) -> Owners: ...
@overload
def ring_of(view: MembershipView, extra: tuple[str, ...], needs: Needs | None) -> Owners: ...


def ring_of(
    view: MembershipView, extra: tuple[str, ...] = (), needs: Needs | None = None
) -> Owners:
    """The owners over the view's active members (plus ``extra``, e.g. a joiner's own id):
    the plain ring, or with ``needs`` the memory-aware placement (see the module docstring).

    Views change on every load report, rings only when members do: rings and placements are
    cached by membership (and by the needs mapping's identity: callers keep one mapping per
    catalog), so this is a dictionary lookup on the hot paths.
    """
    members = {m.node_id: m for m in view.active()}
    for node_id in extra:
        member = view.members.get(node_id)
        if member is not None:
            members[node_id] = member
    ring = _ring(frozenset((n, m.record.capacity) for n, m in members.items()))
    if needs is None:
        return ring
    declared = [m.record.memory_budget for m in members.values() if m.record.memory_budget > 0]
    fallback = max(declared, default=UNDECLARED_BUDGET)
    spaces = frozenset(
        (n, m.record.memory_budget or fallback, m.record.capacity, m.record.zone)
        for n, m in members.items()
    )
    key = (spaces, id(needs))
    found = _PLACED.get(key)
    if found is None or found[0] is not needs:
        nodes = [NodeSpace(n, budget, cap, zone) for n, budget, cap, zone in sorted(spaces)]
        found = (needs, Placed(ring, assign(nodes, needs.values()), key))
        while len(_PLACED) >= PLACED_CACHE_SIZE:
            del _PLACED[next(iter(_PLACED))]
        _PLACED[key] = found
    return found[1]


PLACED_CACHE_SIZE = 32
_PLACED: dict[tuple[frozenset[tuple[str, int, float, str]], int], tuple[Needs, Placed]] = {}


@functools.lru_cache(maxsize=64)
def _ring(members: frozenset[tuple[str, float]]) -> Ring:
    return Ring(RingMember(node_id, cap) for node_id, cap in members)


def owned(node_id: str, ring: Owners, replicas: Mapping[str, int]) -> set[str]:
    return {k for k, r in replicas.items() if node_id in ring.owners(k, r)}


def desired(
    node_id: str, view: MembershipView, replicas: Mapping[str, int], needs: Needs | None = None
) -> set[str]:
    """The model keys ``node_id`` should hold in ``view`` (its future share while joining)."""
    me = view.members.get(node_id)
    if me is None or me.state is NodeState.DRAINING:
        return set()
    extra = (node_id,) if me.state is NodeState.JOINING else ()
    return owned(node_id, ring_of(view, extra, needs), replicas)


def warm_on(view: MembershipView, node_id: str, key: str) -> bool:
    member = view.members.get(node_id)
    return member is not None and key in member.models


def releasable(
    node_id: str,
    key: str,
    view: MembershipView,
    replicas: Mapping[str, int],
    needs: Needs | None = None,
    *,
    lazy: bool = False,
) -> bool:
    """May ``node_id`` let ``key`` go? Only when every current owner (but itself) has it warm;
    with ``lazy`` (a cold owner loads on demand), when one of them has it warm."""
    owners = ring_of(view, (), needs).owners(key, replicas.get(key, DEFAULT_REPLICAS))
    others = [o for o in owners if o != node_id]
    if not others:
        return key not in replicas  # no owner left at all: keep it unless it was undeployed
    if lazy:
        return any(warm_on(view, o, key) for o in others)
    return all(warm_on(view, o, key) for o in others)


@dataclass(frozen=True)
class Step:
    """What the placement actor should do next (all sets are model keys)."""

    phase: Phase
    load: frozenset[str] = frozenset()
    unload: frozenset[str] = frozenset()


def step(
    node_id: str,
    view: MembershipView,
    replicas: Mapping[str, int],
    loaded: Set[str],
    in_flight: int,
    needs: Needs | None = None,
    *,
    lazy: bool = False,
) -> Step:
    """The next handoff step for ``node_id`` given what it holds and serves right now."""
    me = view.members.get(node_id)
    if me is None:
        return Step(Phase.GONE)
    want = desired(node_id, view, replicas, needs)
    load = frozenset(want - set(loaded))
    unload = frozenset(
        k
        for k in set(loaded) - want
        if k not in replicas or releasable(node_id, k, view, replicas, needs, lazy=lazy)
    )
    if me.state is NodeState.JOINING:
        return Step(Phase.READY if not load else Phase.JOINING, load, frozenset())
    if me.state is NodeState.DRAINING:
        left = set(loaded) - unload
        if not left and in_flight == 0:
            return Step(Phase.DRAINED, frozenset(), unload)
        return Step(Phase.DRAINING, frozenset(), unload)
    return Step(Phase.ACTIVE, load, unload)


def serving_candidates(
    key: str,
    owners: tuple[str, ...],
    view: MembershipView,
    is_warm: Callable[[str], bool],
    *,
    lazy: bool = False,
) -> tuple[str, ...]:
    """Where a request for ``key`` may go, best first.

    The ring's owners that hold it warm; while keys move (a drain, a crash, a join
    settling) any live member still holding it warm; only when nobody does, the owners
    themselves (a cold owner answers UNAVAILABLE and the request fails over).

    With ``lazy`` (owners load a model on its first request), the cold owners follow the
    warm ones: when the only warm copy fails (its node died and the view does not know
    yet), the request fails over to an owner that loads it rather than failing.
    """
    warm = tuple(o for o in owners if is_warm(o))
    if warm:
        if lazy:
            return warm + tuple(o for o in owners if o not in warm)
        return warm
    holders = tuple(
        node_id for node_id in sorted(view.members) if is_warm(node_id) and node_id not in owners
    )
    return holders or owners
