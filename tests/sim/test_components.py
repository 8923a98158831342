"""The simulator's parts: scenario parsing, the etcd double, the network, the replica memo."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardline.router.replica import ReplicaPolicy, choose_replica, rendezvous
from shardline.sim.core import EventLoop, derive_rng
from shardline.sim.etcd import EtcdDouble
from shardline.sim.network import Network
from shardline.sim.scenario import NetworkSpec, ScenarioError, load_scenario, parse_scenario


def test_event_loop_orders_by_time_then_scheduling() -> None:
    loop = EventLoop()
    seen: list[str] = []
    loop.at(2.0, seen.append, "c")
    loop.at(1.0, seen.append, "a")
    loop.at(1.0, seen.append, "b")
    while loop.heap:
        loop.step()
    assert seen == ["a", "b", "c"]
    assert loop.now == 2.0


def test_derived_generators_are_stable() -> None:
    assert derive_rng(5, "x").random() == derive_rng(5, "x").random()
    assert derive_rng(5, "x").random() != derive_rng(5, "y").random()


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({}, "name"),
        ({"name": "x", "cluster": {"nodes": 0}}, "cluster.nodes"),
        ({"name": "x", "network": {"loss": 2}}, "network.loss"),
        ({"name": "x", "faults": [{"at_s": 1, "op": "explode"}]}, "faults[0].op"),
        ({"name": "x", "faults": [{"at_s": 1, "op": "pause", "node": "n1"}]}, "duration_s"),
        (
            {"name": "x", "faults": [{"at_s": 1, "op": "crash", "node": "n1", "x": 1}]},
            "faults[0].x",
        ),
        ({"name": "x", "objectives": [{"config": {"name": "o", "default": "nope@v1"}}]}, "config"),
        ({"name": "x", "checks": {"min_success_rate": 3}}, "min_success_rate"),
    ],
)
def test_bad_scenarios_name_the_field(doc: dict[str, object], field: str) -> None:
    with pytest.raises(ScenarioError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_scenario(doc)


def test_unknown_scenario_lists_the_known_ones() -> None:
    with pytest.raises(ScenarioError, match="node_crash_under_load"):
        load_scenario("no_such_scenario")


def test_etcd_double_is_linearizable_and_expires_leases() -> None:
    commits: list[int] = []
    etcd = EtcdDouble(on_commit=commits.append)
    lease = etcd.grant(10.0, now=0.0)
    assert etcd.put("nodes/a", b"{}", lease) == 1
    assert etcd.put("nodes/b", b"{}", 999) is None  # no such lease
    assert etcd.put("objectives/o", b"{}") == 2
    assert etcd.keepalive(lease, now=5.0)
    assert etcd.expire(now=12.0) == 15.0  # refreshed at 5: not yet
    etcd.set_up(False, now=14.0)
    assert etcd.expire(now=30.0) == float("inf")  # nothing expires while etcd is down
    etcd.set_up(True, now=30.0)  # every lease gets a full TTL back
    assert etcd.expire(now=39.0) == 40.0
    etcd.expire(now=40.0)
    assert "nodes/a" not in etcd.kv
    assert commits == [1, 2, 3]
    assert [e.key for e in etcd.events(0)] == ["nodes/a", "objectives/o", "nodes/a"]
    assert etcd.events(2)[0].value is None


def test_objective_history_records_when_each_revision_was_in_force() -> None:
    etcd = EtcdDouble()
    assert etcd.put_objective("o", {"name": "o", "default": "m@1"}, now=1.0) == 1
    assert etcd.put_objective("o", {"name": "o", "default": "m@2"}, now=5.0) == 2
    first, second = etcd.objective("o", 1), etcd.objective("o", 2)
    assert first is not None and second is not None
    assert (first.committed_at, first.superseded_at) == (1.0, 5.0)
    assert second.config["default"] == "m@2"


def test_network_partitions_loss_and_asymmetry() -> None:
    net = Network(NetworkSpec(loss=0.0), random.Random(1))
    assert net.datagram("a", "b")
    token = net.cut({"a"}, {"b"}, symmetric=False)
    assert net.datagram("a", "b") == () and net.rpc("a", "b") is None
    assert net.datagram("b", "a") and net.rpc("b", "a") is not None
    net.uncut(token)
    assert net.datagram("a", "b")
    lossy = Network(NetworkSpec(loss=0.5), random.Random(2))
    arrived = sum(bool(lossy.datagram("a", "b")) for _ in range(2000))
    assert 850 < arrived < 1150


@settings(max_examples=300, deadline=None)
@given(
    candidates=st.lists(
        st.sampled_from([f"n{i}" for i in range(6)]), min_size=1, max_size=4, unique=True
    ),
    user=st.text(min_size=0, max_size=8),
    loads=st.lists(st.integers(0, 40), min_size=4, max_size=4),
)
def test_choose_replica_returns_the_sticky_owner_exactly_when_within_the_limit(
    candidates: list[str], user: str, loads: list[int]
) -> None:
    """The contract ``SimNode.choose`` memoizes on (see its docstring)."""
    counts = dict(zip(candidates, loads, strict=False))
    policy = ReplicaPolicy()
    sticky = rendezvous(user, candidates)
    limit = policy.limit(sum(counts.values()) / len(candidates))
    chosen = choose_replica(candidates, user, counts, random.Random(0), policy)
    if counts[sticky] <= limit:
        assert chosen == sticky
    else:
        assert chosen != sticky
