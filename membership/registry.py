"""The node roster in etcd: a node's record, bound to a lease it keeps alive itself.

``/shardline/<cluster>/nodes/<node_id>`` holds a :class:`NodeRecord` as JSON (with who holds
the id: address, pid, host, start time), attached to a lease of ``ttl_s``.
:class:`Registration` grants the lease, claims the key in one transaction (written only if
absent or already under our lease: a second process with the same node id is refused with
:class:`NodeIdTaken` naming the holder, after waiting at most the holder's remaining TTL in
case it is a crashed earlier run) and refreshes the lease every ``ttl/3`` in a task (aetcd
has no background keepalive). If the lease is gone when it refreshes (it expired while etcd
was unreachable, or someone revoked it), it grants a new one and claims the key again. A
watch on the key notices the record disappearing while the node runs, logs it and puts it
back. A crash stops the refreshes and etcd deletes the record when the lease expires; a
graceful stop revokes the lease, which deletes it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import aetcd

from shardline.membership.etcd import (
    ControlPlaneUnavailable,
    LeaseCompare,
    WatchCompacted,
    WatchReset,
    describe,
    endpoint_label,
    get_at_revision,
    is_unavailable,
    node_key,
    unavailable_guard,
    validate_segment,
    watch_revisions,
)

log = logging.getLogger(__name__)

MIN_TTL_S = 2
"""etcd's smallest lease with its default timing (1.5 election timeouts, rounded up)."""


class NodeState(StrEnum):
    JOINING = "joining"
    ACTIVE = "active"
    DRAINING = "draining"


def _address(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"NodeRecord.{field} must be a 'host:port' string, not {value!r}")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"NodeRecord.{field} must look like 'host:port', not {value!r}")
    return value


