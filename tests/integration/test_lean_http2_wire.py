"""The lean HTTP/2 connection on a real socket, called by a client nobody here wrote.

A grpclib server built the way a node builds it (``GracefulServer``: grpclib's server over
``CoalescingH2Protocol(lean=True)``, i.e. ``sdk.http2.LeanH2Connection`` under grpclib) on
loopback, called by **grpcio** (gRPC's C core): a 3 MB request answered by a 3 MB response
(flow control over many frames and WINDOW_UPDATEs both ways), 200 concurrent calls (more
than the 100 concurrent streams the server allows: grpcio must queue, nothing is refused),
metadata with a ``-bin`` key both ways, a status with a message, a deadline that expires
while the handler waits (DEADLINE_EXCEEDED, the handler is cancelled) and a client that
cancels mid-call (the handler is cancelled). And the other way round: grpclib's client over
``CoalescingChannel(lean=True)`` calling a grpcio server (3 MB each way, 200 concurrent
calls, ``-bin`` metadata, a deadline).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from grpclib.client import UnaryUnaryMethod
from grpclib.const import Cardinality, Handler, Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from shardline.node.sdk.coalesce import CoalescingChannel
from shardline.node.sdk.http2 import LeanH2Connection
from shardline.node.serving.graceful_server import GracefulServer

pytestmark = pytest.mark.integration

MB3 = 3 * 1024 * 1024
LIMIT = 8 * 1024 * 1024
WAIT_S = 15.0  # generous: a shared, slow machine


class RawCodec(CodecBase):
    """Messages are bytes as they are (grpcio's default with no serializers)."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return data


@dataclass
class Service:
    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    metadata: list[tuple[str, Any]] = field(default_factory=list)

    async def echo(self, stream: Stream[bytes, bytes]) -> None:
        request = await stream.recv_message()
        assert request is not None
        self.metadata = list(stream.metadata.items()) if stream.metadata else []
        md = dict(self.metadata)
        if "x-key" in md or "x-key-bin" in md:
            await stream.send_initial_metadata(
                metadata={"x-echo": md.get("x-key", ""), "x-echo-bin": md.get("x-key-bin", b"")}
            )
        if request.startswith(b"fail"):
            raise GRPCError(Status.FAILED_PRECONDITION, "no: " + request[4:].decode())
        await stream.send_message(request[::-1])
        await stream.send_trailing_metadata(metadata={"x-digest-bin": _digest(request)})

    async def block(self, stream: Stream[bytes, bytes]) -> None:
        await stream.recv_message()
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    def __mapping__(self) -> dict[str, Handler]:
        return {
            "/test.Lean/Echo": Handler(self.echo, Cardinality.UNARY_UNARY, bytes, bytes),
            "/test.Lean/Block": Handler(self.block, Cardinality.UNARY_UNARY, bytes, bytes),
        }


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass
class Served:
    service: Service
    server: GracefulServer
    channel: grpc.aio.Channel

    def method(self, name: str) -> Any:
        return self.channel.unary_unary(f"/test.Lean/{name}")


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    service = Service()
    server = GracefulServer([service], codec=RawCodec(), lean_http2=True)
    await server.start("127.0.0.1", 0)
    port = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}",
        options=[
            ("grpc.max_receive_message_length", LIMIT),
            ("grpc.max_send_message_length", LIMIT),
        ],
    )
    try:
        yield Served(service, server, channel)
    finally:
        await channel.close()
        server.close()
        await asyncio.wait_for(server.wait_closed(), WAIT_S)


def _lean_connections(server: GracefulServer) -> list[LeanH2Connection]:
    return [
        protocol.connection._connection
        for protocol in list(server._protocols)
        if getattr(protocol, "connection", None) is not None
        and isinstance(protocol.connection._connection, LeanH2Connection)
    ]


