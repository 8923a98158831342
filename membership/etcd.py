"""The etcd shell of the control plane: endpoint config, client, key layout, errors, watch.

Everything here talks to etcd through ``aetcd`` (asyncio). The rest of ``membership`` uses:

- :class:`EtcdEndpoint` and :func:`connect` to get a client whose gRPC channel reconnects
  quickly after an etcd restart (gRPC's default reconnect backoff grows to two minutes);
- :func:`unavailable_guard` to turn "etcd is not there" into :class:`ControlPlaneUnavailable`
  with a bounded deadline, so no control-plane write hangs;
- the key layout (:func:`cluster_prefix` and friends), the one place that spells keys;
- :func:`watch_revisions`, a prefix watch driven on aetcd's raw ``Watch`` stub. aetcd's own
  ``Client.watch`` flattens responses into single events and drops the header; driving the
  stream directly keeps revision boundaries (one etcd revision = one atomic write = one
  snapshot), sees the compaction cancel, and detects a store whose revision went backwards.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aetcd
import grpc
from aetcd import rpc
from aetcd import transactions as aetcd_transactions
from aetcd import watcher as aetcd_watcher
from aetcd.utils import prefix_range_end

__all__ = [
    "ControlPlaneUnavailable",
    "EtcdEndpoint",
    "LeaseCompare",
    "RawEvent",
    "RevisionBatch",
    "WatchCompacted",
    "WatchReset",
    "cluster_prefix",
    "connect",
    "describe",
    "endpoint_label",
    "get_at_revision",
    "is_unavailable",
    "node_key",
    "objective_history_key",
    "objective_history_prefix",
    "objective_key",
    "unavailable_guard",
    "validate_segment",
    "watch_revisions",
    "workflow_key",
]

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
HISTORY_DIGITS = 10


class ControlPlaneUnavailable(Exception):
    """etcd could not be reached (refused, timed out, no leader): the write did not happen."""

    def __init__(self, address: str, cause: object) -> None:
        self.address = address
        self.cause = cause
        super().__init__(
            f"etcd at {address} unreachable: {cause}; the node keeps serving its last snapshot"
        )


@dataclass(frozen=True)
class EtcdEndpoint:
    """Where etcd is, how to authenticate (user/password, TLS) and how long to wait for it."""

    host: str = "127.0.0.1"
    port: int = 2379
    request_timeout_s: float = 3.0
    """Deadline of every unary call (get, put, txn, lease); a write never waits longer."""
    connect_timeout_s: float = 3.0
    """Bound on the reachability probe made by :func:`connect`."""
    max_reconnect_backoff_s: float = 1.0
    """Cap on gRPC's channel reconnect backoff, so a restarted etcd is found again fast."""
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    """TLS: the CA that signed etcd's certificate (turns TLS on)."""
    cert_file: str | None = None
    key_file: str | None = None
    """TLS client certificate and key, for etcd's --client-cert-auth."""

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("EtcdEndpoint.host must not be empty")
        if not 0 < self.port < 65536:
            raise ValueError(f"EtcdEndpoint.port must be in 1..65535, not {self.port}")
        for name in ("request_timeout_s", "connect_timeout_s", "max_reconnect_backoff_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"EtcdEndpoint.{name} must be > 0, not {getattr(self, name)}")
        if (self.username is None) != (self.password is None):
            raise ValueError("EtcdEndpoint: give both username and password, or neither")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("EtcdEndpoint: give both cert_file and key_file, or neither")
        if self.cert_file is not None and self.ca_file is None:
            raise ValueError("EtcdEndpoint: a client certificate needs ca_file (TLS)")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, address: str, **kwargs: Any) -> EtcdEndpoint:
        """``"host:port"`` (or ``"http://host:port"``) -> endpoint."""
        text = address.removeprefix("http://")
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"etcd address must look like host:port, not {address!r}")
        return cls(host=host, port=int(port), **kwargs)


def endpoint_label(client: aetcd.Client) -> str:
    """``host:port`` of a client, for error messages (aetcd keeps them as private fields)."""
    return f"{getattr(client, '_host', '?')}:{getattr(client, '_port', '?')}"


def is_unavailable(exc: BaseException) -> bool:
    """Does this error mean "etcd is not reachable right now" (as opposed to a bad request)?"""
    if isinstance(exc, ControlPlaneUnavailable | TimeoutError | ConnectionError):
        return True
    if isinstance(exc, aetcd.ConnectionFailedError | aetcd.ConnectionTimeoutError):
        return True
    cause = exc.__cause__ if isinstance(exc, aetcd.ClientError) else exc
    if isinstance(cause, rpc.AioRpcError):
        return cause.code() in (
            rpc.StatusCode.UNAVAILABLE,
            rpc.StatusCode.DEADLINE_EXCEEDED,
            rpc.StatusCode.CANCELLED,
        )
    return False


