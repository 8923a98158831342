"""Where clients call: node addresses and the standard gRPC service config.

``DEFAULT_TARGET`` (every command's default ``--target``), ``parse_target`` /
``parse_targets`` (``HOST:PORT``, several comma-separated or a list), ``grpc_target`` (a
grpcio multi-address target), ``service_config`` / ``grpc_channel_options`` (the shipped
``node/grpc_service_config.json``: round_robin, client-side health checking of
``shardline.v1.Inference``, a retry policy for UNAVAILABLE), and ``transport_failure`` (one
line for a call that got no gRPC answer). Standard library and grpclib only.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from grpclib.exceptions import ProtocolError, StreamTerminatedError

SERVICE_CONFIG_FILE = "grpc_service_config.json"
HEALTH_SERVICE = "shardline.v1.Inference"  # what clients health-check (follows /readyz)


#: Where every client and CLI command calls by default: node-1 of `shardline up`, and the
#: default port of `shardline serve` (the CLI also reads $SHARDLINE_TARGET).
DEFAULT_TARGET = "127.0.0.1:7401"


def parse_target(target: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> (host, port); ValueError names what is wrong."""
    host, sep, port = target.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"target must be HOST:PORT with a port in 1..65535, got {target!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def transport_failure(address: str, exc: BaseException) -> str:
    """One line for a call that got no gRPC answer: the node is down, or ``address`` is not a
    gRPC port (a metrics/HTTP port closes the HTTP/2 connection without an answer)."""
    if isinstance(exc, StreamTerminatedError | ProtocolError):
        return (
            f"{address}: closed the connection without a gRPC answer "
            f"({exc or type(exc).__name__}): is it a shardline node's gRPC port "
            "(not its metrics/HTTP port)?"
        )
    return f"{address}: {exc or type(exc).__name__}"


def parse_targets(target: str | Sequence[str]) -> list[str]:
    """``HOST:PORT``, several comma-separated (an ``ipv4:``/``ipv6:`` gRPC target prefix
    is accepted), or a list of them; each checked, duplicates dropped."""
    items = [target] if isinstance(target, str) else list(target)
    out: list[str] = []
    for item in items:
        for scheme in ("ipv4:", "ipv6:"):
            item = item.removeprefix(scheme)
        for address in item.split(","):
            address = address.strip()
            if address:
                parse_target(address)
                out.append(address)
    if not out:
        raise ValueError(f"no HOST:PORT in target {target!r}")
    return list(dict.fromkeys(out))


def service_config() -> dict[str, Any]:
    """The standard gRPC service config for shardline clients (the shipped JSON file):
    round_robin, client-side health checking of ``shardline.v1.Inference``, and a retry
    policy for UNAVAILABLE on Inference and Cluster."""
    text = resources.files("shardline.node").joinpath(SERVICE_CONFIG_FILE).read_text()
    config: dict[str, Any] = json.loads(text)
    return config


def grpc_target(addresses: str | Sequence[str]) -> str:
    """A grpcio target naming every node: ``ipv4:10.0.0.1:7400,10.0.0.2:7400`` (or
    ``ipv6:[…]:7400,…``). Host names are resolved here, once; for names that change, give
    grpcio ``dns:///NAME:PORT`` with one address record per node instead."""
    v4: list[str] = []
    v6: list[str] = []
    for address in parse_targets(addresses):
        host, port = parse_target(address)
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
            v4.extend(dict.fromkeys(f"{info[4][0]}:{port}" for info in infos))
            continue
        if ip.version == 4:
            v4.append(f"{ip}:{port}")
        else:
            v6.append(f"[{ip}]:{port}")
    if v4 and v6:
        raise ValueError("a gRPC target holds IPv4 or IPv6 addresses, not both")
    return f"ipv4:{','.join(v4)}" if v4 else f"ipv6:{','.join(v6)}"


def grpc_channel_options(config: Mapping[str, Any] | None = None) -> list[tuple[str, Any]]:
    """grpcio channel options that apply the service config (default: the shipped one)."""
    return [
        ("grpc.service_config", json.dumps(dict(config or service_config()))),
        ("grpc.enable_retries", 1),
    ]
