"""Which model keys a node should hold: the ring it is (or will be) part of."""

from __future__ import annotations

from types import MappingProxyType

from shardline.membership.registry import NodeRecord, NodeState
from shardline.membership.snapshot import ClusterSnapshot
from shardline.membership.view import build_view
from shardline.node.cluster.artifacts import artifact_path
from shardline.node.cluster.placement import desired_models
from shardline.node.cluster.routing import ring_of

KEYS = [f"model_{i}@1" for i in range(40)]


def cluster(states: dict[str, NodeState]) -> ClusterSnapshot:
    nodes = {
        node_id: NodeRecord(node_id, f"127.0.0.1:{7400 + i}", f"127.0.0.1:{7500 + i}", state=state)
        for i, (node_id, state) in enumerate(sorted(states.items()))
    }
    workflows = {k: {"artifact_uri": "/x", "manifest": {"replicas": 2}} for k in KEYS}
    return ClusterSnapshot(1, MappingProxyType(nodes), MappingProxyType(workflows))


def test_every_key_is_held_by_exactly_its_owners() -> None:
    snap = cluster({n: NodeState.ACTIVE for n in ("a", "b", "c", "d")})
    view = build_view(snap, {})
    held = {n: desired_models(n, view, snap) for n in "abcd"}
    ring = ring_of(view)
    for key in KEYS:
        assert {n for n in "abcd" if key in held[n]} == set(ring.owners(key, 2))


def test_a_joiner_loads_its_future_share_and_a_drainer_nothing() -> None:
    snap = cluster({"a": NodeState.ACTIVE, "b": NodeState.ACTIVE, "c": NodeState.JOINING})
    view = build_view(snap, {})
    future = ring_of(build_view(cluster({n: NodeState.ACTIVE for n in "abc"}), {}))
    joiner = desired_models("c", view, snap)
    assert joiner == {k for k in KEYS if "c" in future.owners(k, 2)}
    assert joiner  # some keys move to it
    # The active members keep their current keys until the joiner is active.
    assert desired_models("a", view, snap) == set(KEYS)
    draining = cluster({"a": NodeState.ACTIVE, "b": NodeState.DRAINING})
    assert desired_models("b", build_view(draining, {}), draining) == set()


def test_artifact_path_accepts_file_uris_and_paths() -> None:
    assert str(artifact_path({"artifact_uri": "file:///srv/pkg%20a"})) == "/srv/pkg a"
    assert str(artifact_path({"artifact_uri": "/srv/pkg"})) == "/srv/pkg"
