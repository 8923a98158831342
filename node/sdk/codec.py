"""The wire codec of every shardline gRPC channel and server (grpclib), light to import.

Clients (``shardline.node.sdk.client``, ``shardline.node.sdk.admin_client``, the CLI) and servers
share it; it imports no torch, no runtime. ``RawBytes`` marks a method whose handler gets (or sends)
the message bytes as they are, so the node decodes a request once and forwards the original bytes.
"""

from __future__ import annotations

from typing import Any

from grpclib.const import Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError

__all__ = ["RawBytes", "WireCodec"]


class RawBytes:
    """Marker request/reply type: the handler gets (or sends) the message bytes as they are."""


class WireCodec(CodecBase):
    """Protobuf codec for betterproto and upb messages alike, plus ``RawBytes`` passthrough.

    Inbound data-plane messages (raw bytes: Predict, Forward) above ``max_message_bytes``
    and control-plane messages (Admin: a deployed package) above ``max_control_bytes``
    are refused with INVALID_ARGUMENT.
    """

    __content_subtype__ = "proto"

    def __init__(
        self, max_message_bytes: int | None = None, max_control_bytes: int | None = None
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.max_control_bytes = max_control_bytes

    def encode(self, message: Any, message_type: Any) -> bytes:
        if isinstance(message, bytes | bytearray | memoryview):
            return bytes(message)
        return message.SerializeToString()  # type: ignore[no-any-return]

    def decode(self, data: bytes, message_type: Any) -> Any:
        limit = self.max_message_bytes if message_type is RawBytes else self.max_control_bytes
        if limit is not None and len(data) > limit:
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                f"request: message of {len(data)} bytes exceeds the limit of {limit} bytes",
            )
        if message_type is RawBytes:
            return bytes(data)
        try:
            return message_type.FromString(data)
        except Exception:
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                f"request: not a valid {getattr(message_type, '__name__', 'message')}",
            ) from None
