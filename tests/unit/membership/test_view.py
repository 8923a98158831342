"""MembershipView = roster ∩ not confirmed dead, with liveness and load from gossip."""

from __future__ import annotations

from types import MappingProxyType

from hypothesis import given
from hypothesis import strategies as st

from shardline.membership.loaded import LoadedSet
from shardline.membership.registry import NodeRecord, NodeState
from shardline.membership.snapshot import ClusterSnapshot
from shardline.membership.swim_state import Load, Member, MemberState
from shardline.membership.view import Liveness, build_view, update_view


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


_IDS = [f"n{i}" for i in range(6)]
_rosters = st.dictionaries(
    st.sampled_from(_IDS), st.sampled_from([NodeState.JOINING, NodeState.ACTIVE]), max_size=6
)
_gossips = st.dictionaries(
    st.sampled_from(_IDS),
    st.tuples(st.sampled_from(list(MemberState)), st.integers(0, 3)),
    max_size=6,
)
_loaded = st.dictionaries(st.sampled_from(_IDS), st.frozensets(st.sampled_from("abc")))
_Cluster = tuple[
    dict[str, NodeState], dict[str, tuple[MemberState, int]], dict[str, frozenset[str]]
]


def _state(
    roster: dict[str, NodeState],
    gossip: dict[str, tuple[MemberState, int]],
    loaded: dict[str, frozenset[str]],
    revision: int,
) -> tuple[ClusterSnapshot, dict[str, Member]]:
    snap = ClusterSnapshot(
        revision=revision,
        nodes=MappingProxyType({n: record(n, s) for n, s in roster.items()}),
        loaded=MappingProxyType(
            {n: LoadedSet(n, len(keys), {k: 1 for k in keys}) for n, keys in loaded.items()}
        ),
    )
    return snap, {n: member(n, s, in_flight=f) for n, (s, f) in gossip.items()}


@given(
    before=st.tuples(_rosters, _gossips, _loaded),
    after=st.tuples(_rosters, _gossips, _loaded),
    self_id=st.sampled_from([*_IDS, None]),
)
def test_update_view_equals_a_full_rebuild(
    before: _Cluster,
    after: _Cluster,
    self_id: str | None,
) -> None:
    """Given the ids whose roster record, gossip member or loaded set changed (the self id
    aside: it is always re-read), the incremental view is the full rebuild's."""
    snap0, gossip0 = _state(*before, revision=1)
    snap1, gossip1 = _state(*after, revision=2)
    changed = {
        n
        for n in _IDS
        if n != self_id
        and (
            snap0.nodes.get(n) != snap1.nodes.get(n)
            or gossip0.get(n) != gossip1.get(n)
            or snap0.loaded.get(n) != snap1.loaded.get(n)
        )
    }
    view = update_view(build_view(snap0, gossip0, self_id), snap1, gossip1, changed, self_id)
    assert view == build_view(snap1, gossip1, self_id)
    unchanged = build_view(snap1, gossip1, self_id)
    assert update_view(unchanged, snap1, gossip1, (), self_id) is unchanged
