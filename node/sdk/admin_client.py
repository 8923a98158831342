"""Client side of ``shardline.v1.Admin`` (used by the CLI and the tests), and what every
CLI command shares: the default target and where the admin token is found.

Light on purpose: nothing here imports torch or the serving modules (the CLI's
non-serving commands and other tools import it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from shardline.node._proto.shardline import v1
from shardline.node.sdk.targets import DEFAULT_TARGET, parse_target, transport_failure
from shardline.node.sdk.tls import TlsFiles, client_context

REPO = Path(__file__).resolve().parents[2]

DEFAULT_PORT = parse_target(DEFAULT_TARGET)[1]
TARGET_ENV = "SHARDLINE_TARGET"

TOKEN_ENV = "SHARDLINE_ADMIN_TOKEN"
TOKEN_FILE_ENV = "SHARDLINE_ADMIN_TOKEN_FILE"
STATE_DIR_ENV = "SHARDLINE_STATE_DIR"
TOKEN_FILE_NAME = "admin-token"


class AdminError(Exception):
    def __init__(self, status: Status, message: str) -> None:
        super().__init__(f"{status.name}: {message}")
        self.status = status
        self.message = message


def state_root(state_dir: Path | str | None = None) -> Path:
    """Where ``shardline up`` keeps its clusters: ``state_dir``, else $SHARDLINE_STATE_DIR,
    else ``.state`` in the repository this package runs from (never the current directory;
    ``~/.local/state/shardline`` for an installed, non-editable package)."""
    if state_dir:
        return Path(state_dir)
    env = os.environ.get(STATE_DIR_ENV)
    if env:
        return Path(env)
    if (REPO / "pyproject.toml").is_file():  # a checkout (or an editable install)
        return REPO / ".state"
    return Path.home() / ".local" / "state" / "shardline"


@dataclass
class TokenLookup:
    """The token found (empty: none) and every place that was looked at, in order."""

    token: str = ""
    source: str = ""
    looked: list[str] = field(default_factory=list)

    def where(self) -> str:
        if self.token:
            return f"the admin token came from {self.source}"
        return "no admin token found; looked at " + ", ".join(self.looked)


def resolve_token(
    token: str | None, cluster: str = "local", state_dir: Path | str | None = None
) -> TokenLookup:
    """--token, else $SHARDLINE_ADMIN_TOKEN, else the file $SHARDLINE_ADMIN_TOKEN_FILE
    names, else the token `shardline up` wrote: STATE/<cluster>/admin-token, where STATE
    is --state-dir, $SHARDLINE_STATE_DIR or the repository's ``.state``."""
    looked = ["--token"]
    if token:
        return TokenLookup(token.strip(), "--token", looked)
    looked.append(f"${TOKEN_ENV}")
    env = os.environ.get(TOKEN_ENV, "").strip()
    if env:
        return TokenLookup(env, f"${TOKEN_ENV}", looked)
    file_env = os.environ.get(TOKEN_FILE_ENV, "").strip()
    paths = [(Path(file_env), f"${TOKEN_FILE_ENV}")] if file_env else []
    if not file_env:
        looked.append(f"${TOKEN_FILE_ENV}")
    paths.append((state_root(state_dir) / cluster / TOKEN_FILE_NAME, "the local cluster's file"))
    for path, what in paths:
        looked.append(f"{path} ({what})")
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text:
            return TokenLookup(text, str(path), looked)
    return TokenLookup("", "", looked)


class AdminClient:
    def __init__(
        self,
        target: str,
        token: str | TokenLookup,
        *,
        timeout_s: float = 30.0,
        tls: TlsFiles | None = None,
    ) -> None:
        host, port = parse_target(target)
        tls = tls if tls is not None else TlsFiles.from_env()
        ssl_context = client_context(tls) if tls is not None else None
        self.target = target
        self.lookup = token if isinstance(token, TokenLookup) else None
        secret = token.token if isinstance(token, TokenLookup) else token
        self.channel = Channel(host, port, ssl=ssl_context)  # betterproto messages: ProtoCodec
        self.stub = v1.AdminStub(self.channel)
        self.metadata = [("authorization", f"Bearer {secret}")] if secret else []
        self.timeout_s = timeout_s

    async def call(self, method: str, request: Any) -> Any:
        try:
            return await getattr(self.stub, method)(
                request, timeout=self.timeout_s, metadata=self.metadata
            )
        except GRPCError as exc:
            message = exc.message or ""
            if exc.status is Status.PERMISSION_DENIED and self.lookup is not None:
                message = f"{message} ({self.lookup.where()})"
            raise AdminError(exc.status, message) from None
        except TimeoutError:
            raise AdminError(
                Status.DEADLINE_EXCEEDED, f"no answer from {self.target} in {self.timeout_s:g}s"
            ) from None
        except (OSError, StreamTerminatedError, ProtocolError) as exc:
            raise AdminError(Status.UNAVAILABLE, unreachable(self.target, exc)) from None

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


def unreachable(target: str, exc: BaseException) -> str:
    """One line for a target that does not answer gRPC (down, or not a gRPC port)."""
    if isinstance(exc, StreamTerminatedError | ProtocolError):
        return transport_failure(target, exc)
    return f"cannot reach {target}: {exc or type(exc).__name__}"
