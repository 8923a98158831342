"""A lean HTTP/2 connection for grpclib: the part of h2's ``H2Connection`` grpclib calls.

grpclib drives h2, a general, pure-Python HTTP/2 state machine: per frame it builds
hyperframe objects, runs a stream state machine through enum tables, validates and
normalises headers through generator pipelines and re-encodes every header with HPACK.
Under load that was about a quarter of a node's CPU per request (``bench.server_cost``'s
py-spy profile). ``LeanH2Connection`` speaks the same protocol with the same API and the
same events (h2's own event classes, which grpclib dispatches on) and does only what gRPC
over HTTP/2 needs, in straight-line code:

- frames are parsed in place from what the socket delivered (only a partial frame is kept
  for the next read; no frame objects) and written with ``struct``;
- streams are a small record each (two flags and four windows), removed as soon as both
  sides have ended or one reset; flow control is h2's (a WINDOW_UPDATE once half a window
  has been consumed, so a unary exchange over the default 4 MiB windows sends none);
- headers are decoded by hpack's ``Decoder`` (the dynamic table and Huffman coding a peer
  may use); a small header block (<= 512 bytes) that left the dynamic table untouched is
  kept (64 per connection) and not decoded again while the table stays as it was;
- headers are encoded without the dynamic table (static-table indexes where RFC 7541's
  table has the field, literals otherwise), so an encoding is a pure function of the field
  and short fields are cached: ``:status: 200``, ``content-type: application/grpc`` and
  ``grpc-status: 0`` cost a dictionary lookup. A peer that lowers its table size gets the
  size update RFC 7541 4.2 asks for (to 0) at the start of the next block.

What it refuses is what RFC 9113 calls a connection error (bad preface, a frame over
16 KiB, a frame on the wrong stream or of the wrong size, a flow-control violation, a broken
header block, a CONTINUATION out of place, a header block over 256 KiB, HEADERS on a stream
not open that this side did not reset): it queues a GOAWAY naming the error and raises h2's
``ProtocolError``, on which grpclib closes the connection. Stream errors (DATA after the
peer ended its side, a stream window overrun, a stream over the concurrency limit) reset
that stream only. Late frames on streams this side reset (the last 1 024) are ignored, and
DATA for any closed stream still counts against, and is given back to, the connection
window; unknown frame types are ignored; server push is disabled and refused. A client
connection 10 000 calls short of the last stream id (2**31-1) retires: grpclib's channel
opens the next calls on a new connection, and this one closes after its last answer
(``on_retire``/``on_retired``, wired by ``coalesce.CoalescingH2Protocol``).
``--http2 h2`` (nodes) and ``CoalescingChannel(lean=False)`` put h2 back.
"""

from __future__ import annotations

import enum
import struct
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    PingAckReceived,
    PingReceived,
    RemoteSettingsChanged,
    RequestReceived,
    ResponseReceived,
    SettingsAcknowledged,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import (
    FlowControlError,
    FrameTooLargeError,
    NoAvailableStreamIDError,
    NoSuchStreamError,
    ProtocolError,
    StreamClosedError,
    TooManyStreamsError,
)
from h2.settings import ChangedSetting, SettingCodes
from hpack import Decoder, HPACKError
from hpack.table import HeaderTable

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65535
MAX_FRAME = 16384  # what this side accepts (the protocol's default; never raised)
MAX_HEADER_LIST = 65536
MAX_HEADER_BLOCK = 256 * 1024  # HEADERS + CONTINUATION bytes before the block must end
MAX_STREAMS = 100  # concurrent streams a peer may open here (h2's default)
DECODE_CACHE = 64  # header blocks remembered per connection
DECODE_CACHE_BLOCK = 512  # bytes: larger blocks are decoded every time (never kept)
RESET_REMEMBERED = 1024  # streams reset here remembered per connection (late HEADERS)
ENCODE_CACHE = 4096  # encoded fields remembered per process
ENCODE_CACHE_VALUE = 64  # characters: longer values (messages, ids) are encoded every time
MAX_STREAM_ID = 2**31 - 1
RETIRE_MARGIN = 2 * 10_000  # ids left when a client connection retires (see ``on_retire``)

_HEAD = struct.Struct(">HBBBL")  # length (24 bits as 16 + 8), type, flags, stream id
_U32 = struct.Struct(">L")
_GOAWAY = struct.Struct(">LL")


class ConnectionState(enum.Enum):
    """What grpclib reads through ``state_machine.state`` (closed or not)."""

    OPEN = 0
    CLOSED = 1


class _StateMachine:
    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = ConnectionState.OPEN


