"""``bench.grpcio_load`` and ``bench.perf_analyzer`` run end to end against a real node.

A standalone node serves the example objectives. The grpcio load generator runs as its own
process for a couple of seconds on ``Predict`` and on V2 ``ModelInfer`` (the request the
bench encodes as perf_analyzer does) and must report answers, no errors and a positive
server CPU per request read from ``/proc`` over its measured window. Then Triton's
``perf_analyzer`` (obtained as the bench obtains it; skipped when it cannot be, e.g. no
network for its libraries) runs a few seconds at low concurrency and its CSV and profile
export must parse to a positive throughput. No timing is asserted (the machine may be busy).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.cluster_routing import plain_users
from bench.drain_clients import FRAUD
from bench.grpcio_load import MODEL_INFER, PREDICT, run_load
from bench.perf_analyzer import (
    FRAUD_DTYPES,
    OBJECTIVE,
    PerfAnalyzerUnavailable,
    input_data,
    model_outputs,
    obtain,
    run_perf_analyzer,
    same_answer,
    v2_request,
)
from shardline.node.sdk.client import build_request
from tests.procs import NodeProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fraud_node() -> Iterator[NodeProcess]:
    node = NodeProcess.start(metrics=False, args=["--cpu-threads", "1"])
    yield node
    node.stop()


@pytest.fixture(scope="module")
def user() -> str:
    return plain_users(1)[0]


def test_grpcio_load_reports_throughput_and_server_cpu(fraud_node: NodeProcess, user: str) -> None:
    predict = [build_request(OBJECTIVE, FRAUD, user_id=u) for u in [user, *plain_users(16)]]
    infer = [
        v2_request(
            OBJECTIVE, FRAUD, FRAUD_DTYPES, user, model_outputs(fraud_node.target, OBJECTIVE)
        )
    ]
    assert same_answer(fraud_node.target, predict[0], infer[0]) == "payment_fraud@1"
    for method, payloads in ((PREDICT, predict), (MODEL_INFER, infer)):
        run = run_load(
            [fraud_node.target],
            server_pids=[fraud_node.proc.pid],
            payloads=payloads,
            method=method,
            concurrency=8,
            duration_s=2.0,
            warmup_s=0.5,
        )
        assert run.errors == {}, (method, run.errors, run.first_error)
        assert run.requests > 0 and run.rps > 0, (method, run)
        assert run.server_cpu_ms_per_request > 0, (method, run)
        assert run.p99_ms >= run.p50_ms > 0, (method, run)


def test_perf_analyzer_runs_against_a_node(
    fraud_node: NodeProcess, user: str, tmp_path: Path
) -> None:
    try:
        pa = obtain(log=lambda _: None)
    except PerfAnalyzerUnavailable as e:
        pytest.skip(f"perf_analyzer cannot be obtained here: {e}")
    run = run_perf_analyzer(
        pa,
        fraud_node.target,
        model=OBJECTIVE,
        inputs_json=input_data(tmp_path / "inputs.json", FRAUD),
        concurrency=4,
        interval_ms=1000,
        server_pids=[fraud_node.proc.pid],
        out_dir=tmp_path,
        user_id=user,
        stability_pct=1000.0,  # any 3 windows: a busy machine cannot fail the run
        max_trials=3,
    )
    assert run.rps > 0 and run.requests > 0, run
    assert run.p99_ms >= run.p50_ms > 0, run
    assert run.server_cpu_ms_per_request > 0, run
