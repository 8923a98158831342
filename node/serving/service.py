"""gRPC services of a node (grpclib): ``shardline.v1.Inference`` and ``grpc.health.v1``.

The Predict handler receives the request as raw bytes (``WireCodec`` hands bytes to
handlers that ask for them) and hands them to the ingress
(``shardline.node.serving.ingress.Ingress``), so the node decodes them once, with the fast protobuf
runtime, and a router can forward the original bytes untouched; ``Peer.Forward`` hands a peer's
forward to the cluster router (``ClusterRouter.serve_forward``). Every failure leaves as a gRPC
status with a human, bounded message: ``RequestError`` maps to its status, anything unexpected
becomes INTERNAL with a reference into the node log — never a traceback.

Requests compressed with ``grpc-encoding: gzip`` (or ``deflate``) are accepted: grpclib
refuses any compressed message, so the node server has every unary-request handler (these,
Admin's and Health's) read its request with ``recv_request``, which decompresses it within
the same size limit (another encoding: UNIMPLEMENTED).
Answers go back uncompressed, which the gRPC protocol allows whatever the client asked for.
"""

from __future__ import annotations

import logging
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf.message import DecodeError
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from shardline.node._proto.shardline import v1
from shardline.node._proto.shardline.v1 import peer_pb2
from shardline.node.sdk.codec import RawBytes
from shardline.node.sdk.errors import RequestError, bounded
from shardline.node.serving.runtime import NodeRuntime

log = logging.getLogger("shardline.service")


_ZLIB_AUTO = 32 + zlib.MAX_WBITS  # zlib detects the gzip or the zlib ("deflate") header
_UNLIMITED_BYTES = 1 << 30  # decompression bound when the codec sets no limit


async def recv_request(stream: Stream[Any, Any]) -> Any:
    """The one request message of a unary call, decompressed when the client compressed it.

    What ``Stream.recv_message`` does (gRPC length-prefixed framing, then the codec), plus
    compressed messages, which grpclib 0.4 refuses with an exception (the client saw
    ``UNKNOWN``, the log a traceback). grpclib does not hand a handler the
    ``grpc-encoding`` header, but the two encodings gRPC clients offer are self-describing:
    gzip and deflate (zlib's format) each begin with their own header, which zlib
    recognises. Reads grpclib's stream internals: pinned grpclib, and covered by a test
    with a grpcio client that compresses.
    """
    h2 = stream._stream
    codec: Any = stream._codec
    recv_type = stream._recv_type
    limit = getattr(
        codec, "max_message_bytes" if recv_type is RawBytes else "max_control_bytes", None
    )
    prefix = await h2.recv_data(5)
    if len(prefix) < 5:
        raise GRPCError(Status.INVALID_ARGUMENT, "request: the call carries no message")
    size = int.from_bytes(prefix[1:5], "big")
    if limit is not None and size > limit:
        raise GRPCError(
            Status.INVALID_ARGUMENT,
            f"request: message of {size} bytes exceeds the limit of {limit} bytes",
        )
    data = await h2.recv_data(size)
    if len(data) != size:
        raise GRPCError(Status.INVALID_ARGUMENT, "request: the message is cut short")
    if prefix[0]:
        data = _decompress(data, limit)
    return codec.decode(data, recv_type)


def _decompress(data: bytes, limit: int | None) -> bytes:
    """A gzip or deflate message inflated, never past ``limit`` bytes (a bomb stops there)."""
    gzip = data[:2] == b"\x1f\x8b"
    deflate = len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
    if not (gzip or deflate):
        raise GRPCError(
            Status.UNIMPLEMENTED,
            "request: compressed with an encoding this node does not accept; "
            "send gzip, deflate or identity",
        )
    encoding = "gzip" if gzip else "deflate"
    bound = _UNLIMITED_BYTES if limit is None else limit
    inflater = zlib.decompressobj(_ZLIB_AUTO)
    try:
        data = inflater.decompress(data, bound + 1)
    except zlib.error:
        raise GRPCError(
            Status.INVALID_ARGUMENT, f"request: not a valid {encoding}-compressed message"
        ) from None
    if len(data) > bound:
        raise GRPCError(
            Status.INVALID_ARGUMENT,
            f"request: message exceeds the limit of {bound} bytes once decompressed",
        )
    if not inflater.eof or inflater.unused_data:
        raise GRPCError(
            Status.INVALID_ARGUMENT, f"request: not a valid {encoding}-compressed message"
        )
    return data


def client_of(stream: Stream[Any, Any]) -> str:
    """The caller, for log lines: its address and user agent (the agent cut to 128
    characters: a client chooses it)."""
    addr = stream.peer.addr() if stream.peer is not None else None
    host = str(addr[0]) if addr else "?"
    agent = stream.user_agent
    return f"{host} ({agent[:128]})" if agent else host


