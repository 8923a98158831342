"""ClusterSnapshot.apply, the pure core of the snapshot watcher: batching, replays, deletes.

An etcd history is a list of revisions, each a list of key events (one put, delete or
transaction). Whatever way the watcher receives it (in one batch, split at any revision
boundaries, with already-seen revisions replayed after a reconnect, or after a resync from a
full read), the snapshot must come out the same as a full read of the final state.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardline.membership.registry import NodeRecord, NodeState
from shardline.membership.snapshot import ClusterSnapshot, KeyEvent

NODE_IDS = ("n0", "n1", "n2")
KEYS = (
    *(f"nodes/{n}" for n in NODE_IDS),
    "workflows/w0/1",
    "workflows/w0/2",
    "workflows/w1/1",
    "objectives/o0",
    "objectives/o1",
    "objective_history/o0/0000000001",  # not part of the snapshot
    "elsewhere",
)


def node_json(node_id: str, state: NodeState = NodeState.ACTIVE, capacity: float = 1.0) -> bytes:
    return NodeRecord(
        node_id, "10.0.0.1:7000", "10.0.0.1:7001", "z", capacity, ("cpu",), "1", state
    ).to_json()


@st.composite
def values(draw: st.DrawFn, key: str) -> bytes | None:
    """A value for ``key``: None (delete), a valid document, or garbage."""
    kind = draw(st.sampled_from(["delete", "valid", "valid", "valid", "garbage"]))
    if kind == "delete":
        return None
    if kind == "garbage":
        return draw(st.sampled_from([b"not json", b"[1, 2]", b'"s"', node_json("other")]))
    if key.startswith("nodes/"):
        state = draw(st.sampled_from(list(NodeState)))
        capacity = draw(st.floats(min_value=0.5, max_value=8.0))
        return node_json(key.split("/")[1], state, capacity)
    return json.dumps({"v": draw(st.integers(0, 5))}).encode()


@st.composite
def histories(draw: st.DrawFn) -> list[list[KeyEvent]]:
    """Revisions base+1, base+2, ...; each a non-empty list of events of that revision."""
    base = draw(st.integers(0, 50))
    out: list[list[KeyEvent]] = []
    for i in range(draw(st.integers(0, 25))):
        keys = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3))
        out.append([KeyEvent(k, draw(values(k)), base + i + 1) for k in keys])
    return out


def final_state(history: Sequence[Sequence[KeyEvent]]) -> dict[str, bytes]:
    state: dict[str, bytes] = {}
    for revision in history:
        for ev in revision:
            if ev.value is None:
                state.pop(ev.key, None)
            else:
                state[ev.key] = ev.value
    return state


def start_of(history: Sequence[Sequence[KeyEvent]]) -> ClusterSnapshot:
    return ClusterSnapshot(revision=history[0][0].revision - 1 if history else 0)


def flat(history: Sequence[Sequence[KeyEvent]]) -> list[KeyEvent]:
    return [ev for revision in history for ev in revision]


@settings(max_examples=60)
@given(histories())
def test_one_batch_equals_a_full_read_of_the_final_state(history: list[list[KeyEvent]]) -> None:
    start = start_of(history)
    snap = start.apply(flat(history))
    expected_revision = history[-1][0].revision if history else start.revision
    assert snap == ClusterSnapshot.from_kvs(final_state(history).items(), expected_revision)


@settings(max_examples=60)
@given(histories(), st.data())
def test_any_split_into_batches_gives_the_same_snapshot(
    history: list[list[KeyEvent]], data: st.DataObject
) -> None:
    cuts = sorted(data.draw(st.sets(st.integers(0, len(history)))))
    snap = start_of(history)
    for lo, hi in zip([0, *cuts], [*cuts, len(history)], strict=True):
        snap = snap.apply(flat(history[lo:hi]))
    assert snap == start_of(history).apply(flat(history))


@settings(max_examples=60)
@given(histories(), st.data())
def test_replays_are_idempotent(history: list[list[KeyEvent]], data: st.DataObject) -> None:
    """A watch resumed from an older revision re-delivers what was applied: no effect."""
    start = start_of(history)
    expected = start.apply(flat(history))
    snap, applied = start, 0
    while applied < len(history):
        replay_from = data.draw(st.integers(0, applied), label="replay_from")
        upto = data.draw(st.integers(applied + 1, len(history)), label="upto")
        snap = snap.apply(flat(history[replay_from:upto]))
        applied = upto
    assert snap == expected
    assert snap.apply(flat(history)) is snap, "a full replay returns the very same snapshot"


@settings(max_examples=60)
@given(histories(), st.data())
def test_resync_from_a_full_read_then_apply_the_rest(
    history: list[list[KeyEvent]], data: st.DataObject
) -> None:
    mid = data.draw(st.integers(0, len(history)))
    at_mid = start_of(history).apply(flat(history[:mid]))
    resynced = ClusterSnapshot.from_kvs(final_state(history[:mid]).items(), at_mid.revision)
    assert resynced == at_mid
    assert resynced.apply(flat(history[mid:])) == at_mid.apply(flat(history[mid:]))


@given(histories())
@settings(max_examples=30)
def test_apply_never_changes_the_snapshot_it_is_called_on(history: list[list[KeyEvent]]) -> None:
    snap = start_of(history).apply(flat(history[: len(history) // 2]))
    before = (snap.revision, dict(snap.nodes), dict(snap.workflows), dict(snap.objectives))
    snap.apply(flat(history))
    assert (snap.revision, dict(snap.nodes), dict(snap.workflows), dict(snap.objectives)) == before


def test_deletes_remove_and_keys_map_to_sections() -> None:
    snap = ClusterSnapshot().apply(
        [
            KeyEvent("nodes/n1", node_json("n1"), 5),
            KeyEvent("workflows/fraud/2", b'{"sha256": "ab"}', 6),
            KeyEvent("objectives/pay", b'{"revision": 1, "config": {}}', 7),
            KeyEvent("objective_history/pay/0000000001", b'{"revision": 1}', 7),
        ]
    )
    assert snap.revision == 7
    assert snap.nodes["n1"].state is NodeState.ACTIVE
    assert snap.workflows == {"fraud@2": {"sha256": "ab"}}
    assert snap.objectives == {"pay": {"revision": 1, "config": {}}}

    gone = snap.apply(
        [
            KeyEvent("nodes/n1", None, 8),
            KeyEvent("workflows/fraud/2", None, 9),
            KeyEvent("objectives/pay", None, 9),
        ]
    )
    assert gone == ClusterSnapshot(revision=9)
    assert snap.nodes.keys() == {"n1"}, "the old snapshot is untouched"
    with pytest.raises(TypeError):
        snap.nodes["n2"] = snap.nodes["n1"]  # type: ignore[index]


def test_a_bad_value_removes_the_key_instead_of_breaking_the_snapshot() -> None:
    snap = ClusterSnapshot().apply([KeyEvent("nodes/n1", node_json("n1"), 1)])
    assert snap.apply([KeyEvent("nodes/n1", b"{oops", 2)]).nodes == {}
    assert snap.apply([KeyEvent("nodes/n1", node_json("n2"), 2)]).nodes == {}, "id mismatch"


def test_revision_only_batches_advance_and_stale_ones_are_ignored() -> None:
    snap = ClusterSnapshot(revision=3)
    assert snap.apply([], revision=3) is snap
    assert snap.apply([KeyEvent("nodes/n1", node_json("n1"), 3)]) is snap
    assert snap.apply([], revision=10).revision == 10


def test_a_node_record_carries_its_holder_and_old_records_still_parse() -> None:
    held = NodeRecord(
        "n1", "10.0.0.1:7000", "10.0.0.1:7001", hostname="h1", pid=42, started_at="t0"
    )
    assert NodeRecord.from_json(held.to_json()) == held
    assert held.holder() == "gRPC 10.0.0.1:7000, pid 42 on h1, started t0"
    bare = NodeRecord("n1", "10.0.0.1:7000", "10.0.0.1:7001")
    assert b"pid" not in bare.to_json(), "records without a holder keep their old form"
    assert NodeRecord.from_json(bare.to_json()) == bare
    for bad in ({"pid": -1}, {"pid": True}, {"hostname": 3}):
        doc = json.loads(bare.to_json()) | bad
        with pytest.raises(ValueError, match="NodeRecord"):
            NodeRecord.from_json(json.dumps(doc))
