"""The client side of the peer link (``shardline.node.serving.peer_link`` has the protocol).

``PeerLink`` keeps one persistent connection to one peer address (TCP, or TLS with this
node's certificate: mutual TLS) and multiplexes forwards over it: each ``call`` is a REQUEST
frame with the time left, answered by a RESPONSE (the owner's answer bytes, untouched) or an
ERROR (a gRPC status and a bounded message, raised as ``LinkFailure``).

- A caller that gives up (its deadline, or its task cancelled) sends CANCEL; the owner
  cancels the work.
- A connection that drops fails every call pending on it with ``LinkFailure("CONNECTION")``
  (the router tries the next owner); the next call opens a new connection.
- Writing waits while the socket's buffer is above its high-water mark
  (``pause_writing``/``resume_writing``): nothing is buffered without bound.
- A peer that answers the hello with something else than the link's (an older node: its
  HTTP/2 server sends its SETTINGS first) raises ``LinkUnsupported`` so the caller can use
  ``Peer.Forward`` over gRPC.

``forward_handler`` is the server side's handler for a cluster node: it parses the
``ForwardRequest`` and hands it to ``ClusterRouter.serve_forward``, as ``Peer.Forward`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl as ssl_module
from typing import Any, cast

from google.protobuf.message import DecodeError
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from shardline.node._proto.shardline.v1 import peer_pb2
from shardline.node.sdk.coalesce import CoalescingTransport
from shardline.node.sdk.errors import bounded
from shardline.node.serving.peer_link import (
    CANCEL,
    DEADLINE,
    ERROR,
    FLUSH_AT,
    HEADER,
    MAGIC,
    MAGIC_OK,
    MAX_HELLO_BYTES,
    REFUSAL,
    REQUEST,
    RESPONSE,
    ForwardHandler,
    FrameError,
    FrameReader,
    frame,
)

log = logging.getLogger("shardline.peer_link")

MAX_ANSWER_BYTES = 256 * 1024 * 1024
"""The largest answer a peer link takes from a peer (a length above it is a broken peer:
the connection closes and the calls on it fail with CONNECTION)."""
CONNECT_TIMEOUT_S = 5.0
"""Longest wait to open a link (TCP, TLS, the hello); a call waits at most its own deadline."""


class LinkFailure(Exception):
    """A call failed: ``status`` is a gRPC status name, or CONNECTION when no answer came."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class LinkUnsupported(Exception):
    """The peer did not answer the link's hello: it speaks only gRPC (or is not a node)."""


class _Client(asyncio.Protocol):
    """One client connection: the hello, then frames."""

    def __init__(self, max_payload: int, where: str) -> None:
        self.loop = asyncio.get_running_loop()
        self.where = where
        self.hello: asyncio.Future[None] = self.loop.create_future()
        self.pending: dict[int, asyncio.Future[bytes]] = {}
        self.reader = FrameReader(max_payload)
        self.greeting = b""
        self.greeted = False
        self.closed = False
        self.reason = "not connected"
        self.writable = asyncio.Event()
        self.writable.set()
        self.transport: CoalescingTransport | None = None
        self._next_id = 0

    # -- asyncio protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw = cast(asyncio.Transport, transport)
        sock = raw.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport = CoalescingTransport(raw, self.loop)
        self.transport.write(MAGIC)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if not self.greeted:
            data = self._greet(data)
            if not data:
                return
        try:
            frames = self.reader.feed(data)
        except FrameError as exc:
            self._broken(str(exc))
            return
        for kind, stream_id, payload in frames:
            if kind == RESPONSE:
                future = self.pending.pop(stream_id, None)
                if future is not None and not future.done():
                    future.set_result(payload)
            elif kind == ERROR and payload:
                try:
                    status = Status(payload[0]).name
                except ValueError:
                    self._broken(f"an ERROR frame with status code {payload[0]}")
                    return
                future = self.pending.pop(stream_id, None)
                if future is not None and not future.done():
                    message = bounded(payload[1:].decode("utf-8", "replace"))
                    future.set_exception(LinkFailure(status, message))
            else:
                self._broken(f"a frame of type {kind} ({len(payload)} bytes), not an answer")
                return

    def _greet(self, data: bytes) -> bytes:
        """Read the server's answer to the hello; the bytes after it (frames), if any."""
        greeting = self.greeting + data
        line, newline, rest = greeting.partition(b"\n")
        if not newline:
            possible = MAGIC_OK.startswith(greeting) or greeting.startswith(REFUSAL)
            possible = possible or REFUSAL.startswith(greeting)
            if possible and len(greeting) <= MAX_HELLO_BYTES:
                self.greeting = greeting
                return b""
            self._unsupported(greeting)
            return b""
        if line + newline == MAGIC_OK:
            self.greeted = True
            self.greeting = b""
            if not self.hello.done():
                self.hello.set_result(None)
            return rest
        if line.startswith(REFUSAL):
            status, _, message = line[len(REFUSAL) :].decode("utf-8", "replace").partition(" ")
            if status not in Status.__members__:
                status = "UNAVAILABLE"
            if not self.hello.done():
                self.hello.set_exception(LinkFailure(status, bounded(message)))
            self._close(f"refused: {status} {bounded(message)}")
            return b""
        self._unsupported(greeting)
        return b""

    def _unsupported(self, greeting: bytes) -> None:
        if not self.hello.done():
            self.hello.set_exception(
                LinkUnsupported(f"{self.where} answered the peer link with {greeting[:32]!r}")
            )
        self._close("the peer does not speak the peer link")

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        why = f"connection to {self.where} lost" + (f": {exc}" if exc else "")
        if not self.hello.done():
            # Closed without a word (reset, a TLS handshake the peer refused): no answer. A
            # node without the link says something first: grpclib's HTTP/2 SETTINGS.
            self.hello.set_exception(LinkFailure("CONNECTION", bounded(why)))
        self._fail_all(why)

    # -- calls -------------------------------------------------------------------------------

    def _broken(self, why: str) -> None:
        log.warning("peer link to %s closed: %s", self.where, why)
        self._close(why)

    def _close(self, why: str) -> None:
        self._fail_all(why)
        if self.transport is not None:
            self.transport.close()

    def _fail_all(self, why: str) -> None:
        if not self.closed:
            self.closed = True
            self.reason = why
        self.writable.set()  # wake the writers: they see ``closed``
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(LinkFailure("CONNECTION", bounded(why)))

    async def call(self, body: bytes, deadline: float) -> bytes:
        """One forward: ``body`` (``ForwardRequest`` bytes) with ``deadline`` (loop time)."""
        while not self.writable.is_set():  # the peer is not reading: wait for the drain
            await self.writable.wait()
        if self.closed or self.transport is None:
            raise LinkFailure("CONNECTION", bounded(self.reason))
        self._next_id = stream_id = (self._next_id + 1) & 0xFFFFFFFF
        future: asyncio.Future[bytes] = self.loop.create_future()
        self.pending[stream_id] = future
        remaining = deadline - self.loop.time()
        header = HEADER.pack(DEADLINE.size + len(body), REQUEST, stream_id)
        transport = self.transport
        transport.write(b"".join((header, DEADLINE.pack(remaining), body)))
        if transport.get_write_buffer_size() > FLUSH_AT:
            transport.flush()  # now: a full socket buffer pauses the next caller
        try:
            return await future
        except BaseException:
            # Gave up (deadline, cancelled): tell the owner, which cancels the work.
            if self.pending.pop(stream_id, None) is not None and not self.closed:
                self.transport.write(frame(CANCEL, stream_id))
            raise

    def close(self) -> None:
        self._close("closed by this node")


