"""The peer link on loopback sockets: a real ``GracefulServer`` (the node's server class,
sniffing HTTP/2 and the link on one port) and the real client (``PeerPool``).

The forward handler stands in for the cluster router (what it does is chosen by the
``ForwardRequest``'s model key), so each semantic is checked on its own: the answer and the
gRPC port beside it, deadline propagation, cancellation, a connection that drops (failover
status, then a reconnect), bounded streams, drain, malformed frames, a slow reader on
either side (no unbounded buffering), an older node without the link (gRPC fallback), and
mutual TLS.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from grpclib.client import Channel
from grpclib.health.check import ServiceStatus
from grpclib.health.service import OVERALL, Health
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from prometheus_client import CollectorRegistry, Gauge

from shardline.node._proto.shardline.v1 import peer_pb2
from shardline.node.cluster.peer_link import forward_handler
from shardline.node.cluster.peers import PeerPool
from shardline.node.ops.certs import write_dev_pki
from shardline.node.sdk.codec import WireCodec
from shardline.node.sdk.errors import Unavailable
from shardline.node.sdk.tls import TlsFiles, server_context
from shardline.node.serving.graceful_server import GracefulServer, InFlight
from shardline.node.serving.peer_link import (
    CANCEL,
    DEADLINE,
    ERROR,
    HEADER,
    MAGIC,
    MAGIC_OK,
    REQUEST,
    RESPONSE,
    LinkConnection,
    LinkServing,
    frame,
)
from shardline.node.serving.service import PeerService
from shardline.router.forward import AttemptFailed

WAIT_S = 20.0  # generous bound for any wait on a contended machine
MAX_MESSAGE = 4 * 1024 * 1024
BIG = 512 * 1024


try:
    import uvloop
except ImportError:  # pragma: no cover - the [fast] extra
    uvloop = None  # type: ignore[assignment]


@dataclass
class Owner:
    """The stand-in for ``ClusterRouter.serve_forward``."""

    seen_remaining: list[float] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def serve_forward(self, message: Any, timeout_s: float, started: float) -> bytes:
        key = message.model_key
        self.seen_remaining.append(timeout_s)
        if key == "echo":
            return bytes(message.request)
        if key == "big":
            return b"x" * BIG
        if key == "unavailable":
            raise Unavailable("owner going away")
        if key == "boom":
            raise RuntimeError("a bug")
        if key in ("wait", "forever"):
            self.started.set()
            try:
                if key == "forever":
                    await asyncio.Event().wait()
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
            return b"released"
        raise AssertionError(key)


@dataclass
class Node:
    server: GracefulServer
    serving: LinkServing | None
    in_flight: InFlight
    owner: Owner
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def links(self) -> list[LinkConnection]:
        return list(self.server._links)


async def start_node(
    *, link: bool = True, tls: TlsFiles | None = None, max_streams: int = 1024
) -> Node:
    owner = Owner()
    in_flight = InFlight(Gauge("in_flight", "test", registry=CollectorRegistry()))
    serving = (
        LinkServing(
            in_flight,
            MAX_MESSAGE,
            require_client_cert=tls is not None,
            handler=forward_handler(owner),
            max_streams=max_streams,
        )
        if link
        else None
    )
    status = ServiceStatus()
    status.set(True)
    server = GracefulServer(
        [PeerService(owner), Health({OVERALL: [status]})],
        codec=WireCodec(MAX_MESSAGE),
        peer_link=serving,
    )
    await server.start("127.0.0.1", 0, ssl=server_context(tls) if tls else None)
    assert server._server is not None
    port = server._server.sockets[0].getsockname()[1]
    return Node(server, serving, in_flight, owner, port)


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    n = await start_node()
    yield n
    n.server.close()
    await n.server.wait_closed()
    n.server.close_connections()


@pytest.fixture
async def pool() -> AsyncIterator[PeerPool]:
    p = PeerPool()
    yield p
    p.close()


def forward(
    pool: PeerPool, node: Node, key: str, timeout_s: float = WAIT_S, request: bytes = b"req"
) -> Awaitable[bytes]:
    return pool.forward(
        "owner", node.address, request, model_key=key, cell="default", hops=1,
        ingress_node="ingress", timeout_s=timeout_s,
    )  # fmt: skip


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) for a condition that no event announces."""
    loop = asyncio.get_running_loop()
    end = loop.time() + WAIT_S
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# -- the answer, and gRPC beside it on the same port -------------------------------------------


