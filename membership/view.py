"""MembershipView: the etcd roster minus the members gossip has confirmed dead.

Pure and immutable. ``build_view`` merges the desired state (``ClusterSnapshot.nodes``:
addresses, zone, capacity, joining/active/draining) with what gossip knows (liveness,
in-flight requests, loaded model keys). A roster member gossip has not heard of yet is
kept with liveness ``unknown`` (it may have just joined); one gossip confirmed ``dead``
or saw ``left`` is dropped until the roster and gossip agree it is back. Routing builds
its ring from ``view.active()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from shardline.membership.registry import NodeRecord, NodeState
from shardline.membership.snapshot import ClusterSnapshot
from shardline.membership.swim_state import Member, MemberState


class Liveness(StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ViewMember:
    record: NodeRecord
    liveness: Liveness
    in_flight: int = 0
    models: tuple[str, ...] = ()

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
        g = gossip.get(node_id)
        if node_id == self_id:
            liveness = Liveness.ALIVE
        elif g is None:
            liveness = Liveness.UNKNOWN
        elif g.state in (MemberState.DEAD, MemberState.LEFT):
            dead.add(node_id)
            continue
        elif g.state is MemberState.SUSPECT:
            liveness = Liveness.SUSPECT
        else:
            liveness = Liveness.ALIVE
        in_flight, models = (g.in_flight, tuple(g.models)) if g is not None else (0, ())
        members[node_id] = ViewMember(record, liveness, in_flight, models)
    return MembershipView(snapshot.revision, MappingProxyType(members), frozenset(dead))
