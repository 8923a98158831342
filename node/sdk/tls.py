"""TLS for the node: optional TLS for clients, mutual TLS between peers.

One gRPC port serves clients and peers. With TLS configured the server presents its
certificate and *asks* for a client certificate (``CERT_OPTIONAL``): a certificate that
is not signed by the cluster CA fails the handshake; a client without one may call the
client API (``Inference``, ``Cluster``, health) but not ``Peer`` or ``Admin``, which need
a verified peer certificate (``peer_verified``). Peers dial each other with their own
certificate (mutual TLS). Certificates come from PEM files (``shardline certs`` makes a
development CA and node certificates).
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TLS_ENV = ("SHARDLINE_TLS_CA", "SHARDLINE_TLS_CERT", "SHARDLINE_TLS_KEY")


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("TLS: give both a certificate and its key, or neither")
        for path in (self.ca, self.cert, self.key):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"TLS: no such file {path}")

    @classmethod
    def from_env(cls) -> TlsFiles | None:
        """$SHARDLINE_TLS_CA [+ _CERT, _KEY], for the CLI and other clients."""
        ca, cert, key = (os.environ.get(name) for name in TLS_ENV)
        if not ca:
            return None
        return cls(Path(ca), Path(cert) if cert else None, Path(key) if key else None)


def server_context(files: TlsFiles) -> ssl.SSLContext:
    if files.cert is None or files.key is None:
        raise ValueError("TLS: a node needs its own certificate and key")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(files.ca))
    ctx.load_cert_chain(str(files.cert), str(files.key))
    ctx.verify_mode = ssl.CERT_OPTIONAL  # verified when given; required by Peer/Admin
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"])
    return ctx


def client_context(files: TlsFiles) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files.ca))
    if files.cert is not None and files.key is not None:
        ctx.load_cert_chain(str(files.cert), str(files.key))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"])
    return ctx


def peer_verified(stream: Any) -> bool:
    """The caller presented a certificate the handshake verified against the cluster CA."""
    peer = getattr(stream, "peer", None)
    if peer is None:
        return False
    try:
        return bool(peer.cert())
    except (ValueError, OSError):
        return False
