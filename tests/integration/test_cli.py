"""The ``shardline`` command against a real node: predict, objectives, explain, health."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from grpclib.client import Channel
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from shardline.node.sdk.codec import WireCodec
from tests.procs import REPO, NodeProcess

pytestmark = pytest.mark.integration

FRAUD_ARGS = [
    "--input", "amount=912.5",
    "--input", "currency=USD",
    "--input", "country_mismatch=true",
    "--input", "account_age_days=3",
    "--input", "tx_last_24h=9",
    "--input", "card_present=false",
]  # fmt: skip


def shardline(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardline", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_predict_prints_answer_and_provenance(node: NodeProcess) -> None:
    done = shardline("predict", "payment_fraud", "--target", node.target, "--user", "u42",
                     *FRAUD_ARGS)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "probability" in done.stdout and "decision" in done.stdout
    assert "payment_fraud@" in done.stdout and "node node-1" in done.stdout
    assert "timing: total" in done.stdout


def test_predict_json_for_ranking(node: NodeProcess) -> None:
    done = shardline("predict", "continue_watching_ranking", "--target", node.target,
                     "--user", "u7", "--country", "BR", "--device", "tv",
                     "--input", "candidates=1,5,9,12,40", "--input", "k=2", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["model_key"] == "title_ranking@2" and answer["cell"] == "rule:brazil_tv"
    assert len(answer["outputs"]["title_ids"]) <= 2
    assert answer["hops"] == 0


def test_predict_errors_are_one_clear_line(node: NodeProcess) -> None:
    done = shardline("predict", "nope", "--target", node.target, *FRAUD_ARGS)
    assert done.returncode == 2
    assert "NOT_FOUND" in done.stderr and "nope" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    bad = shardline("predict", "payment_fraud", "--target", node.target, "--input", "amount=1")
    assert bad.returncode == 2 and "INVALID_ARGUMENT" in bad.stderr and "inputs." in bad.stderr


def test_unreachable_node_is_reported(node: NodeProcess) -> None:
    done = shardline("predict", "payment_fraud", "--target", "127.0.0.1:1", *FRAUD_ARGS)
    assert done.returncode == 3 and "cannot reach" in done.stderr
    assert "Traceback" not in done.stderr


def test_objectives_lists_inputs(node: NodeProcess) -> None:
    done = shardline("objectives", "--target", node.target)
    assert done.returncode == 0, done.stderr
    assert "payment_fraud" in done.stdout and "amount:float32" in done.stdout


def test_explain_prints_the_decision() -> None:
    done = shardline("objective", "explain", "continue_watching_ranking",
                     "--user", "u7", "--country", "BR", "--device", "tv")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "title_ranking@2" in done.stdout and "rule:brazil_tv" in done.stdout
    assert "why:" in done.stdout
    missing = shardline("objective", "explain", "nope")
    assert missing.returncode == 2 and "unknown objective" in missing.stderr


async def test_grpc_health_service_reports_serving(node: NodeProcess) -> None:
    host, port = node.target.split(":")
    channel = Channel(host, int(port), codec=WireCodec())
    try:
        reply = await HealthStub(channel).Check(HealthCheckRequest(), timeout=5)
        assert reply.status == HealthCheckResponse.SERVING
    finally:
        channel.close()
