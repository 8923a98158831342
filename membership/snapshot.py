"""The node's view of desired state: an immutable snapshot of the cluster's etcd prefix.

Pure core: :class:`ClusterSnapshot` (``from_kvs`` and ``apply``) works on keys relative to
the cluster prefix (``nodes/n1``, ``workflows/w/3``, ``objectives/o``) and never does I/O.
``apply`` returns a new snapshot and ignores events at or below the snapshot's revision,
so replaying events is harmless.

Thin shell: :class:`SnapshotWatcher` reads the prefix once (revision R), then watches from
R+1. Each etcd revision (one atomic write) produces one new snapshot, swapped atomically
into ``.current`` and handed to every subscriber. A broken watch reconnects with backoff
and resumes from the last revision + 1, so nothing is missed or seen twice; if that
revision was compacted meanwhile it re-reads everything and emits the resulting snapshot.
While etcd is unreachable ``.current`` stays the last snapshot and ``.connected`` is False.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import aetcd

from shardline.membership.etcd import (
    ControlPlaneUnavailable,
    RevisionBatch,
    WatchCompacted,
    WatchReset,
    cluster_prefix,
    describe,
    endpoint_label,
    is_unavailable,
    unavailable_guard,
    watch_revisions,
)
from shardline.membership.loaded import LoadedSet
from shardline.membership.registry import NodeRecord

log = logging.getLogger(__name__)

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class KeyEvent:
    """A change of one key (relative to the cluster prefix); ``value`` None means deleted."""

    key: str
    value: bytes | None
    revision: int


def _json_object(value: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def _parse(key: str, value: bytes) -> tuple[str, str, Any] | None:
    """``(section, name, parsed value)``, or None for keys the snapshot does not hold."""
    parts = key.split("/")
    if parts[0] == "nodes" and len(parts) == 2:
        try:
            record = NodeRecord.from_json(value)
        except ValueError as exc:
            log.warning("ignoring bad node record at %s: %s", key, exc)
            return ("nodes", parts[1], None)
        if record.node_id != parts[1]:
            log.warning("ignoring node record at %s: it names node %s", key, record.node_id)
            return ("nodes", parts[1], None)
        return ("nodes", parts[1], record)
    if parts[0] == "workflows" and len(parts) == 3:
        return ("workflows", f"{parts[1]}@{parts[2]}", _json_object(value))
    if parts[0] == "objectives" and len(parts) == 2:
        return ("objectives", parts[1], _json_object(value))
    if parts[0] == "hot" and len(parts) == 2:
        doc = _json_object(value)
        copies = doc.get("copies") if doc is not None else None
        if isinstance(copies, bool) or not isinstance(copies, int) or not 0 <= copies <= 1000:
            log.warning("ignoring bad hot-copies record at %s", key)
            return ("hot", parts[1], None)
        return ("hot", parts[1], copies)
    if parts[0] == "loaded" and len(parts) == 2:
        try:
            loaded = LoadedSet.from_json(value)
        except ValueError as exc:
            log.warning("ignoring bad loaded-set record at %s: %s", key, exc)
            return ("loaded", parts[1], None)
        if loaded.node_id != parts[1]:
            log.warning("ignoring loaded-set record at %s: it names node %s", key, loaded.node_id)
            return ("loaded", parts[1], None)
        return ("loaded", parts[1], loaded)
    return None


def _section_key(key: str) -> tuple[str, str] | None:
    parts = key.split("/")
    if parts[0] in ("nodes", "objectives", "loaded", "hot") and len(parts) == 2:
        return (parts[0], parts[1])
    if parts[0] == "workflows" and len(parts) == 3:
        return ("workflows", f"{parts[1]}@{parts[2]}")
    return None


@dataclass(frozen=True)
class ClusterSnapshot:
    """Desired state at one etcd revision. Treat the documents inside as read-only."""

    revision: int = 0
    nodes: Mapping[str, NodeRecord] = field(default_factory=lambda: _EMPTY)
    workflows: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: _EMPTY)
    """``"name@version"`` -> workflow manifest document."""
    objectives: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: _EMPTY)
    """objective name -> current document ``{"revision", "config", "updated_at", "author"}``."""
    loaded: Mapping[str, LoadedSet] = field(default_factory=lambda: _EMPTY)
    """node id -> the models it holds (``shardline.membership.loaded``)."""
    hot: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    """model key -> extra copies its load asks for (``hot/<key>``, written by the node that
    decides for it: ``shardline.node.cluster.hot``)."""

    def __hash__(self) -> int:  # consistent with ==: equal snapshots have equal revisions
        return hash(self.revision)

    @classmethod
    def from_kvs(cls, kvs: Iterable[tuple[str, bytes]], revision: int) -> ClusterSnapshot:
        """The snapshot of a full read at ``revision`` (keys relative to the cluster prefix)."""
        sections: dict[str, dict[str, Any]] = {
            "nodes": {},
            "workflows": {},
            "objectives": {},
            "loaded": {},
            "hot": {},
        }
        for key, value in kvs:
            parsed = _parse(key, value)
            if parsed is not None and parsed[2] is not None:
                sections[parsed[0]][parsed[1]] = parsed[2]
        return cls(
            revision=revision,
            nodes=MappingProxyType(sections["nodes"]),
            workflows=MappingProxyType(sections["workflows"]),
            objectives=MappingProxyType(sections["objectives"]),
            loaded=MappingProxyType(sections["loaded"]),
            hot=MappingProxyType(sections["hot"]),
        )

    def apply(self, events: Iterable[KeyEvent], revision: int | None = None) -> ClusterSnapshot:
        """A new snapshot with ``events`` applied in order; events at or below our revision are
        skipped. ``revision`` (optional) is where the batch leaves the store, if it is higher
        than its last event. Returns ``self`` when nothing changes."""
        changed: dict[str, dict[str, Any]] = {}
        top = self.revision
        for ev in events:
            if ev.revision <= self.revision:
                continue
            top = max(top, ev.revision)
            where = _section_key(ev.key)
            if where is None:
                continue
            section, name = where
            parsed = None if ev.value is None else _parse(ev.key, ev.value)
            target = changed.get(section)
            if target is None:
                target = changed[section] = dict(getattr(self, section))
            if parsed is None or parsed[2] is None:
                target.pop(name, None)
            else:
                target[name] = parsed[2]
        if revision is not None:
            top = max(top, revision)
        if top == self.revision:
            return self
        return ClusterSnapshot(
            revision=top,
            nodes=MappingProxyType(changed["nodes"]) if "nodes" in changed else self.nodes,
            workflows=(
                MappingProxyType(changed["workflows"]) if "workflows" in changed else self.workflows
            ),
            objectives=(
                MappingProxyType(changed["objectives"])
                if "objectives" in changed
                else self.objectives
            ),
            loaded=MappingProxyType(changed["loaded"]) if "loaded" in changed else self.loaded,
            hot=MappingProxyType(changed["hot"]) if "hot" in changed else self.hot,
        )


# --------------------------------------------------------------------------- the shell

ClientFactory = Callable[[], Awaitable[aetcd.Client]]
Subscriber = Callable[[ClusterSnapshot], None]
_Waiter = tuple[Callable[[ClusterSnapshot], bool], "asyncio.Future[ClusterSnapshot]"]


@dataclass(frozen=True)
class WatcherConfig:
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    read_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError("WatcherConfig: need 0 < initial_backoff_s <= max_backoff_s")
        if not self.read_timeout_s > 0:
            raise ValueError("WatcherConfig.read_timeout_s must be > 0")


class SnapshotWatcher:
    """Keeps ``.current`` equal to the cluster prefix in etcd, one revision at a time."""

    def __init__(
        self,
        client_factory: ClientFactory,
        cluster: str,
        *,
        config: WatcherConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._factory = client_factory
        self._prefix = cluster_prefix(cluster)
        self._config = config or WatcherConfig()
        self._rng = rng or random.Random()
        self._current = ClusterSnapshot()
        self._connected = False
        self._synced = asyncio.Event()
        self._pulse = asyncio.Event()
        self._subscribers: list[Subscriber] = []
        self._queues: set[asyncio.Queue[ClusterSnapshot | None]] = set()
        self._waiters: list[_Waiter] = []
        self._task: asyncio.Task[None] | None = None
        self._address = "?"
        self._last_error: str = ""
        self.resyncs = 0
        """Full re-reads after the first one (compaction, or a store that went backwards)."""
        self.reconnects = 0
        """Watches re-created after the first one."""
        self._watches = 0
        self._backoff_s = self._config.initial_backoff_s

    @property
    def current(self) -> ClusterSnapshot:
        return self._current

    @property
    def connected(self) -> bool:
        return self._connected

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(snapshot)`` for every new snapshot, in order; returns unsubscribe.

        Callbacks run in the watcher's task: keep them quick (hand heavy work to a task)."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    async def snapshots(self) -> AsyncIterator[ClusterSnapshot]:
        """The current snapshot, then every new one until the watcher stops."""
        queue: asyncio.Queue[ClusterSnapshot | None] = asyncio.Queue()
        self._queues.add(queue)
        try:
            yield self._current
            while (snap := await queue.get()) is not None:
                yield snap
        finally:
            self._queues.discard(queue)

    async def start(self, wait_s: float | None = 10.0) -> None:
        """Start watching; with ``wait_s``, wait for the first snapshot (else raise
        ControlPlaneUnavailable; the watcher keeps trying in the background until ``stop``)."""
        if self._task is not None:
            raise RuntimeError("SnapshotWatcher already started")
        self._task = asyncio.create_task(self._run(), name=f"snapshot-watch {self._prefix!r}")
        if wait_s is not None:
            try:
                await asyncio.wait_for(self._synced.wait(), wait_s)
            except TimeoutError:
                raise ControlPlaneUnavailable(
                    self._address, self._last_error or f"no snapshot within {wait_s:g} s"
                ) from None

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._set_connected(False)
        for queue in self._queues:
            queue.put_nowait(None)

    async def __aenter__(self) -> SnapshotWatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_for(
        self, predicate: Callable[[ClusterSnapshot], bool], timeout_s: float = 10.0
    ) -> ClusterSnapshot:
        """The first snapshot, current or later, that satisfies ``predicate``. Every published
        snapshot is checked (none is skipped, however fast they come); TimeoutError if none."""
        if predicate(self._current):
            return self._current
        waiter: _Waiter = (predicate, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout_s):
                return await waiter[1]
        except TimeoutError:
            raise TimeoutError(
                f"no snapshot matched within {timeout_s:g} s (at revision "
                f"{self._current.revision}, connected={self._connected})"
            ) from None
        finally:
            self._waiters.remove(waiter)

    async def wait_connected(self, connected: bool = True, timeout_s: float = 10.0) -> None:
        """Wait until ``.connected`` equals ``connected``."""
        try:
            async with asyncio.timeout(timeout_s):
                while self._connected != connected:
                    await self._pulse.wait()
        except TimeoutError:
            raise TimeoutError(f"watcher not connected={connected} in {timeout_s:g} s") from None

    # ------------------------------------------------------------------ internals

    def _set_connected(self, value: bool) -> None:
        if self._connected != value:
            self._connected = value
            pulse, self._pulse = self._pulse, asyncio.Event()
            pulse.set()

    def _publish(self, snap: ClusterSnapshot) -> None:
        self._current = snap
        self._synced.set()
        for callback in list(self._subscribers):
            try:
                callback(snap)
            except Exception:
                log.exception("snapshot subscriber %r failed", callback)
        for queue in self._queues:
            queue.put_nowait(snap)
        for predicate, future in list(self._waiters):
            if future.done():
                continue
            try:
                if predicate(snap):
                    future.set_result(snap)
            except Exception as exc:
                future.set_exception(exc)

    def _relative(self, key: bytes) -> str:
        return key[len(self._prefix) :].decode("utf-8", errors="replace")

    async def _full_read(self, client: aetcd.Client) -> None:
        async with unavailable_guard(self._address, self._config.read_timeout_s):
            result = await client.get_prefix(self._prefix)
        kvs = [(self._relative(bytes(kv.key)), bytes(kv.value)) for kv in result.kvs]
        if self._synced.is_set():
            self.resyncs += 1
        self._publish(ClusterSnapshot.from_kvs(kvs, int(result.header.revision)))

    def _apply_batch(self, batch: RevisionBatch) -> None:
        events = [KeyEvent(self._relative(e.key), e.value, e.revision) for e in batch.events]
        snap = self._current.apply(events, batch.revision)
        if snap is not self._current:
            self._publish(snap)

    def _on_created(self) -> None:
        self._backoff_s = self._config.initial_backoff_s
        self._watches += 1
        self.reconnects = self._watches - 1
        self._last_error = ""
        self._set_connected(True)

    async def _run(self) -> None:
        need_read = True
        while True:
            client: aetcd.Client | None = None
            try:
                client = await self._factory()
                self._address = endpoint_label(client)
                if need_read:
                    await self._full_read(client)
                    need_read = False
                batches = watch_revisions(
                    client, self._prefix, self._current.revision + 1, on_created=self._on_created
                )
                async with contextlib.aclosing(batches):
                    async for batch in batches:
                        self._apply_batch(batch)
                raise ControlPlaneUnavailable(self._address, "watch stream ended")
            except (WatchCompacted, WatchReset) as exc:
                log.warning("snapshot watch: %s; re-reading the whole prefix", exc)
                need_read = True
                continue
            except Exception as exc:
                cause = describe(exc)
                if isinstance(exc, ControlPlaneUnavailable):
                    self._address, cause = exc.address, str(exc.cause)
                if not is_unavailable(exc):
                    log.warning("snapshot watch failed: %r", exc)
                elif self._connected or not self._last_error:  # once per outage
                    log.warning("snapshot watch: %s", ControlPlaneUnavailable(self._address, cause))
                self._last_error = cause
                self._set_connected(False)
            finally:
                if client is not None:
                    with contextlib.suppress(Exception):
                        await client.close()
            await asyncio.sleep(self._backoff_s * (0.5 + self._rng.random()))
            self._backoff_s = min(self._config.max_backoff_s, self._backoff_s * 2)
