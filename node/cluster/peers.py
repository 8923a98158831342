"""Peer-to-peer forwarding client: one pooled HTTP/2 channel per peer address.

``PeerPool.forward`` sends a ``ForwardRequest`` (the client's original request bytes
plus the routing decision and hop count) to an owner and returns the owner's
``PredictResponse`` bytes untouched. Every failure becomes ``AttemptFailed`` with a gRPC
status name, or ``CONNECTION`` when no answer came, so ``shardline.router.forward`` can decide
whether to try the next owner. A peer's error message is bounded before it goes on
(``errors.bounded``), whatever the peer sent.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from grpclib.client import Channel, UnaryUnaryMethod
from grpclib.exceptions import GRPCError, StreamTerminatedError

from shardline.node._proto.shardline.v1 import peer_pb2
from shardline.node.sdk.coalesce import CoalescingChannel
from shardline.node.sdk.codec import RawBytes, WireCodec
from shardline.node.sdk.errors import bounded
from shardline.node.sdk.tls import TlsFiles, client_context
from shardline.router.forward import AttemptFailed

log = logging.getLogger("shardline.peers")

FORWARD_PATH = "/shardline.v1.Peer/Forward"


def split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class PeerPool:
    def __init__(self, tls: TlsFiles | None = None) -> None:
        self._channels: dict[str, tuple[Channel, UnaryUnaryMethod[Any, Any]]] = {}
        self._ssl = client_context(tls) if tls is not None else None

    def _method(self, address: str) -> UnaryUnaryMethod[Any, Any]:
        entry = self._channels.get(address)
        if entry is None:
            host, port = split(address)
            channel = CoalescingChannel(host, port, codec=WireCodec(), ssl=self._ssl)
            entry = (channel, UnaryUnaryMethod(channel, FORWARD_PATH, RawBytes, RawBytes))
            self._channels[address] = entry
        return entry[1]

    async def forward(
        self,
        node_id: str,
        address: str,
        raw_request: bytes,
        *,
        model_key: str,
        cell: str,
        hops: int,
        ingress_node: str,
        timeout_s: float,
        shadow: bool = False,
    ) -> bytes:
        message = peer_pb2.ForwardRequest(
            request=raw_request,
            hops=hops,
            model_key=model_key,
            cell=cell,
            ingress_node=ingress_node,
            shadow=shadow,
        )
        if timeout_s <= 0:
            raise AttemptFailed(node_id, "DEADLINE_EXCEEDED", "no time left to forward")
        try:
            reply = await self._method(address)(message.SerializeToString(), timeout=timeout_s)
        except GRPCError as exc:
            raise AttemptFailed(node_id, exc.status.name, bounded(exc.message or "")) from None
        except TimeoutError:
            raise AttemptFailed(
                node_id, "DEADLINE_EXCEEDED", f"no answer within {timeout_s:.3f}s"
            ) from None
        except (
            OSError,
            ConnectionError,
            StreamTerminatedError,
            asyncio.IncompleteReadError,
        ) as exc:
            raise AttemptFailed(
                node_id, "CONNECTION", bounded(f"{type(exc).__name__}: {exc}")
            ) from None
        assert isinstance(reply, bytes)
        return reply

    def retain(self, addresses: set[str]) -> None:
        """Close the channels of peers that left the view."""
        for address in list(self._channels):
            if address not in addresses:
                channel, _ = self._channels.pop(address)
                channel.close()

    def close(self) -> None:
        self.retain(set())
