"""The peer link: node-to-node forwards without HTTP/2, on the node's own port.

A forward between two nodes is internal; paying a pure-Python HTTP/2 exchange on both ends
(grpclib + h2 + hpack) costs more CPU than the prediction it carries. The peer link is a
length-prefixed, multiplexed protocol over one persistent TCP (+ TLS) connection per peer:

    client -> server   MAGIC                      once, when the connection opens
    server -> client   MAGIC_OK, or a refusal     ``NO <STATUS_NAME> <message>\\n``, then close
    then frames both ways:  length (u32) | type (u8) | stream id (u32) | payload (length bytes)

    REQUEST  client -> server   deadline (f64, seconds left) + ``ForwardRequest`` bytes
    RESPONSE server -> client   the owner's encoded answer, untouched
    ERROR    server -> client   gRPC status code (u8) + a bounded UTF-8 message
    CANCEL   client -> server   (empty) the caller gave up: the server cancels the work

It shares the gRPC port: ``GracefulServer`` hands each new connection to a ``Sniffer``,
which reads the first bytes; ``MAGIC`` makes it a peer link (``LinkConnection``), anything
else (an HTTP/2 preface) goes on to grpclib's protocol with the bytes replayed. Under TLS the
transport hands decrypted bytes, so it sniffs the same way.

The same semantics as ``Peer.Forward`` over gRPC:

- deadline: the caller sends the time it has left; the owner serves within it
  (``DEADLINE_EXCEEDED`` after);
- cancellation: CANCEL, or the connection closing, cancels the work on the owner;
- backpressure: at most ``MAX_STREAMS`` requests in flight per connection (beyond:
  RESOURCE_EXHAUSTED), and a connection whose peer does not read its answers is not read
  from (``pause_writing`` pauses reading) until the answers drain;
- drain: requests run inside the node's ``InFlight`` (counted; UNAVAILABLE once the node
  has closed its doors, which a router retries on the next owner);
- mutual TLS: with TLS on, a peer link needs a client certificate the handshake verified
  against the cluster CA, as ``Peer.Forward`` does.

A frame above the limit, of an unknown type, or otherwise malformed closes that
connection with one log line; nothing else is affected. The client side is
``shardline.node.cluster.peer_link``; the handler that serves a forward is injected
(``LinkServing.handler``), so this module knows nothing of the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, cast

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from shardline.node.sdk.coalesce import CoalescingTransport
from shardline.node.sdk.errors import RequestError, bounded

log = logging.getLogger("shardline.peer_link")

MAGIC = b"SHARDLINE-PEER/1\n"
MAGIC_OK = b"SHARDLINE-PEER/1 OK\n"
REFUSAL = b"SHARDLINE-PEER/1 NO "
MAX_HELLO_BYTES = 512  # the server's answer to MAGIC: one line, at most this long

HEADER = struct.Struct("!IBI")  # payload length, type, stream id
DEADLINE = struct.Struct("!d")
REQUEST, RESPONSE, ERROR, CANCEL = 1, 2, 3, 4
FRAME_NAMES = {REQUEST: "REQUEST", RESPONSE: "RESPONSE", ERROR: "ERROR", CANCEL: "CANCEL"}

MAX_STREAMS = 1024
"""Requests in flight on one peer-link connection; beyond, RESOURCE_EXHAUSTED."""
ENVELOPE_BYTES = 64 * 1024
"""What a REQUEST may carry above the node's message limit: the deadline and the
``ForwardRequest`` fields around the client's request bytes (model key, cell, node id)."""
FLUSH_AT = 64 * 1024
"""Bytes written in one turn past which they go to the socket at once (instead of at the
end of the turn), so that its ``pause_writing`` stops the next writer in time."""
SHUTTING_DOWN = "node is shutting down; retry on another node"

