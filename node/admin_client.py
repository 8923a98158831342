"""Client side of ``shardline.v1.Admin`` (used by the CLI and the tests)."""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import Any

from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from node._proto.shardline import v1
from node.client import parse_target
from node.codec import WireCodec
from node.tls import TlsFiles, client_context

TOKEN_ENV = "SHARDLINE_ADMIN_TOKEN"


class AdminError(Exception):
    def __init__(self, status: Status, message: str) -> None:
        super().__init__(f"{status.name}: {message}")
        self.status = status
        self.message = message


def resolve_token(token: str | None, cluster: str = "local") -> str:
    """--token, else $SHARDLINE_ADMIN_TOKEN, else the token `shardline up` wrote."""
    if token:
        return token
    env = os.environ.get(TOKEN_ENV)
    if env:
        return env
    path = Path.cwd() / ".state" / cluster / "admin-token"
    return path.read_text().strip() if path.exists() else ""


class AdminClient:
    def __init__(
        self, target: str, token: str, *, timeout_s: float = 30.0, tls: TlsFiles | None = None
    ) -> None:
        host, port = parse_target(target)
        tls = tls if tls is not None else TlsFiles.from_env()
        ssl_context = client_context(tls) if tls is not None else None
        self.channel = Channel(host, port, codec=WireCodec(), ssl=ssl_context)
        self.stub = v1.AdminStub(self.channel)
        self.metadata = [("authorization", f"Bearer {token}")] if token else []
        self.timeout_s = timeout_s

    async def call(self, method: str, request: Any) -> Any:
        try:
            return await getattr(self.stub, method)(
                request, timeout=self.timeout_s, metadata=self.metadata
            )
        except GRPCError as exc:
            raise AdminError(exc.status, exc.message or "") from None
        except (OSError, StreamTerminatedError, ProtocolError) as exc:
            raise AdminError(Status.UNAVAILABLE, str(exc)) from None

    def close(self) -> None:
        self.channel.close()

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