async def guarded(call: Callable[[], Awaitable[Any]], what: str) -> Any:
    """Run a handler body; map every failure to a clean gRPC status (bounded message)."""
    try:
        return await call()
    except RequestError as exc:
        raise exc.to_grpc() from None
    except GRPCError as exc:
        if exc.message is not None and len(exc.message) > 1024:
            raise GRPCError(exc.status, bounded(exc.message), exc.details) from None
        raise
    except Exception:
        ref = uuid.uuid4().hex[:12]
        log.exception("%s failed (ref %s)", what, ref)
        raise GRPCError(Status.INTERNAL, f"internal error in {what} (node log ref {ref})") from None


class InferenceService:
    """``shardline.v1.Inference`` over a ``NodeRuntime``: Predict goes to its ingress."""

    def __init__(self, runtime: NodeRuntime) -> None:
        self.runtime = runtime
        self.ingress = runtime.ingress

    async def predict(self, stream: Stream[bytes, bytes]) -> None:
        raw = await stream.recv_message()
        assert raw is not None  # recv_request raises INVALID_ARGUMENT for a call without one
        remaining = stream.deadline.time_remaining() if stream.deadline else None
        client = client_of(stream)
        answer = await guarded(lambda: self.ingress.predict(raw, remaining, client), "Predict")
        await stream.send_message(answer)

    async def list_objectives(self, stream: Stream[Any, Any]) -> None:
        await stream.recv_message()
        await stream.send_message(await guarded(self._list_objectives, "ListObjectives"))

    async def _list_objectives(self) -> v1.ListObjectivesResponse:
        rt = self.runtime
        infos = []
        for name, cfg in sorted(rt.objectives.items()):
            info = v1.ObjectiveInfo(
                name=name,
                description=cfg.description,
                default_model=cfg.default,
                model_keys=sorted(cfg.model_keys()),
                allow_override=cfg.allow_override,
            )
            manifest = rt.manifest_of(cfg.default)
            if manifest is not None:
                info.inputs = [_schema(s) for s in manifest.inputs]
                info.outputs = [_schema(s) for s in manifest.outputs]
            infos.append(info)
        return v1.ListObjectivesResponse(objectives=infos)

    def __mapping__(self) -> dict[str, Handler]:
        return {
            "/shardline.v1.Inference/Predict": Handler(
                self.predict, Cardinality.UNARY_UNARY, RawBytes, RawBytes
            ),
            "/shardline.v1.Inference/ListObjectives": Handler(
                self.list_objectives,
                Cardinality.UNARY_UNARY,
                v1.ListObjectivesRequest,
                v1.ListObjectivesResponse,
            ),
        }


def _schema(spec: Any) -> v1.TensorSchema:
    return v1.TensorSchema(
        name=spec.name,
        dtype=spec.dtype,
        shape=list(spec.shape),
        optional=spec.optional,
        description=spec.description,
    )


class PeerService:
    """``shardline.v1.Peer``: forwarded requests from other nodes (raw bytes both ways)."""

    def __init__(self, router: Any) -> None:
        self.router = router

    async def forward(self, stream: Stream[bytes, bytes]) -> None:
        raw = await stream.recv_message()
        assert raw is not None  # recv_request raises INVALID_ARGUMENT for a call without one
        started = time.perf_counter()
        remaining = stream.deadline.time_remaining() if stream.deadline else 10.0

        async def serve() -> bytes:
            message = peer_pb2.ForwardRequest()
            try:
                message.ParseFromString(raw)
            except DecodeError:
                raise GRPCError(Status.INVALID_ARGUMENT, "not a ForwardRequest") from None
            answer: bytes = await self.router.serve_forward(message, remaining, started)
            return answer

        await stream.send_message(await guarded(serve, "Forward"))

    def __mapping__(self) -> dict[str, Handler]:
        return {
            "/shardline.v1.Peer/Forward": Handler(
                self.forward, Cardinality.UNARY_UNARY, RawBytes, RawBytes
            )
        }


class ClusterService:
    """``shardline.v1.Cluster``: the routing table as this node sees it."""

    def __init__(self, describe: Callable[[], v1.RoutingTable]) -> None:
        self.describe = describe

    async def get_routing_table(self, stream: Stream[Any, Any]) -> None:
        await stream.recv_message()

        async def table() -> v1.RoutingTable:
            return self.describe()

        await stream.send_message(await guarded(table, "GetRoutingTable"))

    def __mapping__(self) -> dict[str, Handler]:
        return {
            "/shardline.v1.Cluster/GetRoutingTable": Handler(
                self.get_routing_table,
                Cardinality.UNARY_UNARY,
                v1.GetRoutingTableRequest,
                v1.RoutingTable,
            )
        }
