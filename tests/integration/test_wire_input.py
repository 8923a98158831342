"""What other-language clients send, through a real node with a grpcio client.

- typed tensor values (``Tensor.contents``) instead of packed little-endian bytes;
- gzip- and deflate-compressed requests (``grpc-encoding``), which used to get
  ``UNKNOWN: Internal Server Error`` and a traceback in the node log;
- requests without ``user_id`` to objectives that bucket users (experiments, canaries,
  shadows): counted per objective and logged once per client.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from shardline.node._proto.shardline.v1 import inference_pb2 as pb
from shardline.node.sdk import tensors
from shardline.node.sdk.client import build_request, parse_response
from tests.integration.test_standalone_node import FRAUD, metric
from tests.procs import NodeProcess, eventually

pytestmark = pytest.mark.integration

PREDICT = "/shardline.v1.Inference/Predict"
LIST = "/shardline.v1.Inference/ListObjectives"


def typed_request(objective: str, user_id: str) -> bytes:
    """FRAUD with every numeric input in ``contents`` (what a client that does not pack
    bytes sends)."""
    request = pb.PredictRequest(objective=objective)
    request.context.user_id = user_id
    for name, value in FRAUD.items():
        array = tensors.as_array(value)
        dtype = tensors.wire_dtype(array)
        t = request.inputs.add(name=name, dtype=dtype)
        if dtype == tensors.STRING:
            t.strings.append(str(value))
        else:
            getattr(t.contents, tensors.CONTENTS_FIELDS[dtype]).append(array.item())
    return request.SerializeToString()  # type: ignore[no-any-return]


async def _call(
    target: str,
    raw: bytes,
    *,
    method: str = PREDICT,
    compression: grpc.Compression | None = None,
    user_agent: str | None = None,
) -> bytes:
    options = [("grpc.primary_user_agent", user_agent)] if user_agent else []
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        reply = await channel.unary_unary(method)(raw, timeout=30.0, compression=compression)
    assert isinstance(reply, bytes)
    return reply


async def test_typed_contents_answer_like_packed_bytes(node: NodeProcess) -> None:
    packed = parse_response(
        await _call(node.target, build_request("payment_fraud", FRAUD, user_id="typed-1"))
    )
    typed = parse_response(await _call(node.target, typed_request("payment_fraud", "typed-1")))
    assert typed.model_key == packed.model_key and typed.cell == packed.cell
    np.testing.assert_allclose(
        typed.outputs["probability"], packed.outputs["probability"], rtol=1e-5
    )
    assert str(typed.outputs["decision"]) == str(packed.outputs["decision"])


async def test_request_without_id_gets_one(node: NodeProcess) -> None:
    ids = set()
    for _ in range(3):
        answer = parse_response(
            await _call(node.target, build_request("payment_fraud", FRAUD, user_id="rid"))
        )
        assert len(answer.request_id) == 32, answer.request_id
        ids.add(answer.request_id)
    assert len(ids) == 3
    mine = parse_response(
        await _call(
            node.target,
            build_request("payment_fraud", FRAUD, user_id="rid", request_id="client-7"),
        )
    )
    assert mine.request_id == "client-7"


@pytest.mark.parametrize("compression", [grpc.Compression.Gzip, grpc.Compression.Deflate])
async def test_compressed_requests_are_served(
    node: NodeProcess, compression: grpc.Compression
) -> None:
    log_lines = len(node.lines)
    raw = build_request("payment_fraud", FRAUD, user_id="gz-1")
    plain = parse_response(await _call(node.target, raw))
    squeezed = parse_response(await _call(node.target, raw, compression=compression))
    assert squeezed.model_key == plain.model_key
    np.testing.assert_allclose(
        squeezed.outputs["probability"], plain.outputs["probability"], rtol=1e-5
    )
    listing = pb.ListObjectivesResponse.FromString(
        await _call(node.target, b"", method=LIST, compression=compression)
    )
    assert "payment_fraud" in {o.name for o in listing.objectives}
    # Bad input inside a compressed request is still a clean INVALID_ARGUMENT.
    bad = build_request("payment_fraud", {**FRAUD, "amount": -1.0}, user_id="gz-1")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(node.target, bad, compression=compression)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    new = node.lines[log_lines:]
    assert not [line for line in new if "Traceback" in line or "Application error" in line], new


async def test_requests_without_user_id_are_counted_and_logged_once(node: NodeProcess) -> None:
    agent = "no-user-id-client/1.0"
    before = node.metrics_text()
    log_lines = len(node.lines)
    for objective in ("shadow_all", "ab_split", "shadow_all"):
        for _ in range(3):
            await _call(node.target, build_request(objective, FRAUD), user_agent=agent)
    # Not counted: with a user id (test_production: to an objective that buckets no user).
    await _call(node.target, build_request("shadow_all", FRAUD, user_id="u1"), user_agent=agent)

    def counted(objective: str, text: str) -> float:
        return metric(text, "shardline_requests_without_user_id_total", objective=objective)

    after = node.metrics_text()
    assert counted("shadow_all", after) - counted("shadow_all", before) == 6
    assert counted("ab_split", after) - counted("ab_split", before) == 3

    # A second client's warning, logged after every request above: once it is read, every
    # line those requests logged has been read too.
    marker = "marker-client/1.0"
    await _call(node.target, build_request("ab_split", FRAUD), user_agent=marker)
    await eventually(lambda: any(marker in line for line in node.lines[log_lines:]) or None)
    found = [line for line in node.lines[log_lines:] if agent in line]
    assert len(found) == 1, found
    assert "without context.user_id" in found[0] and "WARNING" in found[0]
