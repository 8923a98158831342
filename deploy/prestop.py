"""Container ``preStop`` hook: drain the node in this container, wait until it has left.

Exit status 0 once the node has drained and left the cluster (its successors warm, the
requests it had answered, deregistered: the node process then exits by itself), 1 when
the drain could not be done or did not finish in time, with the reason on stdout.

It asks the node on ``127.0.0.1:$SHARDLINE_PORT`` (should nothing listen there, on
``$SHARDLINE_ADVERTISE_HOST``) to drain itself (``Admin/DrainNode``
for ``$SHARDLINE_NODE_ID``, default the hostname), then watches that same node: while it
drains it answers with its own state; once it has left it stops answering, and a refused
connection *after* an accepted drain is the success, not an error.

The admin token: ``$SHARDLINE_ADMIN_TOKEN`` (the optional Secret), else the file the
entrypoint generated for this container when there is no Secret
(``$SHARDLINE_ADMIN_TOKEN_FILE``, default ``/tmp/shardline/admin-token``): a token only
this container knows, so the node can always be drained from inside its pod and from
nowhere else. With ``SHARDLINE_TLS_*`` set it speaks TLS with the node's certificate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from shardline.node._proto.shardline import v1
from shardline.node.sdk.codec import WireCodec
from shardline.node.sdk.tls import TlsFiles, client_context

TOKEN_FILE_DEFAULT = "/tmp/shardline/admin-token"
LOOPBACK = "127.0.0.1"
NOT_SENT = "drain not sent"
POLL_S = 0.5  # how often the draining node is asked for its state


def admin_token() -> str:
    """$SHARDLINE_ADMIN_TOKEN, else the container's generated token file ('' if neither)."""
    token = os.environ.get("SHARDLINE_ADMIN_TOKEN", "").strip()
    if token:
        return token
    path = Path(os.environ.get("SHARDLINE_ADMIN_TOKEN_FILE") or TOKEN_FILE_DEFAULT)
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _gone(exc: BaseException) -> bool:
    """The node no longer answers: it has exited (refused, reset, closed)."""
    return isinstance(exc, OSError | StreamTerminatedError | ProtocolError)


async def drain(
    host: str,
    port: int,
    node_id: str,
    token: str,
    *,
    timeout_s: float = 110.0,
    tls: TlsFiles | None = None,
    say: Callable[[str], object] = print,
) -> str | None:
    """Drain ``node_id`` through the node at ``host:port`` and wait until it has left.
    None on success, else why not (one line)."""
    out = say
    started = time.monotonic()
    metadata = [("authorization", f"Bearer {token}")] if token else []

    def channel() -> Channel:
        return Channel(host, port, codec=WireCodec(), ssl=client_context(tls) if tls else None)

    ch = channel()
    try:
        reply = await v1.AdminStub(ch).drain_node(
            v1.DrainNodeRequest(node_id=node_id), timeout=30, metadata=metadata
        )
    except GRPCError as exc:
        if exc.status is Status.UNIMPLEMENTED:  # a standalone node: SIGTERM drains it
            out("standalone node: nothing to hand over; SIGTERM stops it gracefully")
            return None
        hint = ""
        if exc.status is Status.PERMISSION_DENIED:
            hint = " (token: $SHARDLINE_ADMIN_TOKEN, else $SHARDLINE_ADMIN_TOKEN_FILE)"
        return f"drain refused: {exc.status.name}: {exc.message}{hint}"
    except Exception as exc:
        return f"{NOT_SENT} to {host}:{port}: {type(exc).__name__}: {exc}"
    finally:
        ch.close()
    out(reply.message)
    state = ""
    while time.monotonic() - started < timeout_s:
        ch = channel()
        try:
            table = await v1.ClusterStub(ch).get_routing_table(
                v1.GetRoutingTableRequest(), timeout=5
            )
        except Exception as exc:
            if _gone(exc) or (isinstance(exc, GRPCError) and exc.status is Status.UNAVAILABLE):
                out(f"{node_id} drained and left in {time.monotonic() - started:.1f}s")
                return None
            return f"{node_id}: {type(exc).__name__}: {exc}"
        finally:
            ch.close()
        me = next((m for m in table.members if m.node_id == node_id), None)
        if me is None:
            out(f"{node_id} drained and left in {time.monotonic() - started:.1f}s")
            return None
        now = f"{me.state}, holding {len(me.models)} models"
        if now != state:
            out(f"  {node_id}: {now}")
            state = now
        await asyncio.sleep(POLL_S)  # polling another process's state over gRPC
    return f"{node_id} still in the cluster after {timeout_s:.0f}s"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--host", default=None, help="dial this address only")
    parser.add_argument("--port", type=int, default=int(os.environ.get("SHARDLINE_PORT") or 7400))
    parser.add_argument(
        "--node-id", default=os.environ.get("SHARDLINE_NODE_ID") or socket.gethostname()
    )
    parser.add_argument(
        "--timeout", type=float, default=110.0, help="seconds (keep under the pod's grace)"
    )
    args = parser.parse_args(argv)
    try:
        tls = TlsFiles.from_env()
    except ValueError as exc:
        print(f"drain not sent: {exc}")
        return 1
    advertised = os.environ.get("SHARDLINE_ADVERTISE_HOST")
    hosts = (
        [args.host] if args.host else list(dict.fromkeys(h for h in (LOOPBACK, advertised) if h))
    )
    reason: str | None = "no address to dial"
    for host in hosts:
        reason = asyncio.run(
            drain(host, args.port, args.node_id, admin_token(), timeout_s=args.timeout, tls=tls)
        )
        if reason is None:
            return 0
        if not reason.startswith(NOT_SENT):
            break
    print(reason)
    return 1


if __name__ == "__main__":
    sys.exit(main())