class Settings:
    """One side's settings, by attribute (as grpclib reads h2's)."""

    def __init__(self, *, client_side: bool) -> None:
        self.header_table_size = 4096
        self.enable_push = 0
        self.max_concurrent_streams = MAX_STREAMS if not client_side else 2**31 - 1
        self.initial_window_size = DEFAULT_WINDOW
        self.max_frame_size = MAX_FRAME
        self.max_header_list_size = MAX_HEADER_LIST

    _NAMES = {
        SettingCodes.HEADER_TABLE_SIZE: "header_table_size",
        SettingCodes.ENABLE_PUSH: "enable_push",
        SettingCodes.MAX_CONCURRENT_STREAMS: "max_concurrent_streams",
        SettingCodes.INITIAL_WINDOW_SIZE: "initial_window_size",
        SettingCodes.MAX_FRAME_SIZE: "max_frame_size",
        SettingCodes.MAX_HEADER_LIST_SIZE: "max_header_list_size",
    }

    def get(self, code: int) -> int | None:
        name = self._NAMES.get(code)  # type: ignore[call-overload]
        return None if name is None else int(getattr(self, name))

    def set(self, code: int, value: int) -> None:
        name = self._NAMES.get(code)  # type: ignore[call-overload]
        if name is not None:
            setattr(self, name, value)


class LeanStream:
    """One stream's state: which sides have ended, and its flow-control windows."""

    __slots__ = (
        "headers_seen",
        "inbound_unacked",
        "inbound_window",
        "local_ended",
        "outbound_window",
        "remote_ended",
        "stream_id",
    )

    def __init__(self, stream_id: int, outbound_window: int, inbound_window: int) -> None:
        self.stream_id = stream_id
        self.local_ended = False
        self.remote_ended = False
        self.headers_seen = False
        self.outbound_window = outbound_window
        self.inbound_window = inbound_window
        self.inbound_unacked = 0

    # what grpclib reads of h2's streams
    @property
    def open(self) -> bool:
        return True  # (closed streams leave ``streams`` at once)

    @property
    def closed(self) -> bool:
        return False


class _ConnectionError(Exception):
    def __init__(self, code: ErrorCodes, why: str) -> None:
        super().__init__(why)
        self.code = code


class _CountingTable(HeaderTable):
    """hpack's dynamic table, counting its changes (a decode cache's validity)."""

    generation = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.generation += 1
        super().add(name, value)

    @HeaderTable.maxsize.setter  # type: ignore[attr-defined, untyped-decorator]
    def maxsize(self, newmax: int) -> None:
        self.generation += 1
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]


def _static_indexes() -> tuple[dict[tuple[bytes, bytes], int], dict[bytes, int]]:
    full: dict[tuple[bytes, bytes], int] = {}
    names: dict[bytes, int] = {}
    for i, (name, value) in enumerate(HeaderTable.STATIC_TABLE, start=1):
        full.setdefault((name, value), i)
        names.setdefault(name, i)
    return full, names


_STATIC_FULL, _STATIC_NAME = _static_indexes()


def _hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _hpack_string(data: bytes) -> bytes:
    return _hpack_int(len(data), 7, 0) + data  # (not Huffman-coded)


def encode_field(name: str | bytes, value: str | bytes) -> bytes:
    """One header field in HPACK without touching the dynamic table."""
    n = name.encode("utf-8") if isinstance(name, str) else bytes(name)
    v = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    index = _STATIC_FULL.get((n, v))
    if index is not None:
        return _hpack_int(index, 7, 0x80)
    index = _STATIC_NAME.get(n)
    if index is not None:  # literal without indexing, indexed name
        return _hpack_int(index, 4, 0x00) + _hpack_string(v)
    return b"\x00" + _hpack_string(n) + _hpack_string(v)


_encoded: dict[tuple[str, str], bytes] = {}


def encode_headers(headers: Any) -> bytes:
    """A header list in HPACK (short fields cached: most repeat on every call)."""
    cache = _encoded
    parts = []
    for field in headers:
        name, value = field
        key = (name, value)
        encoded = cache.get(key)
        if encoded is None:
            encoded = encode_field(name, value)
            if len(value) <= ENCODE_CACHE_VALUE:
                if len(cache) >= ENCODE_CACHE:
                    cache.clear()
                cache[key] = encoded
        parts.append(encoded)
    return b"".join(parts)


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _HEAD.pack(n >> 8, n & 0xFF, kind, flags, stream_id) + payload


def _new(cls: type[Any], **fields: Any) -> Any:
    # h2's events are keyword-only dataclasses; setting their fields directly skips
    # the generated __init__ (grpclib reads only the fields)
    event = object.__new__(cls)
    event.__dict__.update(fields)
    return event


