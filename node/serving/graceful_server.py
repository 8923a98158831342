"""What grpclib's server lacks for leaving gracefully: GOAWAY to every client, and a
count of the calls in flight.

``GracefulServer`` keeps its connections so that ``goaway`` can tell every client to open
new streams elsewhere while the streams it already sent are answered here (the standard
two GOAWAYs, a PING round trip apart). With ``peer_link`` set it also serves the peer link
(``shardline.node.serving.peer_link``) on the same port: each new connection is sniffed,
and one that opens with the link's magic is a peer link, any other is grpclib's HTTP/2.
``InFlight`` wraps every handler: it counts the
calls in flight (a gauge), lets a shutdown wait until none is left, and refuses new ones
with UNAVAILABLE once the node has closed its doors. ``shardline.node.serving.server.NodeServer``
uses both.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.protocol import H2Protocol
from grpclib.server import Server, Stream
from hyperframe.frame import GoAwayFrame
from prometheus_client import Gauge

from shardline.node.sdk.coalesce import CoalescingH2Protocol
from shardline.node.sdk.errors import Unavailable
from shardline.node.serving.peer_link import LinkConnection, LinkServing, Sniffer

log = logging.getLogger("shardline.server")

SHUTTING_DOWN = "node is shutting down; retry on another node"
T = TypeVar("T")
PING_ACK_TIMEOUT_S = 1.0  # longest wait for a client's PING ack between the two GOAWAYs


class InFlight:
    """Counts requests in flight; refuses new ones once the node has closed its doors."""

    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge
        self.count = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def wrap(self, handler: Callable[[Stream[Any, Any]], Awaitable[None]]) -> Any:
        async def guarded(stream: Stream[Any, Any]) -> None:
            if self.draining:
                raise GRPCError(Status.UNAVAILABLE, SHUTTING_DOWN)
            await self.run(handler(stream))

        return guarded

    async def run(self, call: Awaitable[T]) -> T:
        """Await ``call`` counted in flight (a request that came another way than gRPC: the
        REST binding's); ``Unavailable`` once the node has closed its doors."""
        if self.draining:
            close = getattr(call, "close", None)
            if close is not None:
                close()  # never awaited: no "coroutine was never awaited" warning
            raise Unavailable(SHUTTING_DOWN)
        self.count += 1
        self.gauge.inc()
        self._idle.clear()
        try:
            return await call
        finally:
            self.count -= 1
            self.gauge.dec()
            if self.count == 0:
                self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


class GracefulServer(Server):
    """grpclib's server, plus what grpclib lacks for leaving gracefully: it keeps its
    connections so that ``goaway`` can tell every client to open new streams elsewhere
    while the streams it already sent are answered here."""

    def __init__(
        self,
        *args: Any,
        coalesce_writes: bool = True,
        lean_http2: bool = True,
        peer_link: LinkServing | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._protocols: weakref.WeakSet[H2Protocol] = weakref.WeakSet()
        self._links: weakref.WeakSet[LinkConnection] = weakref.WeakSet()
        self.coalesce_writes = coalesce_writes
        """Send the frames of one turn of the loop in one write (``coalesce``)."""
        self.lean_http2 = lean_http2
        """Speak HTTP/2 through ``sdk.http2.LeanH2Connection`` (False: h2's)."""
        self.peer_link = peer_link
        """Serve the peer link on this port too (None: HTTP/2 only)."""

    def _h2_factory(self) -> H2Protocol:
        protocol = super()._protocol_factory()
        if self.coalesce_writes or self.lean_http2:
            protocol = CoalescingH2Protocol(
                protocol.handler,
                protocol.config,
                protocol.h2_config,
                coalesce=self.coalesce_writes,
                lean=self.lean_http2,
            )
        self._protocols.add(protocol)
        return protocol

    def _protocol_factory(self) -> Any:
        h2 = self._h2_factory()
        if self.peer_link is None:
            return h2
        return Sniffer(h2, self._link, h2.handler.close)

    def _link(self, transport: asyncio.Transport) -> LinkConnection | None:
        """A peer link on ``transport`` (the sniffer saw its magic); counted among grpclib's
        handlers so that ``close`` cancels its requests and ``wait_closed`` waits for them."""
        serving = self.peer_link
        if serving is None or self._server_closed_fut is None or self._server_closed_fut.done():
            return None
        link = LinkConnection(serving, transport)
        self._handlers.add(link)  # type: ignore[arg-type]
        self._links.add(link)
        return link

    def _open(self) -> list[Any]:
        """The grpclib connections still open."""
        out = []
        for protocol in list(self._protocols):
            connection = getattr(protocol, "connection", None)
            if connection is not None and not connection.is_closing():
                out.append(connection)
        return out

    @staticmethod
    def _send_goaway(connection: Any, last_stream_id: int) -> None:
        # Written beside h2's state machine, not through close_connection(): h2 refuses to
        # send anything after its own GOAWAY, and the streams in flight still need their
        # answers (RFC 9113 6.8: a GOAWAY only stops *new* streams).
        h2 = connection._connection
        frame = GoAwayFrame(stream_id=0, last_stream_id=last_stream_id, error_code=0)
        h2._data_to_send += frame.serialize()
        connection.flush()

    async def goaway(self) -> int:
        """Graceful GOAWAY on every open connection; returns how many got one.

        First GOAWAY with the largest stream id plus a PING; when the PING comes back (or
        after ``PING_ACK_TIMEOUT_S``) the client has seen the GOAWAY and opens no more
        streams here, and a second GOAWAY names the last stream this server will answer.
        """
        connections = self._open()
        acks: list[asyncio.Event] = []
        for connection in connections:
            acked = asyncio.Event()
            original = connection.ping_ack_process

            def on_ack(
                original: Callable[[], None] = original, acked: asyncio.Event = acked
            ) -> None:
                original()
                acked.set()

            connection.ping_ack_process = on_ack
            try:
                self._send_goaway(connection, 2**31 - 1)
                connection._connection.ping(b"shutdown")
                connection.flush()
            except Exception as exc:  # a connection that broke meanwhile needs no GOAWAY
                log.debug("GOAWAY not sent: %s", exc)
                acked.set()
            acks.append(acked)
        if acks:
            waits = [asyncio.ensure_future(a.wait()) for a in acks]
            _, pending = await asyncio.wait(waits, timeout=PING_ACK_TIMEOUT_S)
            for task in pending:
                task.cancel()
        for connection in self._open():
            try:
                self._send_goaway(connection, connection._connection.highest_inbound_stream_id)
            except Exception as exc:
                log.debug("final GOAWAY not sent: %s", exc)
        return len(connections)

    def close_connections(self) -> None:
        for connection in self._open():
            connection.close()
        for link in list(self._links):
            link.close_connection()
