"""A bare grpclib server answering one unary method with fixed bytes: the transport floor.

    python -m bench.echo_server PORT REPLY_BYTES [--grpcio | --node-stack]

It speaks the same codec as a node (``WireCodec`` with raw bytes, no message decoding),
so the difference to ``Predict`` is everything shardline does per request. ``--grpcio``
serves the same method from grpcio's asyncio server (C-core HTTP/2) instead: the floor a
node would stand on had it changed transport (grpcio is installed anyway, for aetcd).
``--node-stack`` serves it from the same bare grpclib server on the transport a node stands
on: uvloop (when installed), one socket write per loop turn and ``sdk.http2.LeanH2Connection``
in place of h2 (``sdk.coalesce.CoalescingH2Protocol``): the floor of the node's own stack.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from grpclib.const import Cardinality, Handler
from grpclib.server import Server, Stream

from shardline.node.sdk.coalesce import CoalescingH2Protocol
from shardline.node.sdk.codec import RawBytes, WireCodec

ECHO_PATH = "/bench.Echo/Call"


class Echo:
    def __init__(self, reply: bytes) -> None:
        self.reply = reply

    async def call(self, stream: Stream[Any, Any]) -> None:
        await stream.recv_message()
        await stream.send_message(self.reply)

    def __mapping__(self) -> dict[str, Handler]:
        return {ECHO_PATH: Handler(self.call, Cardinality.UNARY_UNARY, RawBytes, RawBytes)}


class NodeStackServer(Server):
    """grpclib's server on a node's HTTP/2 protocol (coalesced writes, lean HTTP/2)."""

    def _protocol_factory(self) -> Any:
        base = super()._protocol_factory()
        return CoalescingH2Protocol(base.handler, base.config, base.h2_config)


async def main(port: int, reply_bytes: int, node_stack: bool = False) -> None:
    kind = NodeStackServer if node_stack else Server
    server = kind([Echo(b"x" * reply_bytes)], codec=WireCodec())
    await server.start("127.0.0.1", port)
    bound = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"echo serving on 127.0.0.1:{bound}", flush=True)
    await server.wait_closed()


async def main_grpcio(port: int, reply_bytes: int) -> None:
    import grpc  # (untyped)
    from grpc import aio

    reply = b"x" * reply_bytes

    async def call(request: bytes, context: Any) -> bytes:
        return reply

    service, method = ECHO_PATH.strip("/").split("/")
    handler = grpc.method_handlers_generic_handler(
        service, {method: grpc.unary_unary_rpc_method_handler(call)}
    )
    server = aio.server()
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"echo serving on 127.0.0.1:{bound}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    port, reply_bytes, flags = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    if "--grpcio" in flags:
        asyncio.run(main_grpcio(port, reply_bytes))
    elif "--node-stack" in flags:
        try:
            import uvloop
        except ImportError:  # (the [fast] extra is not installed: as a node, asyncio's loop)
            asyncio.run(main(port, reply_bytes, node_stack=True))
        else:
            uvloop.run(main(port, reply_bytes, node_stack=True))
    else:
        asyncio.run(main(port, reply_bytes))
