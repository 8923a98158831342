"""A real standalone node process, called over gRPC on loopback."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from grpclib.const import Status

from shardline.node.sdk.client import Client, PredictError, Prediction
from shardline.router.objectives import load_objectives_dir
from shardline.router.rules import RequestContext, evaluate
from tests.procs import EXAMPLES, NodeProcess, eventually

pytestmark = pytest.mark.integration

FRAUD = {
    "amount": 912.5,
    "currency": "USD",
    "country_mismatch": True,
    "account_age_days": 3.0,
    "tx_last_24h": 9,
    "card_present": False,
}
CANDIDATES = np.array([1, 5, 9, 12, 40, 77, 101, 230], dtype=np.int64)


async def fan_out(
    n: int, call: Callable[[int], Awaitable[Prediction]], concurrency: int = 64
) -> list[Prediction]:
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> Prediction:
        async with gate:
            return await call(i)

    return await asyncio.gather(*(one(i) for i in range(n)))


async def expect_error(call: Awaitable[Any], status: Status, *needles: str) -> str:
    with pytest.raises(PredictError) as err:
        await call
    assert err.value.status == status, err.value
    for needle in needles:
        assert needle in err.value.message, err.value.message
    assert "Traceback" not in err.value.message
    return err.value.message


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"{name}(?:\{{(.*)\}})? (\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


async def test_both_example_objectives_answer(node: NodeProcess) -> None:
    async with Client(node.target) as client:
        fraud = await client.predict("payment_fraud", FRAUD, user_id="u42", country="US")
        assert fraud.model_key in ("payment_fraud@1", "payment_fraud@2")
        assert 0.0 <= float(fraud.outputs["probability"]) <= 1.0
        assert str(fraud.outputs["decision"]) in ("approve", "review", "decline")
        assert fraud.node_id == "node-1" and fraud.hops == 0
        assert fraud.timing["total_ms"] > 0 and fraud.timing["batch_size"] >= 1

        ranked = await client.predict(
            "continue_watching_ranking",
            {"candidates": CANDIDATES, "k": 3},
            user_id="u7",
            country="US",
            device="web",
        )
        ids, scores = ranked.outputs["title_ids"], ranked.outputs["scores"]
        assert ranked.model_key.startswith("title_ranking@")
        assert 0 < len(ids) <= 3 and set(ids.tolist()) <= set(CANDIDATES.tolist())
        assert list(scores) == sorted(scores, reverse=True)

        # The context rule (BR + tv) picks the two-tower model.
        tv = await client.predict(
            "continue_watching_ranking",
            {"candidates": CANDIDATES},
            user_id="u7",
            country="BR",
            device="tv",
        )
        assert (tv.model_key, tv.cell) == ("title_ranking@2", "rule:brazil_tv")

        names = {o.name for o in await client.list_objectives()}
        assert {"payment_fraud", "continue_watching_ranking"} <= names


async def test_ab_allocation_is_stable_and_close_to_split(node: NodeProcess) -> None:
    users = [f"user-{i}" for i in range(10_000)]
    async with Client(node.target) as client:
        answers = await fan_out(
            len(users), lambda i: client.predict("ab_split", FRAUD, user_id=users[i])
        )
        again = await fan_out(
            500, lambda i: client.predict("ab_split", FRAUD, user_id=users[i * 20])
        )
    cells = Counter(a.cell for a in answers)
    assert set(cells) == {"exp-ab:control", "exp-ab:treatment"}
    assert abs(cells["exp-ab:treatment"] / len(users) - 0.70) < 0.02, cells
    for a in answers:
        want = "payment_fraud@2" if a.cell == "exp-ab:treatment" else "payment_fraud@1"
        assert a.model_key == want
    for i, a in enumerate(again):
        assert (a.cell, a.model_key) == (answers[i * 20].cell, answers[i * 20].model_key)
    # The node's choice is exactly the pure rules' choice.
    cfg = load_objectives_dir(EXAMPLES / "objectives")  # shipped configs parse too
    assert "payment_fraud" in cfg


async def test_canary_share(node: NodeProcess, test_tree: Any) -> None:
    _, objectives = test_tree
    cfg = load_objectives_dir(objectives)["canary_ten"]
    async with Client(node.target) as client:
        answers = await fan_out(
            10_000, lambda i: client.predict("canary_ten", FRAUD, user_id=f"c-{i}")
        )
    canary = sum(a.cell == "canary" for a in answers)
    assert abs(canary / 10_000 - 0.10) < 0.02
    for i, a in enumerate(answers[:500]):
        d = evaluate(cfg, RequestContext(user_id=f"c-{i}"))
        assert (a.model_key, a.cell) == (d.model_key, d.cell)


async def test_shadow_runs_but_never_reaches_the_answer(node: NodeProcess) -> None:
    before = metric(
        node.metrics_text(), "shardline_shadow_requests_total", model_key="payment_fraud@2"
    )
    async with Client(node.target) as client:
        answers = await fan_out(50, lambda i: client.predict("shadow_all", FRAUD, user_id=f"s{i}"))
        plain = await client.predict(
            "payment_fraud", FRAUD, user_id="s0", model_override="payment_fraud@1"
        )
        # FIFO barrier: this request to the shadow model queues behind every shadow copy.
        await client.predict("payment_fraud", FRAUD, user_id="x", model_override="payment_fraud@2")

        # The shadow tasks record their outcome just after their answer: wait for it.
        def shadows_recorded() -> str | None:
            t = node.metrics_text()
            n = metric(t, "shardline_shadow_requests_total", model_key="payment_fraud@2")
            return t if n >= before + 50 else None

        text = await eventually(shadows_recorded)
    done = metric(text, "shardline_shadow_requests_total", model_key="payment_fraud@2")
    assert done - before == 50
    ok = metric(text, "shardline_shadow_requests_total", model_key="payment_fraud@2", outcome="ok")
    assert ok >= 50
    for a in answers:
        assert (a.model_key, a.cell) == ("payment_fraud@1", "default")
        assert set(a.outputs) == {"probability", "decision"}
    assert float(answers[0].outputs["probability"]) == pytest.approx(
        float(plain.outputs["probability"])
    )


async def test_error_codes(node: NodeProcess) -> None:
    async with Client(node.target) as client:
        p = client.predict
        await expect_error(p("no_such_objective", FRAUD), Status.NOT_FOUND, "no_such_objective")
        await expect_error(p("", FRAUD), Status.INVALID_ARGUMENT, "objective")
        missing = {k: v for k, v in FRAUD.items() if k != "amount"}
        await expect_error(p("payment_fraud", missing), Status.INVALID_ARGUMENT, "inputs.amount")
        await expect_error(
            p("payment_fraud", {**FRAUD, "amount": np.int64(5)}),
            Status.INVALID_ARGUMENT,
            "inputs.amount",
            "float32",
        )
        await expect_error(
            p("payment_fraud", {**FRAUD, "amount": np.ones(2, np.float32)}),
            Status.INVALID_ARGUMENT,
            "inputs.amount",
        )
        await expect_error(
            p("payment_fraud", {**FRAUD, "amount": -5.0}), Status.INVALID_ARGUMENT, "inputs.amount"
        )
        await expect_error(
            p("payment_fraud", {**FRAUD, "bogus": 1}), Status.INVALID_ARGUMENT, "inputs.bogus"
        )
        await expect_error(
            p("ab_split", FRAUD, model_override="payment_fraud@2"),
            Status.INVALID_ARGUMENT,
            "model_override",
        )
        huge = {"candidates": np.ones(1_000_000, dtype=np.int64)}
        await expect_error(
            p("continue_watching_ranking", huge), Status.INVALID_ARGUMENT, "exceeds the limit"
        )
        await expect_error(
            client.predict_raw(b"\xff\xff\xff garbage"), Status.INVALID_ARGUMENT, "request"
        )
        # The node is still healthy after all of that.
        ok = await p("payment_fraud", FRAUD, user_id="after-errors")
        assert ok.model_key


async def test_full_queue_is_resource_exhausted_and_deadline_is_honoured(
    node: NodeProcess,
) -> None:
    async with Client(node.target) as client:
        results = await asyncio.gather(
            *(client.predict("slow", {"x": 1.0}, timeout_s=10) for _ in range(8)),
            return_exceptions=True,
        )
        shed = [r for r in results if isinstance(r, PredictError)]
        assert shed and all(e.status == Status.RESOURCE_EXHAUSTED for e in shed), results
        # The mailbox's bound, or the queue budget once the node has learned (from earlier
        # tests on this session's node) that a batch of slow@1 takes ~0.3 s: both refuse.
        assert "queue is full" in shed[0].message or "overloaded" in shed[0].message, shed
        assert any(isinstance(r, Prediction) for r in results)
        await expect_error(
            client.predict("slow", {"x": 1.0}, timeout_s=0.05), Status.DEADLINE_EXCEEDED
        )
        assert float((await client.predict("slow", {"x": 2.0})).outputs["y"]) == 4.0
    assert node.proc.poll() is None


async def test_sigterm_finishes_in_flight_requests(test_tree: Any) -> None:
    workflows, objectives = test_tree
    proc = NodeProcess.start(workflows=workflows, objectives=objectives)
    async with Client(proc.target) as client:
        pending = [asyncio.ensure_future(client.predict("slow", {"x": 3.0})) for _ in range(2)]
        await eventually(
            lambda: metric(proc.metrics_text(), "shardline_requests_in_flight") == 2 or None
        )
        stopped = asyncio.get_running_loop().run_in_executor(None, proc.stop)
        answers = await asyncio.gather(*pending)
        assert [float(a.outputs["y"]) for a in answers] == [6.0, 6.0]
        assert await stopped == 0
    assert any("stopped" in line for line in proc.lines)


async def test_standalone_without_objectives_serves_each_workflow_by_name(tmp_path: Any) -> None:
    """No objective file and no objectives/ folder: every workflow is an objective of its
    own name, routed to its highest version (a smoke test needs no objective file)."""
    import shutil

    workflows = tmp_path / "workflows"
    shutil.copytree(EXAMPLES / "payment_fraud", workflows / "payment_fraud")
    node = NodeProcess.start(workflows=workflows, metrics=False)
    try:
        assert "objectives: payment_fraud" in node.lines[-1], node.lines[-1]
        async with Client(node.target) as client:
            names = {o.name for o in await client.list_objectives()}
            answer = await client.predict("payment_fraud", FRAUD, user_id="smoke")
        assert names == {"payment_fraud"}
        assert answer.model_key == "payment_fraud@2"
    finally:
        assert node.stop() == 0


async def test_h2_fallback_answers_as_the_lean_http2_does(node: NodeProcess) -> None:
    """``--http2 h2`` (h2's state machine under grpclib, as stock grpclib) serves the same
    answers as the default lean HTTP/2 connection, to the SDK and to grpcio."""
    import grpc

    from shardline.node.sdk.client import build_request

    fallback = NodeProcess.start(["--http2", "h2"], metrics=False)
    try:
        answers = []
        for target in (node.target, fallback.target):
            async with Client(target) as client:
                answers.append(await client.predict("payment_fraud", FRAUD, user_id="u42"))
        lean, h2 = answers
        assert (lean.model_key, lean.cell) == (h2.model_key, h2.cell)
        assert float(lean.outputs["probability"]) == pytest.approx(
            float(h2.outputs["probability"]), rel=1e-5, abs=1e-6
        )
        async with grpc.aio.insecure_channel(fallback.target) as channel:
            call = channel.unary_unary("/shardline.v1.Inference/Predict")
            raw = await call(build_request("payment_fraud", FRAUD, user_id="u42"), timeout=10)
            assert raw and lean.model_key.encode() in raw
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(build_request("no_such_objective", FRAUD), timeout=10)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value
    finally:
        fallback.stop()
