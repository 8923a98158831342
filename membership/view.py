"""MembershipView: the etcd roster minus the members gossip has confirmed dead.

Pure and immutable. ``build_view`` merges the desired state (``ClusterSnapshot.nodes``:
addresses, zone, capacity, joining/active/draining) with what gossip knows (liveness,
in-flight requests, a load summary) and with each member's loaded set, which comes from
etcd (``shardline.membership.loaded``), not gossip. A roster member gossip has not heard of yet is
kept with liveness ``unknown`` (it may have just joined); one gossip confirmed ``dead``
or saw ``left`` is dropped until the roster and gossip agree it is back. Routing builds
its ring from ``view.active()``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from shardline.membership.loaded import LoadedSet
from shardline.membership.registry import NodeRecord, NodeState
from shardline.membership.snapshot import ClusterSnapshot
from shardline.membership.swim_state import NO_LOAD, Load, Member, MemberState


class Liveness(StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ViewMember:
    record: NodeRecord
    liveness: Liveness
    in_flight: int = 0
    models: frozenset[str] = frozenset()
    """The model keys resident on the member (its etcd record; empty until it has one)."""
    load: Load = NO_LOAD
    """Its gossiped load summary (resident bytes, count, loaded-set version)."""
    loaded: LoadedSet | None = None
    """Its loaded-set record, whole (loading, counters, budget)."""

    @property
    def loaded_stale(self) -> bool:
        """Gossip reports a newer loaded set than the etcd record we hold (a write in flight,
        or etcd away): ``models`` may miss a model or list one already evicted."""
        version = self.loaded.version if self.loaded is not None else 0
        return self.load.loaded_version > version

    @property
    def node_id(self) -> str:
        return self.record.node_id

    @property
    def state(self) -> NodeState:
        return self.record.state


_EMPTY: Mapping[str, ViewMember] = MappingProxyType({})


@dataclass(frozen=True)
class MembershipView:
    """One immutable view; ``revision`` is the etcd revision of the roster it reflects."""

    revision: int = 0
    members: Mapping[str, ViewMember] = field(default_factory=lambda: _EMPTY)
    dead: frozenset[str] = frozenset()
    """Roster members gossip has confirmed dead (or that left): excluded from ``members``."""

    def active(self) -> tuple[ViewMember, ...]:
        """Members in state ``active``, sorted by node id (what the ring is built from)."""
        return tuple(m for _, m in sorted(self.members.items()) if m.state is NodeState.ACTIVE)

    def in_flight(self) -> dict[str, int]:
        return {node_id: m.in_flight for node_id, m in self.members.items()}

    def is_live(self, node_id: str) -> bool:
        return node_id in self.members


def build_view(
    snapshot: ClusterSnapshot, gossip: Mapping[str, Member], self_id: str | None = None
) -> MembershipView:
    """Roster ∩ not confirmed dead, each member with its liveness and load."""
    members: dict[str, ViewMember] = {}
    dead: set[str] = set()
    for node_id, record in snapshot.nodes.items():
        member = _member(snapshot, node_id, record, gossip.get(node_id), node_id == self_id)
        if member is None:
            dead.add(node_id)
        else:
            members[node_id] = member
    return MembershipView(snapshot.revision, MappingProxyType(members), frozenset(dead))


def update_view(
    view: MembershipView,
    snapshot: ClusterSnapshot,
    gossip: Mapping[str, Member],
    changed: Iterable[str],
    self_id: str | None = None,
) -> MembershipView:
    """``build_view(snapshot, gossip, self_id)`` in time proportional to ``changed``.

    ``view`` must have been built (by either function) from a snapshot and gossip table that
    differ from these only for the node ids in ``changed``: roster records, loaded sets,
    gossip members (their state, in-flight and load) — anything else is taken from ``view``
    as it is. ``self_id`` is always re-read (its own load changes without a gossip event).
    Returns ``view`` itself when nothing in it changed. A simulated fleet of N nodes calls
    this on every gossip event each node hears instead of rebuilding N members each time
    (``shardline.sim.node``); ``tests/unit/membership/test_view.py`` checks it against
    ``build_view``."""
    old = view.members
    members: dict[str, ViewMember] | None = None
    dead: set[str] | None = None
    ids = set(changed)
    if self_id is not None:
        ids.add(self_id)
    for node_id in ids:
        record = snapshot.nodes.get(node_id)
        member = (
            None
            if record is None
            else _member(snapshot, node_id, record, gossip.get(node_id), node_id == self_id)
        )
        was = old.get(node_id)
        if member is not None and member == was:
            continue
        is_dead = record is not None and member is None
        if member is None and was is None and (node_id in view.dead) == is_dead:
            continue
        if members is None:
            members = dict(old)
            dead = set(view.dead)
        assert dead is not None
        members.pop(node_id, None)
        dead.discard(node_id)
        if member is not None:
            members[node_id] = member
        elif is_dead:
            dead.add(node_id)
    if members is None:
        if snapshot.revision == view.revision:
            return view
        return MembershipView(snapshot.revision, old, view.dead)
    return MembershipView(snapshot.revision, MappingProxyType(members), frozenset(dead or ()))


def _member(
    snapshot: ClusterSnapshot, node_id: str, record: NodeRecord, g: Member | None, is_self: bool
) -> ViewMember | None:
    """One roster member as the view holds it; None when gossip confirmed it dead or gone."""
    if is_self:
        liveness = Liveness.ALIVE
    elif g is None:
        liveness = Liveness.UNKNOWN
    elif g.state is MemberState.DEAD or g.state is MemberState.LEFT:
        return None
    elif g.state is MemberState.SUSPECT:
        liveness = Liveness.SUSPECT
    else:
        liveness = Liveness.ALIVE
    in_flight, load = (g.in_flight, g.load) if g is not None else (0, NO_LOAD)
    loaded = snapshot.loaded.get(node_id)
    models = loaded.keys if loaded is not None else frozenset()
    return ViewMember(record, liveness, in_flight, models, load, loaded)
