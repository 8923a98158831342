"""Which models each node holds: one record per node in etcd, not a list in gossip.

Why here: a node's loaded set grows with the catalog (hundreds of models) and a gossip
datagram does not (1 400 bytes). So a node gossips a fixed-size summary (in flight,
resident bytes, how many models, and the *version* of its loaded set:
``shardline.membership.swim_state.Load``) and publishes the set itself at
``<prefix>loaded/<node_id>`` in etcd, under the lease of its roster record. Every node
already watches the cluster prefix (``shardline.membership.snapshot``), so the record
reaches every node with the rest of the desired state, in revision order; a node that dies
loses its record with its lease; a restarted node overwrites it. A change costs one etcd
write and one watch event per node, however many models there are: one record holds up
to ``MAX_RECORD_BYTES`` (about 4 000 model keys of the longest allowed kind; a node keeps
at most ``--max-resident-models`` resident, validated against that bound at start-up).

Pure core: :class:`LoadedSet` (the record, ``to_json`` / ``from_json``). Shell:
:class:`LoadedPublisher` writes the latest set, coalescing changes that come while a
write is in flight, retrying while etcd is away, and re-putting the record when the lease
changes (a re-registration).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the pure core is imported by the CLI: no etcd client before it is used
    import aetcd

log = logging.getLogger(__name__)

SECTION = "loaded"
MAX_RECORD_BYTES = 1_000_000
"""The largest loaded-set record a node writes (etcd refuses requests over 1.5 MiB)."""
MAX_KEY_CHARS = 256
"""Longest model key a record may list (a manifest's name and version, 64 characters each,
give at most 129; the same bound as a request's ``model_override``)."""
_EMPTY: Mapping[str, int] = MappingProxyType({})


def loaded_key(cluster: str, node_id: str) -> bytes:
    from shardline.membership.etcd import cluster_prefix, validate_segment

    return cluster_prefix(cluster) + f"{SECTION}/{validate_segment('node id', node_id)}".encode()


def _count(doc: Mapping[str, object], name: str) -> int:
    value = doc.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return value


def _time(doc: Mapping[str, object]) -> float:
    value = doc.get("published_at", 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"published_at must be a number >= 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class LoadedSet:
    """What one node holds: resident models with their bytes, loads in progress, counters."""

    node_id: str
    version: int = 0
    models: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    """Resident model key -> bytes it takes (measured after the load)."""
    loading: frozenset[str] = frozenset()
    loads: int = 0
    """Loads completed since the node started."""
    evictions: int = 0
    """Models evicted (least recently used, to make room) since the node started."""
    budget_bytes: int = 0
    """The node's model memory budget (0: none declared)."""
    settled: bool = False
    """Placement has nothing more to load at once: a model placed here and not resident
    stays lazy (loads on its first request). Deploy and ``shardline up`` wait for it."""
    published_at: float = 0.0
    """Wall-clock time the node wrote it (its readers measure the propagation lag)."""
    keys: frozenset[str] = field(init=False, compare=False, repr=False)
    """The resident model keys (``models``' keys, as a set built once)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", frozenset(self.models))

    @property
    def resident_bytes(self) -> int:
        return sum(self.models.values())

    def to_json(self) -> bytes:
        doc = {
            "node_id": self.node_id,
            "version": self.version,
            "models": dict(sorted(self.models.items())),
            "loading": sorted(self.loading),
            "loads": self.loads,
            "evictions": self.evictions,
            "budget_bytes": self.budget_bytes,
            "published_at": self.published_at,
            "settled": self.settled,
        }
        data = json.dumps(doc, separators=(",", ":")).encode()
        if len(data) > MAX_RECORD_BYTES:
            raise ValueError(
                f"the loaded-set record of {self.node_id} would take {len(data)} bytes "
                f"({len(self.models)} models), over the {MAX_RECORD_BYTES}-byte limit; "
                "lower --max-resident-models"
            )
        return data

    @classmethod
    def from_json(cls, data: bytes | str) -> LoadedSet:
        """Parse a record (ValueError with the reason for anything malformed)."""
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        node_id = doc.get("node_id")
        if not isinstance(node_id, str) or not node_id:
            raise ValueError("node_id is missing")
        models = doc.get("models", {})
        loading = doc.get("loading", [])
        if not isinstance(models, dict) or not isinstance(loading, list):
            raise ValueError("models must be an object and loading a list")
        for key, size in models.items():
            if not 0 < len(key) <= MAX_KEY_CHARS:
                raise ValueError(f"model key of {len(key)} characters")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ValueError(f"bytes of {key} must be an int >= 0")
        if not all(isinstance(k, str) and 0 < len(k) <= MAX_KEY_CHARS for k in loading):
            raise ValueError("loading must list model keys")
        return cls(
            node_id=node_id,
            version=_count(doc, "version"),
            models=MappingProxyType(dict(models)),
            loading=frozenset(loading),
            loads=_count(doc, "loads"),
            evictions=_count(doc, "evictions"),
            budget_bytes=_count(doc, "budget_bytes"),
            published_at=_time(doc),
            settled=doc.get("settled") is True,
        )


def lazy_there(size: int, budget: int, resident: int, settled: bool) -> bool:
    """Is a model of ``size`` bytes, placed on a node with this ``budget``, ``resident`` bytes
    and ``settled`` placement, lazy there (it loads on its first request) rather than about
    to be loaded? It must fit the budget at all; then either the node's placement settled
    without it, or the models resident fill the budget. (Pinned models are never lazy: the
    caller checks.) Used by ``objective set``, ``deploy`` and a local cluster's readiness."""
    if not budget or size > budget:
        return False
    return settled or budget < resident + size


class LoadedPublisher:
    """Keeps ``<prefix>loaded/<node_id>`` equal to the latest :class:`LoadedSet`.

    ``publish`` never blocks: it replaces the pending set and wakes the writer task, which
    writes the newest one (changes made during a write are coalesced into the next). The
    record is put under ``lease()`` (the roster lease), and put again whenever that lease
    changes. While etcd is unreachable the writer retries with a bounded backoff.
    """

    def __init__(
        self,
        client: aetcd.Client,
        cluster: str,
        node_id: str,
        lease: Callable[[], int | None],
        *,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        """Wall-clock time stamped on each record (readers measure propagation with it)."""
        self._client = client
        self._key = loaded_key(cluster, node_id)
        self._lease = lease
        self._timeout_s = timeout_s
        self._pending: LoadedSet | None = None
        self._written: tuple[int, int | None] | None = None  # (version, lease) last written
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.writes = 0
        self.written = asyncio.Event()
        """Set after each successful write (tests and benches wait on it)."""

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"loaded-publisher {self._key!r}")

    def publish(self, loaded: LoadedSet) -> None:
        self._pending = loaded
        self._wake.set()

    def lease_changed(self) -> None:
        """Our record is gone from etcd (the roster lease was re-granted, or someone deleted
        it): put the newest set again."""
        if self._written is not None:
            self._written = None
            self._wake.set()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        from shardline.membership.etcd import is_unavailable, unavailable_guard

        backoff_s = 0.05
        while True:
            await self._wake.wait()
            self._wake.clear()
            loaded, lease = self._pending, self._lease()
            if loaded is None or lease is None or self._written == (loaded.version, lease):
                continue
            try:
                data = replace(loaded, published_at=self._clock()).to_json()
                async with unavailable_guard("etcd", self._timeout_s):
                    await self._client.put(self._key, data, lease=lease)
            except Exception as exc:
                if not is_unavailable(exc):
                    log.warning("could not publish the loaded set: %s", exc)
                self._wake.set()  # retry the newest set after a pause
                await asyncio.sleep(backoff_s)  # a retry timer: there is no event to wait on
                backoff_s = min(backoff_s * 2, 2.0)
                continue
            backoff_s = 0.05
            self._written = (loaded.version, lease)
            self.writes += 1
            event, self.written = self.written, asyncio.Event()
            event.set()