class PeerLink:
    """One peer address: a persistent link, opened on first use and again after a drop."""

    def __init__(
        self,
        host: str,
        port: int,
        ssl: ssl_module.SSLContext | None,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self.host, self.port, self.ssl = host, port, ssl
        self.max_answer_bytes = max_answer_bytes
        self._client: _Client | None = None
        self._connecting: asyncio.Task[_Client] | None = None
        self._closed = False
        self.connections = 0
        """Connections opened so far (tests: a reconnect after a drop)."""

    async def _connect(self) -> _Client:
        loop = asyncio.get_running_loop()
        where = f"{self.host}:{self.port}"
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                _, client = await loop.create_connection(
                    lambda: self._opened(_Client(self.max_answer_bytes, where)),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                )
                try:
                    await client.hello
                except BaseException:
                    client.close()
                    raise
        except TimeoutError:
            raise LinkFailure(
                "CONNECTION", f"no peer link to {where} within {CONNECT_TIMEOUT_S:g}s"
            ) from None
        finally:
            self._connecting = None
        if self._closed:  # the peer left the view meanwhile
            client.close()
            raise LinkFailure("CONNECTION", f"{where} left the view")
        self.connections += 1
        return client

    def _opened(self, client: _Client) -> _Client:
        self._client = client  # ``close`` closes it even before the hello
        return client

    async def _ready(self) -> _Client:
        if self._closed:
            raise LinkFailure("CONNECTION", f"{self.host}:{self.port} left the view")
        client = self._client
        if client is not None and client.greeted and not client.closed:
            return client
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
            # Its failure reaches every waiter; when none is left, it is read here.
            self._connecting.add_done_callback(_retrieve)
        # Shielded: one caller giving up does not abort the connect the others wait for.
        return await asyncio.shield(self._connecting)

    async def call(self, body: bytes, deadline: float) -> bytes:
        client = await self._ready()
        return await client.call(body, deadline)

    def close(self) -> None:
        """Close the link: the calls on it fail with CONNECTION (never ``CancelledError``:
        a connect in progress is left to finish, and its connection closed then)."""
        self._closed = True
        if self._client is not None:
            self._client.close()
            self._client = None


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def forward_handler(router: Any) -> ForwardHandler:
    """The peer link's handler on a cluster node: what ``Peer.Forward`` does with a forward
    (``ClusterRouter.serve_forward``), from the ``ForwardRequest`` bytes."""

    async def serve(body: bytes, remaining_s: float, started: float) -> bytes:
        message = peer_pb2.ForwardRequest()
        try:
            message.ParseFromString(body)
        except DecodeError:
            raise GRPCError(Status.INVALID_ARGUMENT, "not a ForwardRequest") from None
        answer: bytes = await router.serve_forward(message, remaining_s, started)
        return answer

    return serve


__all__ = [
    "MAX_ANSWER_BYTES",
    "LinkFailure",
    "LinkUnsupported",
    "PeerLink",
    "forward_handler",
]
