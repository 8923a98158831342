"""Container health check: ``grpc.health.v1.Health/Check`` against the node in this container.

Exit status 0 when the node answers SERVING, 1 otherwise (Docker's HEALTHCHECK contract;
the reason goes to stdout, which ``docker inspect`` shows in the health log).

It dials ``127.0.0.1:$SHARDLINE_PORT`` first (the entrypoint binds 0.0.0.0); should a node
have been started bound to one address only, it then dials ``$SHARDLINE_ADVERTISE_HOST``
(or, unset, this container's own address, as the entrypoint picks it). ``--host`` pins a
single address.

With ``SHARDLINE_TLS_CA`` set (the node then serves TLS only) the check speaks TLS,
verifying the node against that CA and presenting ``SHARDLINE_TLS_CERT`` /
``SHARDLINE_TLS_KEY`` when given; the node's certificate must cover the address dialled
(``127.0.0.1`` or the advertised name).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import ssl
import sys
from collections.abc import Sequence

from grpclib.client import Channel
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

LOOPBACK = "127.0.0.1"


def _own_address() -> str | None:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return None


def candidate_hosts(pinned: str | None) -> list[str]:
    """Where to look for the node, in order (duplicates removed)."""
    if pinned:
        return [pinned]
    advertised = os.environ.get("SHARDLINE_ADVERTISE_HOST") or _own_address()
    return list(dict.fromkeys(h for h in (LOOPBACK, advertised) if h))


def tls_context() -> ssl.SSLContext | None:
    """A client TLS context from ``SHARDLINE_TLS_*``, or None for plaintext."""
    ca = os.environ.get("SHARDLINE_TLS_CA")
    if not ca:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    cert, key = os.environ.get("SHARDLINE_TLS_CERT"), os.environ.get("SHARDLINE_TLS_KEY")
    if cert and key:
        ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    return ctx


async def check(
    host: str, port: int, service: str, timeout_s: float, tls: ssl.SSLContext | None = None
) -> str:
    """The node's serving status name (``SERVING``, ``NOT_SERVING``, …); raises on errors."""
    channel = Channel(host, port, ssl=tls)
    try:
        reply = await HealthStub(channel).Check(
            HealthCheckRequest(service=service), timeout=timeout_s
        )
    finally:
        channel.close()
    assert reply is not None
    return str(HealthCheckResponse.ServingStatus.Name(reply.status))


async def probe(
    hosts: Sequence[str],
    port: int,
    service: str,
    timeout_s: float,
    tls: ssl.SSLContext | None = None,
) -> str | None:
    """None when a host answers SERVING, else why not (one line)."""
    reasons = []
    for host in hosts:
        try:
            status = await check(host, port, service, timeout_s, tls)
        except GRPCError as exc:
            return f"{host}:{port}: {exc.status.name}: {exc.message}"
        except Exception as exc:  # refused, timed out, reset: try the next address
            reasons.append(f"{host}:{port}: {type(exc).__name__}: {exc}".rstrip(": "))
            continue
        if status == "SERVING":
            return None
        return f"{host}:{port}: {status}"
    return "; ".join(reasons) or "no address to check"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--host", default=None, help="check this address only")
    parser.add_argument("--port", type=int, default=int(os.environ.get("SHARDLINE_PORT") or 7400))
    parser.add_argument("--service", default="", help="gRPC service name ('' = the whole node)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per address")
    args = parser.parse_args(argv)
    hosts = candidate_hosts(args.host)
    try:
        tls = tls_context()
    except (OSError, ssl.SSLError) as exc:
        print(f"unhealthy: TLS files: {exc}")
        return 1
    reason = asyncio.run(probe(hosts, args.port, args.service, args.timeout, tls))
    if reason is None:
        print("SERVING")
        return 0
    print(f"unhealthy: {reason}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