def describe(exc: BaseException) -> str:
    """A one-line description of an etcd client error (gRPC errors print several lines)."""
    if isinstance(exc, rpc.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc) or type(exc).__name__


@asynccontextmanager
async def unavailable_guard(address: str, timeout_s: float) -> AsyncIterator[None]:
    """Run the block under ``timeout_s``; unreachable-etcd errors become ControlPlaneUnavailable."""
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except ControlPlaneUnavailable:
        raise
    except (TimeoutError, aetcd.ClientError, rpc.AioRpcError, OSError) as exc:
        if isinstance(exc, TimeoutError):
            raise ControlPlaneUnavailable(address, f"no answer within {timeout_s:g} s") from exc
        if is_unavailable(exc):
            raise ControlPlaneUnavailable(address, describe(exc)) from exc
        raise


def _credentials(endpoint: EtcdEndpoint) -> grpc.ChannelCredentials:
    def read(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    return grpc.ssl_channel_credentials(
        read(endpoint.ca_file), read(endpoint.key_file), read(endpoint.cert_file)
    )


class _TlsClient(aetcd.Client):  # type: ignore[misc]
    """aetcd always opens a plaintext channel; this one opens a TLS channel instead.

    Same steps as ``aetcd.Client.connect`` (channel, optional user/password token,
    stubs, watcher), with ``secure_channel``.
    """

    credentials: grpc.ChannelCredentials | None = None
    _is_connecting: bool

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        if self._is_connecting:
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        try:
            self._is_connecting = True
            target = f"{self._host}:{self._port}"
            self.channel = rpc.secure_channel(
                target, self.credentials, options=self._options.items()
            )
            if self._username is not None and self._password is not None:
                self.auth_stub = rpc.AuthStub(self.channel)
                request = rpc.AuthenticateRequest(name=self._username, password=self._password)
                resp = await self.auth_stub.Authenticate(request, timeout=self._timeout)
                self.metadata = (("token", resp.token),)
            self.kvstub = rpc.KVStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            self._watcher = aetcd_watcher.Watcher(
                rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
            )
            self._connected.set()
        finally:
            self._is_connecting = False


async def connect(endpoint: EtcdEndpoint, *, probe: bool = True) -> aetcd.Client:
    """A connected aetcd client; with ``probe``, check that etcd answers (else unavailable)."""
    backoff_ms = int(endpoint.max_reconnect_backoff_s * 1000)
    factory = _TlsClient if endpoint.ca_file else aetcd.Client
    client = factory(
        host=endpoint.host,
        port=endpoint.port,
        username=endpoint.username,
        password=endpoint.password,
        timeout=endpoint.request_timeout_s,  # aetcd says int; gRPC takes float seconds
        options={
            "grpc.initial_reconnect_backoff_ms": min(100, backoff_ms),
            "grpc.min_reconnect_backoff_ms": min(100, backoff_ms),
            "grpc.max_reconnect_backoff_ms": backoff_ms,
            # Detect a silently dead peer (partition) on open streams; etcd's default
            # keepalive enforcement allows a ping every 5 s while a stream is open.
            "grpc.keepalive_time_ms": 10_000,
            "grpc.keepalive_timeout_ms": 5_000,
        },
        connect_wait_timeout=int(max(1.0, endpoint.connect_timeout_s)),
    )
    if isinstance(client, _TlsClient):
        client.credentials = _credentials(endpoint)
    try:
        async with unavailable_guard(endpoint.address, endpoint.connect_timeout_s):
            await client.connect()
            if probe:
                await client.get(b"\0shardline-probe")
    except BaseException:
        await client.close()
        raise
    return client


# --------------------------------------------------------------------------- key layout


def validate_segment(what: str, value: str) -> str:
    """A name used inside a key: letters, digits, ``._-``, at most 128 chars; no ``/`` or ``@``."""
    if not isinstance(value, str) or not _SEGMENT.match(value):
        raise ValueError(
            f"{what} {value!r} is not a valid name: use letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit, at most 128 characters)"
        )
    return value


def cluster_prefix(cluster: str) -> bytes:
    """``/shardline/<cluster>/``: everything of one cluster lives under it."""
    return f"/shardline/{validate_segment('cluster name', cluster)}/".encode()


def node_key(cluster: str, node_id: str) -> bytes:
    return cluster_prefix(cluster) + f"nodes/{validate_segment('node id', node_id)}".encode()


def workflow_key(cluster: str, name: str, version: str) -> bytes:
    name = validate_segment("workflow name", name)
    version = validate_segment("workflow version", version)
    return cluster_prefix(cluster) + f"workflows/{name}/{version}".encode()


def objective_key(cluster: str, name: str) -> bytes:
    return cluster_prefix(cluster) + f"objectives/{validate_segment('objective', name)}".encode()


def objective_history_prefix(cluster: str, name: str) -> bytes:
    name = validate_segment("objective", name)
    return cluster_prefix(cluster) + f"objective_history/{name}/".encode()


def objective_history_key(cluster: str, name: str, revision: int) -> bytes:
    if revision < 1:
        raise ValueError(f"objective revisions start at 1, not {revision}")
    return objective_history_prefix(cluster, name) + f"{revision:0{HISTORY_DIGITS}d}".encode()


# --------------------------------------------------------------------------- reads


async def get_at_revision(client: aetcd.Client, key: bytes) -> tuple[Any | None, int]:
    """(the key's ``KeyValue`` or None, the store revision of the read): aetcd's ``get``
    drops the revision when the key is absent, and a watch must start right after it."""
    await client.connect()
    reply = await client.kvstub.Range(
        rpc.RangeRequest(key=key), timeout=client._timeout, metadata=client.metadata
    )
    return (reply.kvs[0] if reply.kvs else None), int(reply.header.revision)


class LeaseCompare(aetcd_transactions.BaseCompare):  # type: ignore[misc]
    """``tx`` compare on the lease a key is attached to (aetcd has value, version, create
    and mod only). A missing key compares as lease 0."""

    def build_compare(self, compare: Any) -> None:
        compare.target = rpc.Compare.LEASE
        compare.lease = int(self.value)


# --------------------------------------------------------------------------- watch


@dataclass(frozen=True)
class RawEvent:
    """One key change: ``value`` is None for a delete; ``revision`` is its mod revision."""

    key: bytes
    value: bytes | None
    revision: int
    lease: int = 0
    """The lease the key is attached to after a put (0: none, or a delete)."""


@dataclass(frozen=True)
class RevisionBatch:
    """All events of one etcd revision (one put, delete or transaction), in order."""

    revision: int
    events: tuple[RawEvent, ...]


class WatchCompacted(Exception):
    """The watch start revision was compacted away: the caller must re-read everything."""

    def __init__(self, compact_revision: int) -> None:
        self.compact_revision = compact_revision
        super().__init__(f"watch start revision compacted (etcd compacted to {compact_revision})")


class WatchReset(Exception):
    """etcd's revision is below where we are (a wiped or different cluster): re-read everything."""


def _split_by_revision(events: Any) -> Iterator[RevisionBatch]:
    current: list[RawEvent] = []
    for ev in events:
        kv = ev.kv
        raw = RawEvent(
            key=bytes(kv.key),
            value=None if ev.type == rpc.Event.DELETE else bytes(kv.value),
            revision=int(kv.mod_revision),
            lease=int(kv.lease),
        )
        if current and current[-1].revision != raw.revision:
            yield RevisionBatch(current[-1].revision, tuple(current))
            current = []
        current.append(raw)
    if current:
        yield RevisionBatch(current[-1].revision, tuple(current))


async def watch_revisions(
    client: aetcd.Client,
    prefix: bytes,
    start_revision: int,
    *,
    on_created: Callable[[], None] | None = None,
    single_key: bool = False,
) -> AsyncGenerator[RevisionBatch, None]:
    """Watch ``prefix`` from ``start_revision``, yielding one batch per etcd revision.

    With ``single_key``, ``prefix`` is one exact key (``nodes/n1`` without ``nodes/n10``).

    ``on_created()`` is called once the server has accepted the watch. Raises
    :class:`WatchCompacted` when ``start_revision`` was compacted, :class:`WatchReset` when the
    server's revision is below ``start_revision - 1``, and gRPC / aetcd errors when the stream
    breaks (see :func:`is_unavailable`). Cancelling the consumer cancels the stream.
    """
    await client.connect()
    stub = rpc.WatchStub(client.channel)
    create = rpc.WatchRequest(
        create_request=rpc.WatchCreateRequest(
            key=prefix,
            range_end=b"" if single_key else prefix_range_end(prefix),
            start_revision=start_revision,
        )
    )
    finished = asyncio.Event()  # the request side stays open until we are done watching

    async def requests() -> AsyncIterator[Any]:
        yield create
        await finished.wait()

    call = stub.Watch(requests(), metadata=client.metadata)
    try:
        async for resp in call:
            if resp.compact_revision:
                raise WatchCompacted(int(resp.compact_revision))
            if resp.canceled:
                raise aetcd.ClientError(f"watch canceled by etcd: {resp.cancel_reason or '?'}")
            if resp.created:
                if resp.header.revision < start_revision - 1:
                    raise WatchReset(
                        f"etcd is at revision {resp.header.revision}, "
                        f"below our revision {start_revision - 1}"
                    )
                if on_created is not None:
                    on_created()
            for batch in _split_by_revision(resp.events):
                yield batch
    finally:
        # grpc only stops its request-consuming task on cancel() of a call still running; after
        # the stream broke, ending our request iterator is what lets that task finish.
        finished.set()
        call.cancel()