async def test_forward_over_the_link_and_grpc_on_the_same_port(node: Node, pool: PeerPool) -> None:
    assert await forward(pool, node, "echo", request=b"the original bytes") == b"the original bytes"
    assert node.serving is not None and node.serving.requests == 1
    assert len(node.links()) == 1
    channel = Channel("127.0.0.1", node.port)  # HTTP/2 on the very same port still works
    try:
        reply = await HealthStub(channel).Check(HealthCheckRequest(), timeout=WAIT_S)
        assert reply.status == HealthCheckResponse.SERVING
    finally:
        channel.close()
    grpc_pool = PeerPool(transport="grpc")  # and Peer.Forward over gRPC, the old way
    try:
        assert await forward(grpc_pool, node, "echo", request=b"via grpc") == b"via grpc"
    finally:
        grpc_pool.close()
    assert node.serving.requests == 1


async def test_errors_keep_their_status(node: Node, pool: PeerPool) -> None:
    with pytest.raises(AttemptFailed) as err:
        await forward(pool, node, "unavailable")
    assert (err.value.status, err.value.message) == ("UNAVAILABLE", "owner going away")
    assert err.value.retryable
    with pytest.raises(AttemptFailed) as err:
        await forward(pool, node, "boom")
    assert err.value.status == "INTERNAL" and "node log ref" in err.value.message
    assert "a bug" not in err.value.message  # no internals to the caller


def test_bad_transport_is_refused() -> None:
    with pytest.raises(ValueError, match="link, grpc"):
        PeerPool(transport="udp")


# -- deadline and cancellation -----------------------------------------------------------------


async def test_the_owner_sees_the_time_left_and_stops_at_the_deadline(
    node: Node, pool: PeerPool
) -> None:
    await forward(pool, node, "echo", timeout_s=3.0)
    (remaining,) = node.owner.seen_remaining
    assert 2.0 < remaining <= 3.0
    with pytest.raises(AttemptFailed) as err:
        await forward(pool, node, "forever", timeout_s=0.5)
    assert err.value.status == "DEADLINE_EXCEEDED"
    await asyncio.wait_for(node.owner.cancelled.wait(), WAIT_S)  # the owner gave up too
    await asyncio.wait_for(node.in_flight.wait_idle(), WAIT_S)


async def test_a_caller_that_goes_away_cancels_the_work(node: Node, pool: PeerPool) -> None:
    call = asyncio.ensure_future(forward(pool, node, "forever", timeout_s=60.0))
    await asyncio.wait_for(node.owner.started.wait(), WAIT_S)
    assert node.in_flight.count == 1
    call.cancel()
    await asyncio.wait_for(node.owner.cancelled.wait(), WAIT_S)  # CANCEL reached the owner
    await asyncio.wait_for(node.in_flight.wait_idle(), WAIT_S)
    assert await forward(pool, node, "echo") == b"req"  # the connection carries on
    assert len(node.links()) == 1


# -- failover: a connection that drops -----------------------------------------------------------


async def test_a_dropped_connection_fails_pending_calls_then_reconnects(
    node: Node, pool: PeerPool
) -> None:
    call = asyncio.ensure_future(forward(pool, node, "forever"))
    await asyncio.wait_for(node.owner.started.wait(), WAIT_S)
    node.server.close_connections()  # the peer's connections break mid-request
    with pytest.raises(AttemptFailed) as err:
        await asyncio.wait_for(call, WAIT_S)
    assert err.value.status == "CONNECTION" and err.value.retryable
    await asyncio.wait_for(node.owner.cancelled.wait(), WAIT_S)  # the owner stopped the work
    assert await forward(pool, node, "echo") == b"req"  # a new connection on the next use
    assert pool._links[node.address].connections == 2


async def test_a_peer_that_is_gone_is_a_connection_failure(pool: PeerPool) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens here once closed
    with pytest.raises(AttemptFailed) as err:
        await pool.forward(
            "gone", f"127.0.0.1:{port}", b"r", model_key="echo", cell="c", hops=1,
            ingress_node="i", timeout_s=WAIT_S,
        )  # fmt: skip
    assert err.value.status == "CONNECTION"