#: Serves one forward: (``ForwardRequest`` bytes, seconds left, ``perf_counter`` at arrival)
#: -> the encoded answer. Raises ``RequestError`` or ``GRPCError`` for an answer with a status.
ForwardHandler = Callable[[bytes, float, float], Awaitable[bytes]]


def frame(kind: int, stream_id: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(len(payload), kind, stream_id) + payload


def error_payload(status: Status, message: str) -> bytes:
    return bytes((status.value,)) + bounded(message).encode("utf-8", "replace")


class FrameError(Exception):
    """The peer broke the protocol: the connection closes."""


class FrameReader:
    """Splits a byte stream into frames, refusing any above ``max_payload`` bytes."""

    def __init__(self, max_payload: int) -> None:
        self.max_payload = max_payload
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        """The frames completed by ``data``: (type, stream id, payload); ``FrameError``."""
        buffer = self._buffer
        if buffer:
            buffer += data
            view: bytes | bytearray = buffer
        else:
            view = data
        out = []
        pos, end, size = 0, len(view), HEADER.size
        while end - pos >= size:
            length, kind, stream_id = HEADER.unpack_from(view, pos)
            if length > self.max_payload:
                raise FrameError(
                    f"a {FRAME_NAMES.get(kind, f'type-{kind}')} frame of {length} bytes "
                    f"exceeds the limit of {self.max_payload} bytes"
                )
            if end - pos - size < length:
                break
            start = pos + size
            out.append((kind, stream_id, bytes(view[start : start + length])))
            pos = start + length
        if buffer:
            del buffer[:pos]
        elif pos < end:
            buffer += view[pos:]
        return out


class LinkServing:
    """The node's peer-link settings, shared by its connections.

    ``handler`` serves a forward (None: this node takes no forwards, e.g. a standalone node;
    a peer link is then refused); ``in_flight`` is the node's ``InFlight``;
    ``require_client_cert``: with TLS on, a link needs a verified client certificate."""

    def __init__(
        self,
        in_flight: Any,
        max_message_bytes: int,
        *,
        require_client_cert: bool,
        handler: ForwardHandler | None = None,
        max_streams: int = MAX_STREAMS,
    ) -> None:
        self.in_flight = in_flight
        self.max_payload = DEADLINE.size + max_message_bytes + ENVELOPE_BYTES
        self.require_client_cert = require_client_cert
        self.handler = handler
        self.max_streams = max_streams
        self.requests = 0
        """Requests taken over peer links since start (``collector``: a metric)."""

    def collector(self) -> Collector:
        """``shardline_peer_link_requests_total``: forwards this node took over the link."""
        return _Requests(self)


class _Requests(Collector):
    def __init__(self, serving: LinkServing) -> None:
        self.serving = serving

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "shardline_peer_link_requests",
            "Forwarded requests this node took over the peer link (not over gRPC).",
            value=self.serving.requests,
        )


