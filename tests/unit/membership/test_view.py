"""MembershipView = roster ∩ not confirmed dead, with liveness and load from gossip."""

from __future__ import annotations

from types import MappingProxyType

from shardline.membership.registry import NodeRecord, NodeState
from shardline.membership.snapshot import ClusterSnapshot
from shardline.membership.swim_state import Load, Member, MemberState
from shardline.membership.view import Liveness, build_view


def record(node_id: str, state: NodeState = NodeState.ACTIVE) -> NodeRecord:
    n = int(node_id[-1])
    return NodeRecord(node_id, f"127.0.0.1:{7400 + n}", f"127.0.0.1:{7500 + n}", state=state)


def member(node_id: str, state: MemberState, in_flight: int = 0) -> Member:
    n = int(node_id[-1])
    return Member(node_id, f"127.0.0.1:{7500 + n}", 1, state, 0.0, in_flight, Load(loaded_count=1))


def snapshot(*records: NodeRecord) -> ClusterSnapshot:
    return ClusterSnapshot(revision=7, nodes=MappingProxyType({r.node_id: r for r in records}))


def test_dead_and_left_members_are_dropped_suspects_kept() -> None:
    snap = snapshot(record("n1"), record("n2"), record("n3"), record("n4"), record("n5"))
    gossip = {
        "n2": member("n2", MemberState.ALIVE, in_flight=4),
        "n3": member("n3", MemberState.SUSPECT),
        "n4": member("n4", MemberState.DEAD),
        "n5": member("n5", MemberState.LEFT),
    }
    view = build_view(snap, gossip, self_id="n1")
    assert set(view.members) == {"n1", "n2", "n3"}
    assert view.dead == frozenset({"n4", "n5"})
    assert view.members["n1"].liveness is Liveness.ALIVE  # self, before gossip knows it
    assert view.members["n2"].in_flight == 4
    assert view.members["n3"].liveness is Liveness.SUSPECT
    assert view.revision == 7


def test_unknown_to_gossip_is_kept_and_only_active_members_route() -> None:
    snap = snapshot(record("n1"), record("n2", NodeState.JOINING), record("n3"))
    view = build_view(snap, {}, self_id="n1")
    assert view.members["n3"].liveness is Liveness.UNKNOWN
    assert [m.node_id for m in view.active()] == ["n1", "n3"]


def test_gossip_member_not_in_the_roster_is_ignored() -> None:
    view = build_view(snapshot(record("n1")), {"n9": member("n9", MemberState.ALIVE)}, "n1")
    assert set(view.members) == {"n1"}
