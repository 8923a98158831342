"""One socket write per turn of the event loop for grpclib's HTTP/2 connections.

grpclib hands each HTTP/2 frame to the transport as soon as h2 produces it: a unary answer
is at least three writes (HEADERS, DATA, trailing HEADERS), each a ``send`` system call on
a TCP socket. ``CoalescingTransport`` sits between grpclib's protocol and the socket: the
writes made during one turn of the event loop are joined and sent once, at the end of that
turn (``loop.call_soon``), so a unary answer — and the answers of every stream that
finished in the same turn — leave in one ``send``. Nothing waits on a timer: the flush runs
as soon as the code that wrote has yielded to the loop.

``CoalescingH2Protocol`` is grpclib's ``H2Protocol`` over such a transport: the node's
gRPC server uses it (``serving.graceful_server.GracefulServer``), and so do
``CoalescingChannel``, grpclib's client channel over it, which the SDK's clients and a
node's peer pool call through (a unary request's HEADERS and DATA: one write).
Back-pressure is unchanged: the socket's ``pause_writing``/``resume_writing`` reach the
protocol as before, and at most one turn's frames are ever held here.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from grpclib.client import Channel, Handler
from grpclib.protocol import Connection, EventsProcessor, H2Protocol, _set_nodelay
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.settings import SettingCodes

from shardline.node.sdk.http2 import LeanH2Connection


class CoalescingTransport(asyncio.Transport):
    """A transport whose writes within one turn of the loop go out as one."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pending = self._pending
        if pending is None:
            self._pending = [bytes(data)]
            self._loop.call_soon(self.flush)
        else:
            pending.append(bytes(data))

    def flush(self) -> None:
        """Send what this turn wrote (also called before closing)."""
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        pending = sum(len(d) for d in self._pending) if self._pending else 0
        return self._transport.get_write_buffer_size() + pending

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()


class CoalescingH2Protocol(H2Protocol):
    """grpclib's HTTP/2 protocol writing through a ``CoalescingTransport`` (``coalesce``)
    and speaking HTTP/2 through ``http2.LeanH2Connection`` instead of h2 (``lean``)."""

    def __init__(
        self,
        handler: Any,
        config: Any,
        h2_config: H2Configuration,
        *,
        coalesce: bool = True,
        lean: bool = True,
    ) -> None:
        super().__init__(handler, config, h2_config)
        self.coalesce = coalesce
        self.lean = lean

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses; they quack alike.)
        stream = cast(asyncio.Transport, transport)
        if self.coalesce:
            stream = CoalescingTransport(stream, asyncio.get_running_loop())
        if not self.lean:
            super().connection_made(stream)
            return
        # grpclib's H2Protocol.connection_made with the lean connection in h2's place
        sock = transport.get_extra_info("socket")
        if sock is not None:
            _set_nodelay(sock)
        h2_conn = LeanH2Connection(client_side=self.h2_config.client_side)
        if self.h2_config.client_side:  # near the last stream id: calls move to a new
            h2_conn.on_retire = self._retire  # connection, this one closes when done
            h2_conn.on_retired = self._retired
        h2_conn.initiate_connection()
        initial = h2_conn.local_settings.initial_window_size
        conn_delta = self.config.http2_connection_window_size - initial
        stream_delta = self.config.http2_stream_window_size - initial
        if conn_delta:
            h2_conn.increment_flow_control_window(conn_delta)
        if stream_delta:
            h2_conn.update_settings(
                {SettingCodes.INITIAL_WINDOW_SIZE: self.config.http2_stream_window_size}
            )
        self.connection = Connection(cast(H2Connection, h2_conn), stream, config=self.config)
        self.connection.flush()
        self.connection.initialize()
        self.processor = EventsProcessor(self.handler, self.connection)

    def _retire(self) -> None:
        # grpclib's Channel connects anew for the next call once its handler says lost
        self.handler.connection_lost = True  # type: ignore[attr-defined]

    def _retired(self) -> None:
        asyncio.get_running_loop().call_soon(self.connection.close)


class CoalescingChannel(Channel):
    """grpclib's client channel over ``CoalescingH2Protocol`` (``lean``: h2 or not)."""

    def __init__(self, *args: Any, lean: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lean = lean

    def _protocol_factory(self) -> H2Protocol:
        return CoalescingH2Protocol(Handler(), self._config, self._h2_config, lean=self._lean)


__all__ = ["CoalescingChannel", "CoalescingH2Protocol", "CoalescingTransport"]