class LeanH2Connection:
    """The subset of ``h2.connection.H2Connection`` grpclib uses, done lean."""

    def __init__(self, config: Any = None, *, client_side: bool | None = None) -> None:
        if client_side is None:
            client_side = bool(getattr(config, "client_side", True))
        self.client_side = client_side
        self.state_machine = _StateMachine()
        self.local_settings = Settings(client_side=client_side)
        self.remote_settings = Settings(client_side=not client_side)
        self.remote_settings.max_concurrent_streams = 2**31 - 1  # until the peer says
        self._pending_settings: list[dict[int, int]] = []
        self.streams: dict[int, LeanStream] = {}
        self.highest_inbound_stream_id = 0
        self.highest_outbound_stream_id = 0
        self._next_stream_id = 1 if client_side else 2
        self._data_to_send = bytearray()
        self._inbound = bytearray()
        self._preface_pending = not client_side
        self._header_block: tuple[int, int, bytearray] | None = None  # stream, flags, bytes
        # flow control (connection level)
        self.outbound_flow_control_window = DEFAULT_WINDOW
        self._inbound_window = DEFAULT_WINDOW
        self._inbound_max = DEFAULT_WINDOW
        self._inbound_unacked = 0
        self._stream_inbound_initial = DEFAULT_WINDOW
        # HPACK
        self._decoder = Decoder(max_header_list_size=MAX_HEADER_LIST)
        self._table = _CountingTable()
        self._decoder.header_table = self._table
        self._decoder.max_allowed_table_size = self.local_settings.header_table_size
        self._decoded: dict[bytes, tuple[int, list[tuple[str, str]]]] = {}
        self._closed_error = False
        self._reset_here: OrderedDict[int, None] = OrderedDict()  # the last resets sent
        self._table_size_update = False  # the peer lowered its table: say so (RFC 7541 4.2)
        self.on_retire: Callable[[], None] | None = None
        """Called once when a client connection nears the last stream id: the owner opens
        new calls elsewhere (a new connection); ``on_retired`` follows when its last stream
        is done."""
        self.on_retired: Callable[[], None] | None = None
        self.retiring = False

    # -- what grpclib calls ------------------------------------------------------------

    def initiate_connection(self) -> None:
        settings: dict[int, int] = {
            SettingCodes.HEADER_TABLE_SIZE: self.local_settings.header_table_size,
            SettingCodes.MAX_CONCURRENT_STREAMS: self.local_settings.max_concurrent_streams,
            SettingCodes.INITIAL_WINDOW_SIZE: self.local_settings.initial_window_size,
            SettingCodes.MAX_FRAME_SIZE: self.local_settings.max_frame_size,
            SettingCodes.MAX_HEADER_LIST_SIZE: self.local_settings.max_header_list_size,
        }
        if self.client_side:
            settings[SettingCodes.ENABLE_PUSH] = 0
            self._data_to_send += PREFACE
        self._pending_settings.append(settings)  # (the peer's first ACK is for these)
        self._data_to_send += self._settings_frame(settings)

    def update_settings(self, new_settings: dict[Any, int]) -> None:
        settings = {int(k): int(v) for k, v in new_settings.items()}
        self._pending_settings.append(settings)
        window = settings.get(SettingCodes.INITIAL_WINDOW_SIZE)
        if window is not None and window > self._stream_inbound_initial:
            # a peer may use a larger window as soon as it reads this frame
            delta = window - self._stream_inbound_initial
            self._stream_inbound_initial = window
            for stream in self.streams.values():
                stream.inbound_window += delta
        self._data_to_send += self._settings_frame(settings)

    def increment_flow_control_window(self, increment: int, stream_id: int | None = None) -> None:
        if not 1 <= increment <= MAX_WINDOW:
            raise ValueError(f"flow control increment must be in 1..2**31-1, not {increment}")
        if stream_id:
            stream = self._stream(stream_id)
            stream.inbound_window += increment
        else:
            stream_id = 0
            self._inbound_window += increment
            self._inbound_max += increment
        self._data_to_send += _frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(increment))

    def data_to_send(self, amount: int | None = None) -> bytes:
        data = self._data_to_send
        if not data:
            return b""
        if amount is None or amount >= len(data):
            self._data_to_send = bytearray()
            return bytes(data)
        out = bytes(data[:amount])
        del data[:amount]
        return out

    def get_next_available_stream_id(self) -> int:
        return self._next_stream_id

    @property
    def max_outbound_frame_size(self) -> int:
        return self.remote_settings.max_frame_size

    @property
    def open_outbound_streams(self) -> int:
        odd = 1 if self.client_side else 0
        return sum(1 for i in self.streams if i % 2 == odd)

    @property
    def open_inbound_streams(self) -> int:
        odd = 0 if self.client_side else 1
        return sum(1 for i in self.streams if i % 2 == odd)

    def local_flow_control_window(self, stream_id: int) -> int:
        stream = self._stream(stream_id)
        return min(self.outbound_flow_control_window, stream.outbound_window)

    def send_headers(
        self, stream_id: int, headers: Any, end_stream: bool = False, **_: Any
    ) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            stream = self._open_outbound(stream_id)
        elif stream.local_ended:
            raise StreamClosedError(stream_id)
        block = encode_headers(headers)
        if self._table_size_update:  # (this encoder keeps no dynamic table: size 0)
            self._table_size_update = False
            block = b"\x20" + block
        limit = self.remote_settings.max_frame_size
        flags = END_STREAM if end_stream else 0
        if len(block) <= limit:
            self._data_to_send += _frame(HEADERS, flags | END_HEADERS, stream_id, block)
        else:
            chunks = [block[i : i + limit] for i in range(0, len(block), limit)]
            out = self._data_to_send
            out += _frame(HEADERS, flags, stream_id, chunks[0])
            for i, chunk in enumerate(chunks[1:], start=2):
                last = END_HEADERS if i == len(chunks) else 0
                out += _frame(CONTINUATION, last, stream_id, chunk)
        if end_stream:
            self._end_local(stream)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False, **_: Any) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.local_ended:
            raise StreamClosedError(stream_id)
        n = len(data)
        if n > self.remote_settings.max_frame_size:
            raise FrameTooLargeError(f"{n} bytes exceed the peer's frame size")
        if n > self.outbound_flow_control_window or n > stream.outbound_window:
            raise FlowControlError(f"{n} bytes exceed the flow-control window")
        self.outbound_flow_control_window -= n
        stream.outbound_window -= n
        out = self._data_to_send
        out += _HEAD.pack(n >> 8, n & 0xFF, DATA, END_STREAM if end_stream else 0, stream_id)
        out += data
        if end_stream:
            self._end_local(stream)

    def end_stream(self, stream_id: int) -> None:
        self.send_data(stream_id, b"", end_stream=True)

    def reset_stream(self, stream_id: int, error_code: int = 0) -> None:
        self._stream(stream_id)
        del self.streams[stream_id]
        self._closed(stream_id, reset_here=True)
        self._data_to_send += _frame(RST_STREAM, 0, stream_id, _U32.pack(int(error_code)))

    def acknowledge_received_data(self, acknowledged_size: int, stream_id: int) -> None:
        if acknowledged_size < 0:
            raise ValueError("cannot acknowledge negative data")
        self._give_back(acknowledged_size)
        stream = self.streams.get(stream_id)
        if stream is not None and not stream.remote_ended:
            stream.inbound_unacked += acknowledged_size
            increment = self._window_update(
                stream_id,
                stream.inbound_unacked,
                stream.inbound_window,
                self._stream_inbound_initial,
            )
            if increment:
                stream.inbound_unacked = 0
                stream.inbound_window += increment

    def ping(self, opaque_data: bytes) -> None:
        if len(opaque_data) != 8:
            raise ValueError("a PING carries 8 bytes")
        self._data_to_send += _frame(PING, 0, 0, bytes(opaque_data))

    def close_connection(
        self,
        error_code: int = 0,
        additional_data: bytes | None = None,
        last_stream_id: int | None = None,
    ) -> None:
        last = self.highest_inbound_stream_id if last_stream_id is None else last_stream_id
        payload = _GOAWAY.pack(last, int(error_code)) + (additional_data or b"")
        self._data_to_send += _frame(GOAWAY, 0, 0, payload)
        self.state_machine.state = ConnectionState.CLOSED

    def receive_data(self, data: bytes) -> list[Event]:
        if self._closed_error:
            return []
        events: list[Event] = []
        try:
            self._receive(data, events)
        except _ConnectionError as exc:
            self._closed_error = True
            why = str(exc)[:256]
            self.close_connection(exc.code, why.encode("ascii", "replace"))
            error = ProtocolError(why)
            error.error_code = exc.code
            raise error from None
        return events

    # -- receiving ---------------------------------------------------------------------

    def _receive(self, data: bytes, events: list[Event]) -> None:
        buf: bytes | bytearray
        if self._inbound:
            buf = self._inbound
            buf += data
        else:
            buf = data  # (nothing left over: parse in place, keep only a partial tail)
        pos = 0
        if self._preface_pending:
            if len(buf) < len(PREFACE):
                if not PREFACE.startswith(bytes(buf)):
                    raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "not an HTTP/2 preface")
                if buf is data:
                    self._inbound = bytearray(data)
                return
            if buf[: len(PREFACE)] != PREFACE:
                raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "not an HTTP/2 preface")
            self._preface_pending = False
            pos = len(PREFACE)
        end = len(buf)
        view = memoryview(buf)
        try:
            while end - pos >= 9:
                hi, lo, kind, flags, stream_id = _HEAD.unpack_from(buf, pos)
                length = (hi << 8) | lo
                if length > MAX_FRAME:
                    raise _ConnectionError(
                        ErrorCodes.FRAME_SIZE_ERROR, f"a {length}-byte frame (limit {MAX_FRAME})"
                    )
                if end - pos - 9 < length:
                    break
                start = pos + 9
                pos = start + length
                self._dispatch(kind, flags, stream_id & 0x7FFFFFFF, view, start, length, events)
        finally:
            view.release()
        if buf is data:
            if pos < len(data):
                self._inbound = bytearray(data[pos:])
        else:
            del self._inbound[:pos]

    def _dispatch(
        self,
        kind: int,
        flags: int,
        stream_id: int,
        view: memoryview,
        start: int,
        length: int,
        events: list[Event],
    ) -> None:
        if self._header_block is not None and kind != CONTINUATION:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "a header block was interrupted")
        if kind == DATA:
            self._on_data(flags, stream_id, view, start, length, events)
        elif kind == HEADERS:
            self._on_headers(flags, stream_id, view, start, length, events)
        elif kind == WINDOW_UPDATE:
            self._on_window_update(stream_id, view, start, length, events)
        elif kind == SETTINGS:
            self._on_settings(flags, stream_id, view, start, length, events)
        elif kind == PING:
            if stream_id:
                raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "PING on a stream")
            if length != 8:
                raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, f"a {length}-byte PING")
            payload = bytes(view[start : start + 8])
            if flags & ACK:
                events.append(_new(PingAckReceived, ping_data=payload))
            else:
                self._data_to_send += _frame(PING, ACK, 0, payload)
                events.append(_new(PingReceived, ping_data=payload))
        elif kind == RST_STREAM:
            self._on_rst(stream_id, view, start, length, events)
        elif kind == GOAWAY:
            if stream_id or length < 8:
                raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "a malformed GOAWAY")
            last, code = _GOAWAY.unpack_from(view, start)
            self.state_machine.state = ConnectionState.CLOSED
            events.append(
                _new(
                    ConnectionTerminated,
                    error_code=_error_code(code),
                    last_stream_id=last & 0x7FFFFFFF,
                    additional_data=bytes(view[start + 8 : start + length]),
                )
            )
        elif kind == CONTINUATION:
            self._on_continuation(flags, stream_id, view, start, length, events)
        elif kind == PRIORITY:
            if not stream_id:
                raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "PRIORITY on stream 0")
            if length != 5:
                raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, f"a {length}-byte PRIORITY")
        elif kind == PUSH_PROMISE:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "server push is disabled")
        # any other type: ignored (RFC 9113 4.1)

    def _payload(self, flags: int, view: memoryview, start: int, length: int) -> tuple[int, int]:
        """(start, length) of a DATA or HEADERS payload without its padding."""
        if flags & PADDED:
            if length < 1:
                raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "padding without its length")
            pad = view[start]
            if pad >= length:
                raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "padding longer than its frame")
            return start + 1, length - 1 - pad
        return start, length

    def _on_data(
        self,
        flags: int,
        stream_id: int,
        view: memoryview,
        start: int,
        length: int,
        events: list[Event],
    ) -> None:
        if not stream_id:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "DATA on stream 0")
        if length > self._inbound_window:
            raise _ConnectionError(
                ErrorCodes.FLOW_CONTROL_ERROR, "DATA beyond the connection's window"
            )
        self._inbound_window -= length
        stream = self.streams.get(stream_id)
        if stream is None:
            self._check_not_idle(stream_id, "DATA")
            self._give_back(length)  # a closed stream: nobody will read it
            return
        if stream.remote_ended:
            self._give_back(length)
            self._stream_error(stream, ErrorCodes.STREAM_CLOSED, events)
            return
        if length > stream.inbound_window:
            self._give_back(length)
            self._stream_error(stream, ErrorCodes.FLOW_CONTROL_ERROR, events)
            return
        stream.inbound_window -= length
        begin, size = self._payload(flags, view, start, length)
        events.append(
            _new(
                DataReceived,
                stream_id=stream_id,
                data=bytes(view[begin : begin + size]),
                flow_controlled_length=length,
                stream_ended=None,
            )
        )
        if flags & END_STREAM:
            self._end_remote(stream, events)

    def _on_headers(
        self,
        flags: int,
        stream_id: int,
        view: memoryview,
        start: int,
        length: int,
        events: list[Event],
    ) -> None:
        if not stream_id:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "HEADERS on stream 0")
        begin, size = self._payload(flags, view, start, length)
        if flags & PRIORITY_FLAG:
            if size < 5:
                raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "a short priority block")
            begin, size = begin + 5, size - 5
        fragment = view[begin : begin + size]
        if flags & END_HEADERS:
            self._headers(flags, stream_id, bytes(fragment), events)
        else:
            self._header_block = (stream_id, flags, bytearray(fragment))

    def _on_continuation(
        self,
        flags: int,
        stream_id: int,
        view: memoryview,
        start: int,
        length: int,
        events: list[Event],
    ) -> None:
        if self._header_block is None or self._header_block[0] != stream_id:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "CONTINUATION out of place")
        _, first_flags, block = self._header_block
        block += view[start : start + length]
        if len(block) > MAX_HEADER_BLOCK:
            raise _ConnectionError(
                ErrorCodes.ENHANCE_YOUR_CALM, f"a header block over {MAX_HEADER_BLOCK} bytes"
            )
        if flags & END_HEADERS:
            self._header_block = None
            self._headers(first_flags, stream_id, bytes(block), events)

    def _decode(self, block: bytes) -> list[tuple[str, str]]:
        table = self._table
        generation = table.generation
        hit = self._decoded.get(block)
        if hit is not None and hit[0] == generation:
            return list(hit[1])  # (each event its own list)
        try:
            raw = self._decoder.decode(block, raw=True)
        except (HPACKError, IndexError, ValueError) as exc:
            raise _ConnectionError(
                ErrorCodes.COMPRESSION_ERROR, f"undecodable headers: {exc}"
            ) from None
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in raw]
        if table.generation == generation and len(block) <= DECODE_CACHE_BLOCK:
            # the table did not change: the same block decodes the same while it stays so
            if len(self._decoded) >= DECODE_CACHE:
                self._decoded.clear()
            self._decoded[block] = (generation, headers)
        return headers

    def _headers(self, flags: int, stream_id: int, block: bytes, events: list[Event]) -> None:
        headers = self._decode(block)  # always: the dynamic table must stay in step
        stream = self.streams.get(stream_id)
        ended = bool(flags & END_STREAM)
        if stream is None:
            inbound_odd = 0 if self.client_side else 1
            ours = stream_id % 2 != inbound_odd
            highest = self.highest_outbound_stream_id if ours else self.highest_inbound_stream_id
            if stream_id <= highest:
                if stream_id in self._reset_here:
                    return  # reset here: the peer may not have seen it yet (RFC 9113 5.1)
                # closed after both sides ended, or never opened (ids only grow)
                raise _ConnectionError(
                    ErrorCodes.PROTOCOL_ERROR, f"HEADERS on stream {stream_id}, not open"
                )
            if ours:
                raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "HEADERS on an idle stream")
            if self.client_side:
                raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "a stream the server opened")
            self.highest_inbound_stream_id = stream_id
            if (
                self.state_machine.state is ConnectionState.CLOSED
                or len(self.streams) >= self.local_settings.max_concurrent_streams
            ):
                self._data_to_send += _frame(
                    RST_STREAM, 0, stream_id, _U32.pack(ErrorCodes.REFUSED_STREAM)
                )
                self._closed(stream_id, reset_here=True)
                return
            stream = LeanStream(
                stream_id,
                self.remote_settings.initial_window_size,
                self._stream_inbound_initial,
            )
            stream.headers_seen = True
            self.streams[stream_id] = stream
            events.append(
                _new(
                    RequestReceived,
                    stream_id=stream_id,
                    headers=headers,
                    stream_ended=None,
                    priority_updated=None,
                )
            )
        elif stream.remote_ended:
            self._stream_error(stream, ErrorCodes.STREAM_CLOSED, events)
            return
        elif self.client_side and not stream.headers_seen:
            status = next((v for n, v in headers if n == ":status"), "")
            if status.startswith("1"):
                if ended:  # (RFC 9113 8.1: malformed)
                    self._stream_error(stream, ErrorCodes.PROTOCOL_ERROR, events)
                return  # an informational response: nothing for grpclib
            stream.headers_seen = True
            events.append(
                _new(
                    ResponseReceived,
                    stream_id=stream_id,
                    headers=headers,
                    stream_ended=None,
                    priority_updated=None,
                )
            )
        else:
            if not ended:
                self._stream_error(stream, ErrorCodes.PROTOCOL_ERROR, events)
                return
            events.append(_new(TrailersReceived, stream_id=stream_id, headers=headers))
        if ended:
            self._end_remote(stream, events)

    def _on_window_update(
        self, stream_id: int, view: memoryview, start: int, length: int, events: list[Event]
    ) -> None:
        if length != 4:
            raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "a malformed WINDOW_UPDATE")
        increment = _U32.unpack_from(view, start)[0] & 0x7FFFFFFF
        if not stream_id:
            if not increment:
                raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "a zero window increment")
            self.outbound_flow_control_window += increment
            if self.outbound_flow_control_window > MAX_WINDOW:
                raise _ConnectionError(ErrorCodes.FLOW_CONTROL_ERROR, "the window overflowed")
            events.append(_new(WindowUpdated, stream_id=0, delta=increment))
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            self._check_not_idle(stream_id, "WINDOW_UPDATE")
            return
        if not increment:
            self._stream_error(stream, ErrorCodes.PROTOCOL_ERROR, events)
            return
        stream.outbound_window += increment
        if stream.outbound_window > MAX_WINDOW:
            self._stream_error(stream, ErrorCodes.FLOW_CONTROL_ERROR, events)
            return
        events.append(_new(WindowUpdated, stream_id=stream_id, delta=increment))

    def _on_rst(
        self, stream_id: int, view: memoryview, start: int, length: int, events: list[Event]
    ) -> None:
        if not stream_id:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if length != 4:
            raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, f"a {length}-byte RST_STREAM")
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            self._check_not_idle(stream_id, "RST_STREAM")
            return
        self._closed(stream_id, reset_here=False)
        code = _U32.unpack_from(view, start)[0]
        events.append(
            _new(StreamReset, stream_id=stream_id, error_code=_error_code(code), remote_reset=True)
        )

    def _on_settings(
        self,
        flags: int,
        stream_id: int,
        view: memoryview,
        start: int,
        length: int,
        events: list[Event],
    ) -> None:
        if stream_id:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if length:
                raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "a SETTINGS ack with data")
            if not self._pending_settings:
                return
            applied = self._pending_settings.pop(0)
            changed = {}
            for code, value in applied.items():
                before = self.local_settings.get(code)
                if before != value:
                    self.local_settings.set(code, value)
                    changed[_setting_code(code)] = ChangedSetting(code, before, value)
            # lowered windows apply from the ACK on (raised ones applied when sent), unless a
            # SETTINGS still unacknowledged raises it again
            window = max(
                [self.local_settings.initial_window_size]
                + [
                    p[SettingCodes.INITIAL_WINDOW_SIZE]
                    for p in self._pending_settings
                    if SettingCodes.INITIAL_WINDOW_SIZE in p
                ]
            )
            if window < self._stream_inbound_initial:
                delta = window - self._stream_inbound_initial
                self._stream_inbound_initial = window
                for stream in self.streams.values():
                    stream.inbound_window += delta
            events.append(_new(SettingsAcknowledged, changed_settings=changed))
            return
        if length % 6:
            raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "a malformed SETTINGS")
        remote = self.remote_settings
        changes: dict[Any, ChangedSetting] = {}
        for offset in range(start, start + length, 6):
            code, value = struct.unpack_from(">HL", view, offset)
            if code == SettingCodes.ENABLE_PUSH and (value > 1 or (value and self.client_side)):
                raise _ConnectionError(
                    ErrorCodes.PROTOCOL_ERROR, "ENABLE_PUSH must be 0 or 1 (0 from a server)"
                )
            if code == SettingCodes.INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise _ConnectionError(ErrorCodes.FLOW_CONTROL_ERROR, "window over 2**31-1")
                delta = value - remote.initial_window_size
                for stream in self.streams.values():
                    stream.outbound_window += delta
                    if stream.outbound_window > MAX_WINDOW:
                        raise _ConnectionError(
                            ErrorCodes.FLOW_CONTROL_ERROR, "a stream window overflowed"
                        )
            if code == SettingCodes.HEADER_TABLE_SIZE and value < remote.header_table_size:
                self._table_size_update = True
            if code == SettingCodes.MAX_FRAME_SIZE and not MAX_FRAME <= value <= 2**24 - 1:
                raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
            before = remote.get(code)
            remote.set(code, value)
            changes[_setting_code(code)] = ChangedSetting(code, before, value)
        self._data_to_send += _frame(SETTINGS, ACK, 0)
        events.append(_new(RemoteSettingsChanged, changed_settings=changes))

    # -- stream bookkeeping ------------------------------------------------------------

    def _stream(self, stream_id: int) -> LeanStream:
        stream = self.streams.get(stream_id)
        if stream is None:
            highest = max(self.highest_inbound_stream_id, self.highest_outbound_stream_id)
            if stream_id > highest:
                raise NoSuchStreamError(stream_id)
            raise StreamClosedError(stream_id)
        return stream

    def _open_outbound(self, stream_id: int) -> LeanStream:
        if not self.client_side:
            self._stream(stream_id)  # raises: closed, or never opened (no server push)
        if stream_id <= self.highest_outbound_stream_id:
            raise StreamClosedError(stream_id)
        if self.state_machine.state is ConnectionState.CLOSED:
            raise ProtocolError("the connection is closed (GOAWAY)")
        if stream_id % 2 != 1:
            raise ProtocolError(f"a client opens odd streams, not {stream_id}")
        if stream_id > MAX_STREAM_ID:
            raise NoAvailableStreamIDError("this connection has used every stream id")
        if stream_id >= MAX_STREAM_ID - RETIRE_MARGIN and not self.retiring:
            self.retiring = True
            if self.on_retire is not None:
                self.on_retire()
        if len(self.streams) >= self.remote_settings.max_concurrent_streams:
            raise TooManyStreamsError("the peer's concurrent stream limit is reached")
        stream = LeanStream(
            stream_id, self.remote_settings.initial_window_size, self._stream_inbound_initial
        )
        self.streams[stream_id] = stream
        self.highest_outbound_stream_id = stream_id
        self._next_stream_id = stream_id + 2
        return stream

    def _check_not_idle(self, stream_id: int, what: str) -> None:
        inbound_odd = 0 if self.client_side else 1
        highest = (
            self.highest_inbound_stream_id
            if stream_id % 2 == inbound_odd
            else self.highest_outbound_stream_id
        )
        if stream_id > highest:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, f"{what} on an idle stream")

    def _end_local(self, stream: LeanStream) -> None:
        stream.local_ended = True
        if stream.remote_ended:
            del self.streams[stream.stream_id]
            self._closed(stream.stream_id, reset_here=False)

    def _end_remote(self, stream: LeanStream, events: list[Event]) -> None:
        stream.remote_ended = True
        events.append(_new(StreamEnded, stream_id=stream.stream_id))
        if stream.local_ended:
            del self.streams[stream.stream_id]
            self._closed(stream.stream_id, reset_here=False)

    def _closed(self, stream_id: int, *, reset_here: bool) -> None:
        """A stream left ``streams``. The last ``RESET_REMEMBERED`` reset here are
        remembered: HEADERS that arrive late on them are ignored (on any other stream not
        open they are a connection error)."""
        if reset_here:
            recent = self._reset_here
            if len(recent) >= RESET_REMEMBERED:
                recent.popitem(last=False)
            recent[stream_id] = None
        if self.retiring and not self.streams and self.on_retired is not None:
            retired, self.on_retired = self.on_retired, None
            retired()

    def _stream_error(self, stream: LeanStream, code: ErrorCodes, events: list[Event]) -> None:
        self.streams.pop(stream.stream_id, None)
        self._closed(stream.stream_id, reset_here=True)
        self._data_to_send += _frame(RST_STREAM, 0, stream.stream_id, _U32.pack(code))
        events.append(
            _new(StreamReset, stream_id=stream.stream_id, error_code=code, remote_reset=False)
        )

    def _give_back(self, size: int) -> None:
        """Connection-level flow control: return consumed bytes."""
        self._inbound_unacked += size
        increment = self._window_update(
            0, self._inbound_unacked, self._inbound_window, self._inbound_max
        )
        if increment:
            self._inbound_unacked = 0
            self._inbound_window += increment

    def _window_update(self, stream_id: int, unacked: int, window: int, maximum: int) -> int:
        """h2's rule: give ``unacked`` bytes back (a WINDOW_UPDATE, returning the increment)
        once half the window is consumed, or a little when the window is exhausted; else 0."""
        if unacked >= maximum // 2 or (window <= 0 and unacked >= min(1024, maximum // 4)):
            self._data_to_send += _frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(unacked))
            return unacked
        return 0

    @staticmethod
    def _settings_frame(settings: dict[int, int]) -> bytes:
        payload = b"".join(struct.pack(">HL", int(k), v) for k, v in settings.items())
        return _frame(SETTINGS, 0, 0, payload)


def _error_code(code: int) -> ErrorCodes | int:
    try:
        return ErrorCodes(code)
    except ValueError:
        return code


def _setting_code(code: int) -> SettingCodes | int:
    try:
        return SettingCodes(code)
    except ValueError:
        return code


__all__ = ["LeanH2Connection", "encode_headers"]