@dataclass(frozen=True)
class NodeRecord:
    """What the roster knows about a node (liveness and load come from gossip, not here)."""

    node_id: str
    grpc_address: str
    gossip_address: str
    zone: str = ""
    capacity: float = 1.0
    devices: tuple[str, ...] = ()
    version: str = ""
    state: NodeState = NodeState.JOINING
    hostname: str = ""
    """Holder identity (who runs this node id), shown when a second process claims the id."""
    pid: int = 0
    started_at: str = ""
    """ISO 8601 time the holding process started."""
    memory_budget: int = 0
    """Bytes of model memory the node may hold (``--memory-budget``); 0: not declared.
    Placement weighs nodes by it (``shardline.router.placement_policy``)."""

    def __post_init__(self) -> None:
        validate_segment("node id", self.node_id)
        _address("grpc_address", self.grpc_address)
        _address("gossip_address", self.gossip_address)
        if not isinstance(self.zone, str):
            raise ValueError(f"NodeRecord.zone must be a string, not {self.zone!r}")
        if isinstance(self.capacity, bool) or not isinstance(self.capacity, int | float):
            raise ValueError(f"NodeRecord.capacity must be a number, not {self.capacity!r}")
        if not (math.isfinite(self.capacity) and self.capacity > 0):
            raise ValueError(f"NodeRecord.capacity must be finite and > 0, not {self.capacity}")
        if not isinstance(self.devices, tuple) or not all(
            isinstance(d, str) and d for d in self.devices
        ):
            raise ValueError(f"NodeRecord.devices must be a tuple of names, not {self.devices!r}")
        if not isinstance(self.version, str):
            raise ValueError(f"NodeRecord.version must be a string, not {self.version!r}")
        if not isinstance(self.state, NodeState):
            raise ValueError(f"NodeRecord.state must be a NodeState, not {self.state!r}")
        for name in ("hostname", "started_at"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"NodeRecord.{name} must be a string, not {getattr(self, name)!r}")
        if isinstance(self.pid, bool) or not isinstance(self.pid, int) or self.pid < 0:
            raise ValueError(f"NodeRecord.pid must be an integer >= 0, not {self.pid!r}")
        budget = self.memory_budget
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
            raise ValueError(f"NodeRecord.memory_budget must be an integer >= 0, not {budget!r}")

    def holder(self) -> str:
        """Who holds this node id, for error messages: address, pid, host, start time."""
        parts = [f"gRPC {self.grpc_address}"]
        if self.pid:
            parts.append(f"pid {self.pid}" + (f" on {self.hostname}" if self.hostname else ""))
        elif self.hostname:
            parts.append(f"host {self.hostname}")
        if self.started_at:
            parts.append(f"started {self.started_at}")
        return ", ".join(parts)

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "node_id": self.node_id,
            "grpc_address": self.grpc_address,
            "gossip_address": self.gossip_address,
            "zone": self.zone,
            "capacity": float(self.capacity),
            "devices": list(self.devices),
            "version": self.version,
            "state": self.state.value,
        }
        # The holder fields only when known (records of simulated nodes stay as they were).
        if self.hostname:
            doc["hostname"] = self.hostname
        if self.pid:
            doc["pid"] = self.pid
        if self.started_at:
            doc["started_at"] = self.started_at
        if self.memory_budget:
            doc["memory_budget"] = self.memory_budget
        return json.dumps(
            doc,
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> NodeRecord:
        """Parse and validate (unknown fields are ignored: newer writers); bad data: ValueError."""
        try:
            doc: Any = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"NodeRecord is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise ValueError(f"NodeRecord must be a JSON object, not {type(doc).__name__}")
        missing = [f for f in ("node_id", "grpc_address", "gossip_address") if f not in doc]
        if missing:
            raise ValueError(f"NodeRecord is missing {', '.join(missing)}")
        devices = doc.get("devices", [])
        if not isinstance(devices, list):
            raise ValueError(f"NodeRecord.devices must be a list, not {devices!r}")
        try:
            state = NodeState(doc.get("state", NodeState.JOINING.value))
        except ValueError as exc:
            raise ValueError(
                f"NodeRecord.state must be one of {[s.value for s in NodeState]}, "
                f"not {doc.get('state')!r}"
            ) from exc
        return cls(
            node_id=doc["node_id"],
            grpc_address=doc["grpc_address"],
            gossip_address=doc["gossip_address"],
            zone=doc.get("zone", ""),
            capacity=doc.get("capacity", 1.0),
            devices=tuple(devices),
            version=doc.get("version", ""),
            state=state,
            hostname=doc.get("hostname", ""),
            pid=doc.get("pid", 0),
            started_at=doc.get("started_at", ""),
            memory_budget=doc.get("memory_budget", 0),
        )


def _lease_not_found(exc: BaseException) -> bool:
    return isinstance(exc, aetcd.ClientError) and "lease not found" in str(exc)


EXPIRY_MARGIN_S = 2.0
"""Beyond a lease's remaining TTL, how long etcd may take to delete its keys (it checks
expiries every 0.5 s, then commits the revoke through raft)."""


class NodeIdTaken(ValueError):
    """Another node holds this node id: its record is in etcd under a lease that is still
    being refreshed (or under no lease at all). Nothing of ours was written."""

    def __init__(
        self,
        node_id: str,
        cluster: str,
        holder: NodeRecord | None,
        lease_id: int,
        waited_s: float | None = None,
    ) -> None:
        self.node_id = node_id
        self.holder = holder
        self.lease_id = lease_id
        who = holder.holder() if holder is not None else "a record this version cannot read"
        if lease_id == 0:
            why = (
                "its record has no lease, so it never expires (written by hand?); if no node "
                f"runs as {node_id}, delete it: shardline node remove {node_id} --force"
            )
        else:
            waited = f", still refreshed after {waited_s:.0f} s" if waited_s is not None else ""
            why = (
                f"etcd lease {lease_id:x}{waited}; start this node with another --node-id, "
                "or stop that node first"
            )
        super().__init__(
            f"node id {node_id!r} is already held in cluster {cluster!r} by a live node "
            f"({who}): {why}"
        )


def _parse_holder(value: bytes) -> NodeRecord | None:
    try:
        return NodeRecord.from_json(value)
    except ValueError:
        return None


class Registration:
    """One node's record in the roster, kept alive by a lease this object refreshes.

    The record is claimed with one etcd transaction: it is written only if the key is absent
    or already under this object's lease, so a second process started with the same node id
    can never overwrite (and later, when its lease expires, delete) the first one's record.
    If another lease holds the key, :meth:`register` waits at most that lease's remaining
    TTL for it to expire (a crashed earlier run of this node) and otherwise raises
    :class:`NodeIdTaken` naming the holder. While registered, a watch on the key notices the
    record disappearing (``shardline node remove --force``, a revoked or expired lease),
    logs it and puts it back.

    ``registered`` is set while the record is known to be in etcd under our live lease (it
    is cleared when the lease or the record is found gone, and set again once re-registered).
    """

    def __init__(
        self,
        client: aetcd.Client,
        cluster: str,
        *,
        ttl_s: int = 10,
        timeout_s: float = 5.0,
    ) -> None:
        if ttl_s < MIN_TTL_S:
            raise ValueError(f"ttl_s must be >= {MIN_TTL_S} (etcd's minimum lease), not {ttl_s}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, not {timeout_s}")
        self._client = client
        self._cluster = cluster
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._address = endpoint_label(client)
        self._lock = asyncio.Lock()
        self._record: NodeRecord | None = None
        self._lease_id: int | None = None
        self._granted_ttl_s = ttl_s
        self._keepalive: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._held_by: int | None = None
        self.registered = asyncio.Event()
        self.regrants = 0
        """How many times the lease was found gone (and a new one granted, the record re-put)."""
        self.reclaims = 0
        """How many times the record was found gone from etcd while running (and put back)."""

    @property
    def record(self) -> NodeRecord | None:
        return self._record

    @property
    def lease_id(self) -> int | None:
        return self._lease_id

    @property
    def ttl_s(self) -> int:
        """The TTL etcd granted (it may raise a request below its minimum)."""
        return self._granted_ttl_s

    async def register(self, record: NodeRecord) -> None:
        """Grant a lease, claim the node id with the record and start refreshing and
        watching it. Raises :class:`NodeIdTaken` if a live node holds the id."""
        if self._record is not None:
            raise RuntimeError(f"node {self._record.node_id} is already registered")
        async with self._lock:
            self._record = record
            try:
                await self._grant()
                await self._claim_or_wait()
            except BaseException:
                self._record = None
                lease_id, self._lease_id = self._lease_id, None
                if lease_id is not None:
                    with contextlib.suppress(Exception):
                        async with unavailable_guard(self._address, self._timeout_s):
                            await self._client.revoke_lease(lease_id)
                raise
        self._keepalive = asyncio.create_task(
            self._keepalive_loop(), name=f"lease-keepalive-{record.node_id}"
        )
        self._watch = asyncio.create_task(self._watch_loop(), name=f"record-watch-{record.node_id}")

    async def update(self, record: NodeRecord) -> None:
        """Replace the stored record (same node id), under the current lease."""
        current = self._require()
        if record.node_id != current.node_id:
            raise ValueError(f"cannot change node id {current.node_id} to {record.node_id}")
        async with self._lock:
            previous, self._record = self._record, record
            try:
                await self._put_record()
            except BaseException:
                self._record = previous  # (after a timeout the put may still have landed)
                raise

    async def set_state(self, state: NodeState) -> NodeRecord:
        """Set the node's state (joining -> active -> draining); returns the new record."""
        record = replace(self._require(), state=NodeState(state))
        await self.update(record)
        return record

    async def deregister(self) -> None:
        """Graceful stop: stop refreshing and watching, and revoke the lease, which deletes
        the record."""
        await self._stop_tasks()
        lease_id, self._lease_id = self._lease_id, None
        self.registered.clear()
        self._record = None
        if lease_id is None:
            return
        try:
            async with unavailable_guard(self._address, self._timeout_s):
                await self._client.revoke_lease(lease_id)
        except aetcd.ClientError as exc:
            if not _lease_not_found(exc):
                raise

    async def abandon(self) -> None:
        """Stop refreshing without revoking: what a crash looks like to etcd (tests, chaos)."""
        await self._stop_tasks()

    # ------------------------------------------------------------------ internals

    def _require(self) -> NodeRecord:
        if self._record is None:
            raise RuntimeError("not registered")
        return self._record

    def _key(self) -> bytes:
        return node_key(self._cluster, self._require().node_id)

    async def _grant(self) -> None:
        async with unavailable_guard(self._address, self._timeout_s):
            lease = await self._client.lease(self._ttl_s)
        self._lease_id = int(lease.id)
        self._granted_ttl_s = max(int(lease.ttl), 1)

    async def _claim(self) -> Any | None:
        """Put the record under our lease if the key is absent or already ours (each write
        one guarded transaction). None when written, else the holder's ``KeyValue``.
        "lease not found" (ours expired) comes out as ``aetcd.ClientError``."""
        key = self._key()
        tx = self._client.transactions
        put = tx.put(key, self._require().to_json(), lease=self._lease_id)
        async with unavailable_guard(self._address, self._timeout_s):
            for guard in (LeaseCompare(key) == self._lease_id, tx.version(key) == 0) * 2:
                ok, responses = await self._client.transaction(
                    compare=[guard], success=[put], failure=[tx.get(key)]
                )
                if ok:
                    return None
                found = responses[0] if responses else []
                if found:
                    _, kv = found[0]
                    if int(kv.lease) != self._lease_id:
                        return kv
                # absent (try the create), or ours after all (a race): go round again
        raise RuntimeError(f"could not claim {key.decode()}: it kept changing")

    async def _claim_or_wait(self) -> None:
        """First registration: claim, or wait for a crashed holder's lease to expire."""
        record = self._require()
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline: float | None = None
        while True:
            if deadline is not None:  # after a wait, longer than our own lease may last
                async with unavailable_guard(self._address, self._timeout_s):
                    reply = await self._client.refresh_lease(self._lease_id)
                if reply is None or int(reply.TTL) <= 0:
                    await self._grant()
            holder = await self._claim()
            if holder is None:
                break
            other = _parse_holder(bytes(holder.value))
            other_lease = int(holder.lease)
            if other_lease == 0:
                raise NodeIdTaken(record.node_id, self._cluster, other, 0)
            if deadline is None:
                async with unavailable_guard(self._address, self._timeout_s):
                    info = await self._client.get_lease_info(other_lease, keys=False)
                wait_s = max(int(info.TTL), 0) + EXPIRY_MARGIN_S
                deadline = started + wait_s
                log.warning(
                    "node id %s is held by %s (etcd lease %x, %d s left); waiting up to %.0f s "
                    "for it to expire, as the record of a crashed earlier run would",
                    record.node_id,
                    other.holder() if other else "an unreadable record",
                    other_lease,
                    int(info.TTL),
                    wait_s,
                )
            if not await self._wait_deleted(int(holder.mod_revision), deadline):
                raise NodeIdTaken(
                    record.node_id, self._cluster, other, other_lease, loop.time() - started
                )
        self.registered.set()
        log.info("node %s registered under lease %x", record.node_id, self._lease_id)

    async def _wait_deleted(self, after_revision: int, deadline: float) -> bool:
        """Until ``deadline``: True once the key is deleted after ``after_revision``."""
        try:
            async with asyncio.timeout_at(deadline):
                async for batch in watch_revisions(
                    self._client, self._key(), after_revision + 1, single_key=True
                ):
                    if any(ev.value is None for ev in batch.events):
                        return True
        except TimeoutError:
            return False
        except Exception as exc:
            if is_unavailable(exc):
                raise ControlPlaneUnavailable(self._address, describe(exc)) from exc
            raise
        return False

    async def _grant_and_claim(self) -> Any | None:
        """Claim with our lease, granting a new one first if it is gone."""
        try:
            return await self._claim()
        except aetcd.ClientError as exc:
            if not _lease_not_found(exc):
                raise
        self.registered.clear()
        self.regrants += 1
        await self._grant()
        return await self._claim()

    def _claimed(self, holder: Any | None) -> None:
        """Note the outcome of a re-claim: registered again, or held by another node."""
        record = self._require()
        if holder is None:
            if not self.registered.is_set():
                log.warning("node %s registered again under lease %x", record.node_id,
                            self._lease_id)  # fmt: skip
            self._held_by = None
            self.registered.set()
            return
        self.registered.clear()
        if self._held_by != int(holder.lease):  # once per holder, not on every event
            self._held_by = int(holder.lease)
            other = _parse_holder(bytes(holder.value))
            log.error(
                "node id %s is held by another node (%s, etcd lease %x): this node is outside "
                "the cluster until that one leaves (then it registers again); stop one of them",
                record.node_id,
                other.holder() if other else "an unreadable record",
                self._held_by,
            )

    async def _put_record(self) -> None:
        holder = await self._grant_and_claim()
        if holder is not None:
            self._claimed(holder)
            record = self._require()
            raise NodeIdTaken(
                record.node_id,
                self._cluster,
                _parse_holder(bytes(holder.value)),
                int(holder.lease),
            )
        self.registered.set()

    async def _refresh_once(self) -> None:
        async with self._lock:
            if self._lease_id is None or self._record is None:
                return
            async with unavailable_guard(self._address, self._timeout_s):
                reply = await self._client.refresh_lease(self._lease_id)
            if reply is not None and int(reply.TTL) > 0:
                return
            log.warning(
                "lease %x of node %s is gone (expired or revoked); registering again",
                self._lease_id,
                self._record.node_id,
            )
            self.registered.clear()
            self.regrants += 1
            await self._grant()
            self._claimed(await self._claim())

    async def _check_record(self) -> int:
        """Is our record in etcd under our lease? Put it back if it is gone. Returns the
        store revision read (a watch continues after it)."""
        async with self._lock:
            if self._record is None or self._lease_id is None:
                return 0
            async with unavailable_guard(self._address, self._timeout_s):
                kv, revision = await get_at_revision(self._client, self._key())
            if kv is not None and int(kv.lease) == self._lease_id:
                return revision
            if kv is None:
                log.warning(
                    "the record of node %s disappeared from etcd (deleted by someone, or its "
                    "lease expired); registering again",
                    self._record.node_id,
                )
                self.registered.clear()
                self.reclaims += 1
                self._claimed(await self._grant_and_claim())
            else:
                self._claimed(kv)
            return revision

    async def _watch_loop(self) -> None:
        """Watch our own key; any change not made under our lease is checked (and repaired)."""
        backoff_s = 0.1
        while True:
            try:
                revision = await self._check_record()
                async for batch in watch_revisions(
                    self._client, self._key(), revision + 1, single_key=True
                ):
                    backoff_s = 0.1
                    if any(ev.value is None or ev.lease != self._lease_id for ev in batch.events):
                        await self._check_record()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if is_unavailable(exc) or isinstance(exc, WatchCompacted | WatchReset):
                    log.debug("record watch of %s: %s; resuming", self._address, exc)
                else:
                    log.exception("record watch failed; resuming")
            # A retry timer after a broken stream (no event to wait for): bounded backoff.
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, 2.0)

    async def _keepalive_loop(self) -> None:
        unreachable = False
        while True:
            # A timer is the mechanism here: etcd expects a refresh well inside the TTL.
            await asyncio.sleep(self._granted_ttl_s / 3)
            try:
                await self._refresh_once()
            except Exception as exc:
                if not is_unavailable(exc):
                    log.exception("lease keepalive failed; retrying")
                elif not unreachable:
                    log.warning("lease keepalive: %s", exc)
                unreachable = True
                continue
            if unreachable:
                log.info("etcd reachable again; lease %x refreshed", self._lease_id or 0)
            unreachable = False

    async def _stop_tasks(self) -> None:
        tasks = [t for t in (self._keepalive, self._watch) if t is not None]
        self._keepalive = self._watch = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