async def test_3mb_request_and_response(served: Served) -> None:
    request = bytes(range(256)) * (MB3 // 256)
    call = served.method("Echo")(request, timeout=WAIT_S)
    reply = await call
    assert reply == request[::-1]
    trailing = await call.trailing_metadata()
    assert dict(trailing)["x-digest-bin"] == _digest(request)
    assert await call.code() == grpc.StatusCode.OK
    # the server really spoke through the lean connection
    assert _lean_connections(served.server)


async def test_200_concurrent_calls(served: Served) -> None:
    echo = served.method("Echo")
    requests = [f"call {i} ".encode() * (1 + i % 50) for i in range(200)]
    replies = await asyncio.wait_for(
        asyncio.gather(*(echo(r, timeout=WAIT_S) for r in requests)), WAIT_S * 2
    )
    assert replies == [r[::-1] for r in requests]
    (lean,) = _lean_connections(served.server)  # one connection, many streams
    assert lean.highest_inbound_stream_id >= 2 * 200 - 1
    assert lean.streams == {}


async def test_metadata_with_a_binary_key(served: Served) -> None:
    binary = b"\x00\x01\xfe\xff" * 20
    call = served.method("Echo")(
        b"hello", metadata=(("x-key", "text value"), ("x-key-bin", binary)), timeout=WAIT_S
    )
    assert await call == b"olleh"
    initial = dict(await call.initial_metadata())
    assert initial["x-echo"] == "text value"
    assert initial["x-echo-bin"] == binary
    received = dict(served.service.metadata)
    assert received["x-key"] == "text value"
    assert received["x-key-bin"] == binary


async def test_error_status_and_message(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await served.method("Echo")(b"fail because", timeout=WAIT_S)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert raised.value.details() == "no:  because"


async def test_deadline_expires_while_the_handler_waits(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await served.method("Block")(b"x", timeout=0.5)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.wait_for(served.service.cancelled.wait(), WAIT_S)
    # the connection is still good
    assert await served.method("Echo")(b"after", timeout=WAIT_S) == b"retfa"


async def test_client_cancel_mid_call(served: Served) -> None:
    call = served.method("Block")(b"x", timeout=WAIT_S * 4)
    await asyncio.wait_for(served.service.started.wait(), WAIT_S)
    assert call.cancel()
    await asyncio.wait_for(served.service.cancelled.wait(), WAIT_S)
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await served.method("Echo")(b"after", timeout=WAIT_S) == b"retfa"
    (lean,) = _lean_connections(served.server)
    assert lean.streams == {}


# -- the other way round: grpclib's client over the lean connection, grpcio's server ---


@pytest.fixture
async def grpcio_server() -> AsyncIterator[tuple[int, asyncio.Event]]:
    cancelled = asyncio.Event()

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        md = dict(context.invocation_metadata() or ())
        if "x-key-bin" in md:
            await context.send_initial_metadata((("x-echo-bin", md["x-key-bin"]),))
        return request[::-1]

    async def block(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return b""

    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", LIMIT),
            ("grpc.max_send_message_length", LIMIT),
        ]
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Lean",
                {
                    "Echo": grpc.unary_unary_rpc_method_handler(echo),
                    "Block": grpc.unary_unary_rpc_method_handler(block),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port, cancelled
    finally:
        await server.stop(None)


async def test_lean_grpclib_client_against_grpcio_server(
    grpcio_server: tuple[int, asyncio.Event],
) -> None:
    port, cancelled = grpcio_server
    channel = CoalescingChannel("127.0.0.1", port, codec=RawCodec(), lean=True)
    try:
        echo = UnaryUnaryMethod[bytes, bytes](channel, "/test.Lean/Echo", bytes, bytes)
        block = UnaryUnaryMethod[bytes, bytes](channel, "/test.Lean/Block", bytes, bytes)
        # 3 MB each way
        request = bytes(range(256)) * (MB3 // 256)
        assert await echo(request, timeout=WAIT_S) == request[::-1]
        protocol = channel._protocol
        assert protocol is not None
        assert isinstance(protocol.connection._connection, LeanH2Connection)
        # 200 concurrent calls on one connection
        requests = [f"call {i} ".encode() * (1 + i % 50) for i in range(200)]
        replies = await asyncio.wait_for(
            asyncio.gather(*(echo(r, timeout=WAIT_S) for r in requests)), WAIT_S * 2
        )
        assert replies == [r[::-1] for r in requests]
        # binary metadata
        binary = b"\x00\x01\xfe\xff" * 20
        async with echo.open(metadata={"x-key-bin": binary}, timeout=WAIT_S) as stream:
            await stream.send_message(b"abc", end=True)
            await stream.recv_initial_metadata()
            assert stream.initial_metadata is not None
            assert stream.initial_metadata["x-echo-bin"] == binary
            assert await stream.recv_message() == b"cba"
        # a deadline: grpclib's client gives up, grpcio's server cancels the handler
        with pytest.raises((GRPCError, asyncio.TimeoutError)) as raised:
            await block(b"x", timeout=0.5)
        if isinstance(raised.value, GRPCError):
            assert raised.value.status == Status.DEADLINE_EXCEEDED
        await asyncio.wait_for(cancelled.wait(), WAIT_S)
        assert await echo(b"after", timeout=WAIT_S) == b"retfa"
    finally:
        channel.close()


async def test_a_channel_moves_to_a_new_connection_before_stream_ids_run_out(
    served: Served,
) -> None:
    """A client connection nearing the last stream id (2**31-1; a billion calls) retires:
    grpclib's channel opens the next calls on a new connection, the old one closes once
    its last call is answered, and no call fails."""
    from shardline.node.sdk import http2

    port = served.server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    channel = CoalescingChannel("127.0.0.1", port, codec=RawCodec(), lean=True)
    try:
        echo = UnaryUnaryMethod[bytes, bytes](channel, "/test.Lean/Echo", bytes, bytes)
        assert await echo(b"first", timeout=WAIT_S) == b"tsrif"
        old = channel._protocol
        assert old is not None
        lean = old.connection._connection
        assert isinstance(lean, LeanH2Connection)
        lost = asyncio.Event()
        original = old.connection_lost

        def on_lost(exc: BaseException | None) -> None:
            original(exc)
            lost.set()

        old.connection_lost = on_lost  # type: ignore[method-assign]
        near = http2.MAX_STREAM_ID - http2.RETIRE_MARGIN - 20  # (odd, like client ids)
        lean._next_stream_id = near
        lean.highest_outbound_stream_id = near - 2
        replies = await asyncio.wait_for(
            asyncio.gather(*(echo(f"{i}".encode(), timeout=WAIT_S) for i in range(40))),
            WAIT_S * 2,
        )
        assert replies == [f"{i}".encode()[::-1] for i in range(40)]
        assert lean.retiring
        new = channel._protocol
        assert new is not None and new is not old
        assert await echo(b"later", timeout=WAIT_S) == b"retal"
        await asyncio.wait_for(lost.wait(), WAIT_S)  # the old connection closed
        assert old.handler.connection_lost
    finally:
        channel.close()
