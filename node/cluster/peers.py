"""Peer-to-peer forwarding client: one pooled connection per peer address.

Two transports, chosen per pool (``PeerPool(transport=...)``; a node takes
``shardline serve --peer-transport``, or ``$SHARDLINE_PEER_TRANSPORT``, default ``link``):

- ``link``: the peer link (``shardline.node.cluster.peer_link``), a length-prefixed,
  multiplexed protocol on the peer's gRPC port, which costs a fraction of HTTP/2's CPU on
  both ends. A peer that does not speak it (an older node) is called over gRPC instead, and
  the link is tried again on it after ``GRPC_FALLBACK_S``.
- ``grpc``: ``/shardline.v1.Peer/Forward`` over grpclib (HTTP/2), as every node still
  serves it (older nodes, tools).

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
from shardline.node.cluster.peer_link import (
    MAX_ANSWER_BYTES,
    LinkFailure,
    LinkUnsupported,
    PeerLink,
)
from shardline.node.sdk.coalesce import CoalescingChannel
from shardline.node.sdk.codec import RawBytes, WireCodec
from shardline.node.sdk.errors import bounded
from shardline.node.sdk.tls import TlsFiles, client_context
from shardline.router.forward import AttemptFailed

log = logging.getLogger("shardline.peers")

FORWARD_PATH = "/shardline.v1.Peer/Forward"
TRANSPORTS = ("link", "grpc")
GRPC_FALLBACK_S = 60.0
"""How long a peer that did not speak the peer link is called over gRPC before the link
is tried on it again (it may have been upgraded)."""


def split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class PeerPool:
    def __init__(
        self,
        tls: TlsFiles | None = None,
        *,
        transport: str = "link",
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"peer transport {transport!r}: give one of {', '.join(TRANSPORTS)}")
        self.transport = transport
        self.max_answer_bytes = max_answer_bytes
        self._channels: dict[str, tuple[Channel, UnaryUnaryMethod[Any, Any]]] = {}
        self._links: dict[str, PeerLink] = {}
        self._grpc_until: dict[str, float] = {}
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
        body = message.SerializeToString()
        if self.transport == "link":
            loop = asyncio.get_running_loop()
            until = self._grpc_until.get(address)
            if until is None or loop.time() >= until:
                deadline = loop.time() + timeout_s
                try:
                    return await self._forward_link(node_id, address, body, timeout_s, deadline)
                except LinkUnsupported as exc:
                    log.info("%s: %s; forwarding to it over gRPC", node_id, exc)
                    self._grpc_until[address] = loop.time() + GRPC_FALLBACK_S
                    timeout_s = deadline - loop.time()
                    if timeout_s <= 0:
                        raise AttemptFailed(
                            node_id, "DEADLINE_EXCEEDED", "no time left to forward"
                        ) from None
        return await self._forward_grpc(node_id, address, body, timeout_s)

    async def _forward_link(
        self, node_id: str, address: str, body: bytes, timeout_s: float, deadline: float
    ) -> bytes:
        link = self._links.get(address)
        if link is None:
            host, port = split(address)
            link = self._links[address] = PeerLink(host, port, self._ssl, self.max_answer_bytes)
        try:
            async with asyncio.timeout_at(deadline):
                return await link.call(body, deadline)
        except LinkFailure as exc:
            raise AttemptFailed(node_id, exc.status, bounded(exc.message)) from None
        except TimeoutError:
            raise AttemptFailed(
                node_id, "DEADLINE_EXCEEDED", f"no answer within {timeout_s:.3f}s"
            ) from None
        except (OSError, ConnectionError, asyncio.IncompleteReadError) as exc:
            raise AttemptFailed(
                node_id, "CONNECTION", bounded(f"{type(exc).__name__}: {exc}")
            ) from None

    async def _forward_grpc(
        self, node_id: str, address: str, body: bytes, timeout_s: float
    ) -> bytes:
        try:
            reply = await self._method(address)(body, timeout=timeout_s)
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
        """Close the channels and links of peers that left the view."""
        for address in list(self._channels):
            if address not in addresses:
                channel, _ = self._channels.pop(address)
                channel.close()
        for address in list(self._links):
            if address not in addresses:
                self._links.pop(address).close()
        for address in list(self._grpc_until):
            if address not in addresses:
                del self._grpc_until[address]

    def close(self) -> None:
        self.retain(set())
