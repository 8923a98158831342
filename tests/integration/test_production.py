"""Production behaviour on a real node: metrics move with traffic, health endpoints,
the sampled prediction log, and per-objective limits that shed only their objective."""

from __future__ import annotations

import asyncio
import json
import shutil
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpclib.const import Status

from shardline.node.observability.predlog import PredictionRecord
from shardline.node.sdk.client import Client, PredictError
from tests.integration.conftest import make_slow_package
from tests.integration.test_standalone_node import FRAUD, metric
from tests.procs import EXAMPLES, NodeProcess, eventually

pytestmark = pytest.mark.integration

OBJECTIVES = {
    "logged.toml": """
        name = "logged"
        default = "payment_fraud@1"
        prediction_log_rate = 0.25
    """,
    "limited.toml": """
        name = "limited"
        default = "payment_fraud@1"
        [limits]
        max_concurrency = 2
        rate_per_s = 5.0
        burst = 5.0
    """,
    "open.toml": """
        name = "open"
        default = "payment_fraud@1"
    """,
    "shadowed.toml": """
        name = "shadowed"
        default = "payment_fraud@1"
        prediction_log_rate = 1.0
        [[shadows]]
        model = "payment_fraud@2"
        percent = 100.0
    """,
    "bulk.toml": """
        name = "bulk"
        default = "slow@1"
    """,
    "interactive.toml": """
        name = "interactive"
        default = "slow@1"
    """,
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("prod")
    workflows = root / "workflows"
    shutil.copytree(EXAMPLES / "payment_fraud", workflows / "payment_fraud")
    make_slow_package(workflows, delay_s=0.05, queue_capacity=64)
    objectives = root / "objectives"
    objectives.mkdir()
    for name, text in OBJECTIVES.items():
        (objectives / name).write_text(textwrap.dedent(text))
    return workflows, objectives, root / "predlog"


@pytest.fixture(scope="module")
def node(tree: tuple[Path, Path, Path]) -> Iterator[NodeProcess]:
    workflows, objectives, predlog = tree
    proc = NodeProcess.start(
        ["--predlog-dir", str(predlog), "--predlog-rate", "0"],
        workflows=workflows,
        objectives=objectives,
    )
    yield proc
    proc.stop()


def http(node: NodeProcess, path: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{node.metrics_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_metrics_move_as_traffic_flows(node: NodeProcess) -> None:
    before = node.metrics_text()
    labels = {"objective": "open", "code": "OK", "path": "served"}
    async with Client(node.target) as client:
        for i in range(30):
            await client.predict("open", FRAUD, user_id=f"m{i}")
        with pytest.raises(PredictError):
            await client.predict("open", {**FRAUD, "amount": -1.0})
    after = node.metrics_text()
    assert (
        metric(after, "shardline_requests_total", **labels)
        - metric(before, "shardline_requests_total", **labels)
        == 30
    )
    assert metric(after, "shardline_requests_total", objective="open", code="INVALID_ARGUMENT") >= 1
    assert metric(after, "shardline_request_seconds_count", objective="open") >= 31
    for name in (
        "shardline_batch_size_count",
        "shardline_queue_wait_seconds_count",
        "shardline_batch_compute_seconds_count",
    ):
        assert metric(after, name, model_key="payment_fraud@1") > metric(
            before, name, model_key="payment_fraud@1"
        ), name
    assert "shardline_model_queue_depth{" in after
    assert metric(after, "shardline_model_loads_total", outcome="ok") >= 2
    assert http(node, "/healthz")[0] == 200
    status, body = http(node, "/readyz")
    assert status == 200 and "ready" in body


async def test_limits_shed_only_their_objective(node: NodeProcess) -> None:
    async with Client(node.target) as client:
        flood = [client.predict("limited", FRAUD, user_id=f"f{i}") for i in range(60)]
        steady = [client.predict("open", FRAUD, user_id=f"s{i}") for i in range(30)]
        results = await asyncio.gather(*flood, *steady, return_exceptions=True)
    limited, opened = results[:60], results[60:]
    shed = [r for r in limited if isinstance(r, PredictError)]
    assert shed and all(e.status == Status.RESOURCE_EXHAUSTED for e in shed)
    assert all("limited" in e.message for e in shed)
    assert len(shed) >= 50  # burst 5 and 2 at a time: most of a 60-request surge is shed
    assert not [r for r in opened if isinstance(r, BaseException)], opened
    text = node.metrics_text()
    assert metric(text, "shardline_shed_total", objective="limited") >= len(shed)
    assert metric(text, "shardline_shed_total", objective="open") == 0


async def test_prediction_log_samples_and_flags(tree: tuple[Path, Path, Path]) -> None:
    workflows, objectives, _ = tree
    predlog = tree[2].parent / "predlog-own"
    proc = NodeProcess.start(
        ["--predlog-dir", str(predlog), "--predlog-rate", "0"],
        workflows=workflows, objectives=objectives, metrics=False,
    )  # fmt: skip
    n = 800
    try:
        async with Client(proc.target) as client:
            for start in range(0, n, 100):
                await asyncio.gather(*(
                    client.predict("logged", FRAUD, user_id=f"u{i}", request_id=f"r{i}",
                                   synthetic=i % 2 == 0)
                    for i in range(start, start + 100)
                ))  # fmt: skip
            for i in range(50):  # rate 0 by default: never logged
                await client.predict("open", FRAUD, user_id=f"o{i}")
    finally:
        assert proc.stop() == 0  # a clean stop flushes the log
    records = [
        PredictionRecord.from_json(line)
        for path in sorted(predlog.glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    assert {r.objective for r in records} == {"logged"}
    share = len(records) / n
    assert abs(share - 0.25) < 4 * (0.25 * 0.75 / n) ** 0.5, share
    for r in records:
        i = int(r.request_id[1:])
        assert r.synthetic == (i % 2 == 0)
        assert r.user_id == f"u{i}" and r.model_key == "payment_fraud@1" and r.node_id
        assert set(r.outputs) == {"probability", "decision"}
        assert r.timings_ms["total"] > 0
    json.loads(records[0].to_json())


async def test_one_objectives_backlog_does_not_queue_ahead_of_another(node: NodeProcess) -> None:
    """Two objectives share the slow model (one request per 50 ms batch). A burst of 16 on
    ``bulk`` queues up; an ``interactive`` request sent behind it is taken at its flow's
    next turn, not after the whole backlog (it would be 16th in a plain FIFO)."""
    finished: list[str] = []

    async def call(client: Client, objective: str, i: int) -> None:
        await client.predict(objective, {"x": float(i)}, user_id=f"{objective}-{i}", timeout_s=20)
        finished.append(objective)

    async with Client(node.target) as client:
        bulk = [asyncio.ensure_future(call(client, "bulk", i)) for i in range(16)]
        await eventually(
            lambda: (
                metric(node.metrics_text(), "shardline_model_queue_depth", model_key="slow@1") >= 10
                or None
            )
        )
        await call(client, "interactive", 0)
        ahead = finished.index("interactive")
        await asyncio.gather(*bulk)
    # At most: the batch running, the one handed to the device, one turn of bulk, and
    # whatever finished while the backlog formed.
    assert ahead <= 16 - 10 + 3, finished
    assert len(finished) == 17


async def test_shadows_logged_as_shadows_with_the_request_id_given_here(
    node: NodeProcess, tree: tuple[Path, Path, Path]
) -> None:
    """Shadow predictions get their own tag (``synthetic`` means load tests); a request
    sent without an id gets one, which its answer, its record and its shadow's carry."""
    predlog = tree[2]
    n = 12
    ids = []
    async with Client(node.target) as client:
        for i in range(n):
            answer = await client.predict("shadowed", FRAUD, user_id=f"sh{i}")
            assert len(answer.request_id) == 32
            ids.append(answer.request_id)

    def records() -> list[PredictionRecord] | None:
        found = [
            PredictionRecord.from_json(line)
            for path in sorted(predlog.glob("*.jsonl"))
            for line in path.read_text().splitlines()
        ]
        mine = [r for r in found if r.objective == "shadowed"]
        return mine if len(mine) >= 2 * n else None

    logged = await eventually(records, timeout_s=30)
    answered = [r for r in logged if r.model_key == "payment_fraud@1"]
    shadows = [r for r in logged if r.model_key == "payment_fraud@2"]
    assert sorted(r.request_id for r in answered) == sorted(ids)
    assert sorted(r.request_id for r in shadows) == sorted(ids)
    assert all(r.shadow and not r.synthetic and r.cell == "shadow" for r in shadows)
    assert not any(r.shadow or r.synthetic for r in answered)


async def test_process_prediction_log_and_load_metrics_are_exported(node: NodeProcess) -> None:
    async with Client(node.target) as client:
        for _ in range(2):  # no user id, to an objective that buckets no user: not counted
            await client.predict("open", FRAUD)
    text = node.metrics_text()
    assert metric(text, "shardline_requests_without_user_id_total", objective="open") == 0
    for name in ("process_resident_memory_bytes", "process_open_fds", "process_cpu_seconds_total"):
        assert metric(text, name) > 0, name
    assert metric(text, "shardline_model_load_seconds_count", model_key="payment_fraud@1") == 1
    assert metric(text, "shardline_model_load_seconds_sum", model_key="slow@1") > 0
    for outcome in ("written", "dropped"):
        assert f'shardline_prediction_log_records_total{{outcome="{outcome}"}}' in text
    assert "shardline_prediction_log_sink_errors_total 0.0" in text
    assert "shardline_prediction_log_pending " in text