def _peer_name(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "?"


class LinkConnection(asyncio.Protocol):
    """The server side of one peer-link connection (after the sniffer saw ``MAGIC``).

    Also looks like a grpclib server handler (``close``, ``wait_closed``, ``closing``,
    ``check_closed``), so that ``Server.close`` cancels its requests and ``wait_closed``
    waits for them like grpclib's own."""

    closing = False

    def __init__(self, serving: LinkServing, transport: asyncio.Transport) -> None:
        self.serving = serving
        self.loop = asyncio.get_running_loop()
        self.raw = transport
        self.transport = CoalescingTransport(transport, self.loop)
        self.reader = FrameReader(serving.max_payload)
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self._cancelled: set[asyncio.Task[None]] = set()
        self.peer = _peer_name(transport)
        self.writable = asyncio.Event()
        self.writable.set()

    def start(self, rest: bytes) -> None:
        """Answer the hello (or refuse the link), then take the bytes after ``MAGIC``."""
        serving = self.serving
        refusal: tuple[Status, str] | None = None
        if serving.handler is None:
            refusal = (Status.UNIMPLEMENTED, "this node takes no forwarded requests")
        elif serving.require_client_cert and not self.raw.get_extra_info("peercert"):
            refusal = (
                Status.PERMISSION_DENIED,
                "a peer link needs a client certificate signed by the cluster CA (mutual TLS)",
            )
        if refusal is not None:
            status, message = refusal
            log.warning("peer link from %s refused: %s", self.peer, message)
            line = REFUSAL + f"{status.name} {message}\n".encode()
            self.transport.write(line)
            self.close_connection()
            return
        self.transport.write(MAGIC_OK)
        if rest:
            self.data_received(rest)

    def close_connection(self) -> None:
        self.closing = True
        self.writable.set()  # wake the answers waiting for a drain: they see ``closing``
        self.transport.close()

    def _broken(self, why: str) -> None:
        log.warning("peer link from %s closed: %s", self.peer, why)
        self.close_connection()
        self.close()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            frames = self.reader.feed(data)
        except FrameError as exc:
            self._broken(str(exc))
            return
        for kind, stream_id, payload in frames:
            if kind == REQUEST:
                self._request(stream_id, payload)
            elif kind == CANCEL:
                task = self.tasks.pop(stream_id, None)
                if task is not None:
                    task.cancel()
                    self._cancelled.add(task)
            else:
                name = FRAME_NAMES.get(kind, f"unknown type {kind}")
                self._broken(f"a {name} frame, which a client may not send")
            if self.closing:
                return

    def _request(self, stream_id: int, payload: bytes) -> None:
        serving = self.serving
        if stream_id in self.tasks:
            self._broken(f"stream {stream_id} opened twice")
            return
        if len(payload) < DEADLINE.size:
            self._broken(f"a REQUEST frame of {len(payload)} bytes carries no deadline")
            return
        (remaining,) = DEADLINE.unpack_from(payload)
        if not math.isfinite(remaining):
            self._broken(f"a REQUEST frame with deadline {remaining!r}")
            return
        if len(self.tasks) >= serving.max_streams:
            self._error(
                stream_id,
                Status.RESOURCE_EXHAUSTED,
                f"{serving.max_streams} forwarded requests already in flight on this "
                "connection; retry on another owner",
            )
            return
        if serving.in_flight.draining:
            self._error(stream_id, Status.UNAVAILABLE, SHUTTING_DOWN)
            return
        serving.requests += 1
        started = time.perf_counter()
        body = payload[DEADLINE.size :]
        self.tasks[stream_id] = self.loop.create_task(
            self._serve(stream_id, body, remaining, started)
        )

    async def _serve(self, stream_id: int, body: bytes, remaining: float, started: float) -> None:
        serving = self.serving
        handler = serving.handler
        assert handler is not None
        try:
            if remaining <= 0:
                raise GRPCError(Status.DEADLINE_EXCEEDED, "no time left for the forward")
            async with asyncio.timeout(remaining):
                answer = await serving.in_flight.run(handler(body, remaining, started))
        except TimeoutError:
            self._error(stream_id, Status.DEADLINE_EXCEEDED, f"no answer within {remaining:.3f}s")
        except RequestError as exc:
            self._error(stream_id, exc.status, exc.message)
        except GRPCError as exc:
            self._error(stream_id, exc.status, exc.message or "")
        except asyncio.CancelledError:
            raise  # CANCEL, the connection gone, or the server closing: nobody to answer
        except Exception:
            ref = uuid.uuid4().hex[:12]
            log.exception("Forward (peer link) failed (ref %s)", ref)
            self._error(
                stream_id, Status.INTERNAL, f"internal error in Forward (node log ref {ref})"
            )
        else:
            # A peer that does not read its answers: wait (holding the stream's slot) rather
            # than buffer answers without bound.
            while not self.writable.is_set():
                await self.writable.wait()
            if self.tasks.get(stream_id) is not None and not self.closing:
                self.write(frame(RESPONSE, stream_id, answer))
        finally:
            self.tasks.pop(stream_id, None)

    def _error(self, stream_id: int, status: Status, message: str) -> None:
        if not self.closing:
            self.write(frame(ERROR, stream_id, error_payload(status, message)))

    def write(self, data: bytes) -> None:
        transport = self.transport
        transport.write(data)
        if transport.get_write_buffer_size() > FLUSH_AT:
            transport.flush()  # now: a full socket buffer pauses the next writer

    # -- backpressure: a peer that does not read its answers is not read from ---------------

    def pause_writing(self) -> None:
        self.writable.clear()
        with contextlib.suppress(Exception):
            self.raw.pause_reading()

    def resume_writing(self) -> None:
        self.writable.set()
        with contextlib.suppress(Exception):
            self.raw.resume_reading()

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.writable.set()
        self.close()

    # -- grpclib's handler interface (Server.close / wait_closed / its GC) -------------------

    def close(self) -> None:
        """Cancel every request in flight on this connection."""
        for task in self.tasks.values():
            task.cancel()
            self._cancelled.add(task)
        self.tasks.clear()

    async def wait_closed(self) -> None:
        if self._cancelled:
            await asyncio.wait(self._cancelled)

    def check_closed(self) -> bool:
        self._cancelled = {t for t in self._cancelled if not t.done()}
        return not self.tasks and not self._cancelled


class Sniffer(asyncio.Protocol):
    """The protocol of every new connection on the node's port until its first bytes tell
    what it is: ``MAGIC``, a peer link (``on_link`` makes its ``LinkConnection``); anything
    else, HTTP/2 for grpclib (``h2``, given the bytes read so far)."""

    def __init__(
        self,
        h2: asyncio.Protocol,
        on_link: Callable[[asyncio.Transport], LinkConnection | None],
        discard_h2: Callable[[], None],
    ) -> None:
        self.h2 = h2
        self.on_link = on_link
        self.discard_h2 = discard_h2
        """Called when the connection turns out not to be HTTP/2 (or ends first)."""
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.chosen: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.chosen is not None:  # the transport could not switch protocols: relay
            self.chosen.data_received(data)
            return
        buffer = self.buffer + data
        n = min(len(buffer), len(MAGIC))
        if buffer[:n] != MAGIC[:n]:
            self._choose(self.h2, buffer)
        elif len(buffer) >= len(MAGIC):
            assert self.transport is not None
            self.discard_h2()
            link = self.on_link(self.transport)
            if link is None:
                self.transport.close()
                return
            self._switch(link)
            link.start(buffer[len(MAGIC) :])
        else:
            self.buffer = buffer

    def _switch(self, protocol: asyncio.Protocol) -> None:
        assert self.transport is not None
        self.buffer = b""
        try:
            self.transport.set_protocol(protocol)
        except (NotImplementedError, AttributeError):  # pragma: no cover - every loop has it
            self.chosen = protocol

    def _choose(self, h2: asyncio.Protocol, replay: bytes) -> None:
        assert self.transport is not None
        self._switch(h2)
        h2.connection_made(self.transport)
        h2.data_received(replay)

    def eof_received(self) -> bool | None:
        if self.chosen is not None:
            return self.chosen.eof_received()
        return None

    def pause_writing(self) -> None:
        if self.chosen is not None:
            self.chosen.pause_writing()

    def resume_writing(self) -> None:
        if self.chosen is not None:
            self.chosen.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.chosen is not None:
            self.chosen.connection_lost(exc)
        else:  # closed before its first bytes told what it was
            self.discard_h2()


__all__ = [
    "CANCEL",
    "ERROR",
    "MAGIC",
    "MAGIC_OK",
    "REFUSAL",
    "REQUEST",
    "RESPONSE",
    "ForwardHandler",
    "FrameError",
    "FrameReader",
    "LinkConnection",
    "LinkServing",
    "Sniffer",
    "error_payload",
    "frame",
]