async def test_a_peer_leaving_the_view_mid_connect_fails_the_call_cleanly(
    pool: PeerPool,
) -> None:
    """``retain`` (the view dropped the peer) while a call waits for the link's hello: the
    call fails with CONNECTION, which the router fails over; never ``CancelledError``,
    which would take the client's whole request down with it."""
    accepted = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await reader.read()  # never answers the hello

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        call = asyncio.ensure_future(
            pool.forward(
                "leaving",
                address,
                b"r",
                model_key="echo",
                cell="c",
                hops=1,
                ingress_node="i",
                timeout_s=WAIT_S,
            )
        )
        await asyncio.wait_for(accepted.wait(), WAIT_S)
        pool.retain(set())
        with pytest.raises(AttemptFailed) as err:
            await asyncio.wait_for(call, WAIT_S)
        assert err.value.status == "CONNECTION"
    finally:
        server.close()


# -- backpressure --------------------------------------------------------------------------------


async def test_streams_per_connection_are_bounded() -> None:
    node = await start_node(max_streams=2)
    pool = PeerPool()
    try:
        calls = [asyncio.ensure_future(forward(pool, node, "wait")) for _ in range(2)]
        await until(lambda: node.in_flight.count == 2, "two calls in flight")
        with pytest.raises(AttemptFailed) as err:
            await forward(pool, node, "echo")
        assert err.value.status == "RESOURCE_EXHAUSTED" and err.value.retryable
        node.owner.release.set()
        assert await asyncio.gather(*calls) == [b"released", b"released"]
        assert await forward(pool, node, "echo") == b"req"
    finally:
        pool.close()
        node.server.close()
        await node.server.wait_closed()


async def test_a_peer_that_does_not_read_gets_no_unbounded_buffer(
    node: Node, pool: PeerPool
) -> None:
    """The server holds answers (and stops reading) while its peer does not read them."""
    count = 64
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", node.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        body = peer_pb2.ForwardRequest(model_key="big", request=b"r").SerializeToString()
        writer.write(MAGIC)
        for i in range(1, count + 1):
            writer.write(frame(REQUEST, i, DEADLINE.pack(60.0) + body))
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(len(MAGIC_OK)), WAIT_S) == MAGIC_OK
        await until(lambda: len(node.links()) == 1, "the link")
        (link,) = node.links()
        await until(lambda: not link.writable.is_set(), "the server to pause writing")
        for _ in range(20):  # let every handler finish its part
            await asyncio.sleep(0)
        held = link.transport.get_write_buffer_size()
        assert held < 4 * BIG, f"{held} bytes buffered for a peer that does not read"
        assert link.tasks, "answers wait for the drain, holding their streams"
        seen = 0
        while seen < count:  # now read: every answer arrives, whole
            length, kind, _ = HEADER.unpack(await asyncio.wait_for(reader.readexactly(9), WAIT_S))
            assert (kind, length) == (RESPONSE, BIG)
            await asyncio.wait_for(reader.readexactly(length), WAIT_S)
            seen += 1
    finally:
        writer.close()


