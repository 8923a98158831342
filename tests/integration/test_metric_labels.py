"""Metric label values come only from the catalog: no client can create a series.

Every unknown objective name used to become a new label value of the request counters
and histograms (50 names -> 950 new lines on ``/metrics``, no token needed). Unknown
objectives are now counted under ``objective="_unknown"``; unknown model overrides are
refused before they could name a series.
"""

from __future__ import annotations

import grpc
import pytest

from shardline.node.sdk.client import build_request
from shardline.node.serving.request_head import UNKNOWN_OBJECTIVE
from tests.integration.test_standalone_node import FRAUD, metric
from tests.procs import NodeProcess

pytestmark = pytest.mark.integration

PREDICT = "/shardline.v1.Inference/Predict"


async def _send(node: NodeProcess, requests: list[bytes]) -> list[grpc.StatusCode]:
    codes = []
    async with grpc.aio.insecure_channel(node.target) as channel:
        call = channel.unary_unary(PREDICT)
        for raw in requests:
            try:
                await call(raw, timeout=30.0)
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code())
            else:
                codes.append(grpc.StatusCode.OK)
    return codes


def _series(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("shardline_")]


async def test_unknown_objectives_create_no_series(node: NodeProcess) -> None:
    # One of each first: they may create the one series (per code) they are counted in.
    warmup = [
        build_request("warmup_unknown", FRAUD),
        build_request("payment_fraud", FRAUD, model_override="warmup_ghost@1"),
    ]
    assert await _send(node, warmup) == [
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
    ]
    before = node.metrics_text()
    names = [f"no_such_objective_{i}" for i in range(50)]
    requests = [build_request(name, FRAUD, user_id=f"u{i}") for i, name in enumerate(names)]
    # Model overrides outside the catalog, on an objective that allows overrides.
    requests += [
        build_request("payment_fraud", FRAUD, user_id="u", model_override=f"ghost_{i}@1")
        for i in range(10)
    ]
    codes = await _send(node, requests)
    assert codes == [grpc.StatusCode.NOT_FOUND] * 50 + [grpc.StatusCode.INVALID_ARGUMENT] * 10
    after = node.metrics_text()
    new = sorted(
        {line.rsplit(" ", 1)[0] for line in _series(after)}
        - {line.rsplit(" ", 1)[0] for line in _series(before)}
    )
    assert not new, new[:10]
    assert len(_series(after)) == len(_series(before))
    assert not any(name in after for name in names)
    assert "ghost_" not in after
    grown = metric(
        after, "shardline_requests_total", objective=UNKNOWN_OBJECTIVE, code="NOT_FOUND"
    ) - metric(before, "shardline_requests_total", objective=UNKNOWN_OBJECTIVE, code="NOT_FOUND")
    assert grown == 50