async def test_the_client_waits_for_a_peer_that_does_not_read(pool: PeerPool) -> None:
    """Callers wait for the socket to drain rather than buffer requests without bound."""
    stalled: list[asyncio.Transport] = []

    async def stalling(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(len(MAGIC))
        writer.write(MAGIC_OK)
        transport = cast(asyncio.Transport, writer.transport)  # uvloop's: no subclass
        transport.pause_reading()  # never reads another byte
        stalled.append(transport)
        await asyncio.Event().wait()

    server = await asyncio.start_server(stalling, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    size, count = 1024 * 1024, 24
    try:
        calls = [
            asyncio.ensure_future(
                pool.forward(
                    "stalled",
                    f"127.0.0.1:{port}",
                    b"r" * size,
                    model_key="echo",
                    cell="c",
                    hops=1,
                    ingress_node="i",
                    timeout_s=3.0,
                )
            )
            for _ in range(count)
        ]
        await until(lambda: bool(stalled), "the stalled peer")
        link = pool._links[f"127.0.0.1:{port}"]
        client = link._client
        assert client is not None
        await until(lambda: not client.writable.is_set(), "the client to pause writing")
        for _ in range(20):
            await asyncio.sleep(0)
        assert client.transport is not None
        held = client.transport.get_write_buffer_size()
        assert held < 4 * size, f"{held} bytes buffered towards a peer that does not read"
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(
            isinstance(r, AttemptFailed) and r.status == "DEADLINE_EXCEEDED" for r in results
        ), results
    finally:
        for transport in stalled:
            transport.abort()
        server.close()


# -- drain ---------------------------------------------------------------------------------------


async def test_drain_counts_link_requests_and_refuses_new_ones(node: Node, pool: PeerPool) -> None:
    call = asyncio.ensure_future(forward(pool, node, "wait"))
    await asyncio.wait_for(node.owner.started.wait(), WAIT_S)
    assert node.in_flight.count == 1  # a link request counts in flight
    node.in_flight.draining = True  # what NodeServer.quiesce does
    with pytest.raises(AttemptFailed) as err:
        await forward(pool, node, "echo")
    assert err.value.status == "UNAVAILABLE" and err.value.retryable
    assert "shutting down" in err.value.message
    idle = asyncio.ensure_future(node.in_flight.wait_idle())
    await asyncio.sleep(0)
    assert not idle.done()  # the drain waits for it
    node.owner.release.set()
    assert await asyncio.wait_for(call, WAIT_S) == b"released"  # and it finishes
    await asyncio.wait_for(idle, WAIT_S)


async def test_server_close_cancels_link_requests(pool: PeerPool) -> None:
    node = await start_node()
    call = asyncio.ensure_future(forward(pool, node, "forever"))
    await asyncio.wait_for(node.owner.started.wait(), WAIT_S)
    node.server.close()
    await asyncio.wait_for(node.server.wait_closed(), WAIT_S)
    assert node.owner.cancelled.is_set()
    node.server.close_connections()
    with pytest.raises(AttemptFailed) as err:
        await asyncio.wait_for(call, WAIT_S)
    assert err.value.status == "CONNECTION"


# -- malformed frames ----------------------------------------------------------------------------

MALFORMED = {
    "over the limit": HEADER.pack(MAX_MESSAGE + 1024 * 1024, REQUEST, 1),
    "unknown type": frame(99, 1, b"?"),
    "an answer from a client": frame(RESPONSE, 1, b"x"),
    "an error from a client": frame(ERROR, 1, b"\x01x"),
    "no deadline": frame(REQUEST, 1, b"abc"),
    "a NaN deadline": frame(REQUEST, 1, struct.pack("!d", math.nan) + b"x"),
    "a stream opened twice": frame(REQUEST, 7, DEADLINE.pack(60.0) + b"")
    + frame(REQUEST, 7, DEADLINE.pack(60.0) + b""),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_a_malformed_frame_closes_that_connection_only(
    node: Node, pool: PeerPool, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    node.owner.release.clear()
    assert await forward(pool, node, "echo") == b"req"  # a healthy link beside it
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    data = MALFORMED[case]
    if case == "a stream opened twice":
        body = peer_pb2.ForwardRequest(model_key="forever").SerializeToString()
        data = frame(REQUEST, 7, DEADLINE.pack(60.0) + body) * 2
    with caplog.at_level(logging.WARNING, logger="shardline.peer_link"):
        writer.write(MAGIC + data)
        assert await asyncio.wait_for(reader.readexactly(len(MAGIC_OK)), WAIT_S) == MAGIC_OK
        rest = await asyncio.wait_for(reader.read(), WAIT_S)  # EOF: the server closed it
        assert b"RESPONSE" not in rest
        await until(lambda: "peer link from" in caplog.text, "the log line")
    writer.close()
    assert await forward(pool, node, "echo") == b"req"  # the other connection is unaffected
    assert pool._links[node.address].connections == 1


async def test_a_cancel_for_an_unknown_stream_is_harmless(node: Node, pool: PeerPool) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    body = peer_pb2.ForwardRequest(model_key="echo", request=b"ok").SerializeToString()
    writer.write(MAGIC + frame(CANCEL, 5) + frame(REQUEST, 6, DEADLINE.pack(5.0) + body))
    assert await asyncio.wait_for(reader.readexactly(len(MAGIC_OK)), WAIT_S) == MAGIC_OK
    header = HEADER.unpack(await asyncio.wait_for(reader.readexactly(9), WAIT_S))
    assert header == (2, RESPONSE, 6)
    assert await reader.readexactly(2) == b"ok"
    writer.close()


# -- an older node: gRPC only --------------------------------------------------------------------


async def test_a_peer_without_the_link_is_called_over_grpc(pool: PeerPool) -> None:
    node = await start_node(link=False)
    try:
        assert await forward(pool, node, "echo", request=b"old node") == b"old node"
        assert node.address in pool._grpc_until  # remembered: no second try for a while
        assert await forward(pool, node, "echo", request=b"again") == b"again"
    finally:
        node.server.close()
        await node.server.wait_closed()


# -- mutual TLS ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    root: Path = tmp_path_factory.mktemp("link-pki")
    names = ["localhost", "127.0.0.1"]
    return (
        write_dev_pki(root / "cluster", ["node-1", "node-2"], names),
        write_dev_pki(root / "other", ["intruder"], names),
    )


async def test_the_link_needs_a_cluster_certificate(
    pki: tuple[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    mine, other = pki
    node = await start_node(
        tls=TlsFiles(mine.ca_cert, mine.node_certs["node-1"], mine.node_keys["node-1"])
    )
    peer = PeerPool(TlsFiles(mine.ca_cert, mine.node_certs["node-2"], mine.node_keys["node-2"]))
    no_cert = PeerPool(TlsFiles(mine.ca_cert))
    intruder = PeerPool(
        TlsFiles(mine.ca_cert, other.node_certs["intruder"], other.node_keys["intruder"])
    )
    try:
        assert await forward(peer, node, "echo", request=b"mtls") == b"mtls"
        assert node.serving is not None and node.serving.requests == 1
        with caplog.at_level(logging.WARNING, logger="shardline.peer_link"):
            with pytest.raises(AttemptFailed) as err:
                await forward(no_cert, node, "echo")
            assert err.value.status == "PERMISSION_DENIED"
            assert "client certificate signed by the cluster CA" in err.value.message
            assert "peer link from" in caplog.text and "refused" in caplog.text
        assert node.address not in no_cert._grpc_until  # refused, not "an older node"
        with pytest.raises(AttemptFailed) as err:
            await forward(intruder, node, "echo")  # another CA: the handshake fails
        assert err.value.status == "CONNECTION"
        assert node.address not in intruder._grpc_until  # no fallback: a refused handshake
        assert node.serving.requests == 1
    finally:
        for p in (peer, no_cert, intruder):
            p.close()
        node.server.close()
        await node.server.wait_closed()
        node.server.close_connections()


# -- the same on uvloop (a node's loop when installed: its transports switch protocols and
# report TLS certificates their own way) --------------------------------------------------------

ON_NODE_AND_POOL = [
    test_forward_over_the_link_and_grpc_on_the_same_port,
    test_errors_keep_their_status,
    test_the_owner_sees_the_time_left_and_stops_at_the_deadline,
    test_a_caller_that_goes_away_cancels_the_work,
    test_a_dropped_connection_fails_pending_calls_then_reconnects,
    test_a_peer_that_does_not_read_gets_no_unbounded_buffer,
    test_drain_counts_link_requests_and_refuses_new_ones,
]


@pytest.mark.skipif(uvloop is None, reason="no uvloop (the [fast] extra)")
def test_on_uvloop(pki: tuple[Any, Any], caplog: pytest.LogCaptureFixture) -> None:
    async def each() -> None:
        for case in ON_NODE_AND_POOL:
            node = await start_node()
            pool = PeerPool()
            try:
                await case(node, pool)  # type: ignore[operator]
            finally:
                pool.close()
                node.server.close()
                await node.server.wait_closed()
                node.server.close_connections()
        pool = PeerPool()
        try:
            await test_the_client_waits_for_a_peer_that_does_not_read(pool)
        finally:
            pool.close()
        await test_the_link_needs_a_cluster_certificate(pki, caplog)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(each())
