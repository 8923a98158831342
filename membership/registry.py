"""The node roster in etcd: a node's record, bound to a lease it keeps alive itself.

``/shardline/<cluster>/nodes/<node_id>`` holds a :class:`NodeRecord` as JSON, attached to
a lease of ``ttl_s``. :class:`Registration` grants the lease, puts the record and refreshes
the lease every ``ttl/3`` in a task (aetcd has no background keepalive). If the lease is
gone when it refreshes (it expired while etcd was unreachable, or someone revoked it), it
grants a new one and puts the record again. A crash stops the refreshes and etcd deletes
the record when the lease expires; a graceful stop revokes the lease, which deletes it at
once.
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

from membership.etcd import (
    endpoint_label,
    is_unavailable,
    node_key,
    unavailable_guard,
    validate_segment,
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

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "node_id": self.node_id,
                "grpc_address": self.grpc_address,
                "gossip_address": self.gossip_address,
                "zone": self.zone,
                "capacity": float(self.capacity),
                "devices": list(self.devices),
                "version": self.version,
                "state": self.state.value,
            },
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
        )


def _lease_not_found(exc: BaseException) -> bool:
    return isinstance(exc, aetcd.ClientError) and "lease not found" in str(exc)


class Registration:
    """One node's record in the roster, kept alive by a lease this object refreshes.

    ``registered`` is set while the record is known to be in etcd under a live lease (it is
    cleared when a refresh finds the lease gone, and set again once re-registered).
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
        self.registered = asyncio.Event()
        self.regrants = 0
        """How many times the lease was found gone (and a new one granted, the record re-put)."""

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
        """Grant a lease, put the record under it and start refreshing it."""
        if self._record is not None:
            raise RuntimeError(f"node {self._record.node_id} is already registered")
        async with self._lock:
            self._record = record
            try:
                await self._grant_and_put()
            except BaseException:
                self._record = None
                raise
        self._keepalive = asyncio.create_task(
            self._keepalive_loop(), name=f"lease-keepalive-{record.node_id}"
        )

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
        """Graceful stop: stop refreshing and revoke the lease, which deletes the record."""
        await self._stop_keepalive()
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
        await self._stop_keepalive()

    # ------------------------------------------------------------------ internals

    def _require(self) -> NodeRecord:
        if self._record is None:
            raise RuntimeError("not registered")
        return self._record

    async def _grant_and_put(self) -> None:
        record = self._require()
        async with unavailable_guard(self._address, self._timeout_s):
            lease = await self._client.lease(self._ttl_s)
            self._lease_id = int(lease.id)
            self._granted_ttl_s = max(int(lease.ttl), 1)
            await self._client.put(
                node_key(self._cluster, record.node_id), record.to_json(), lease=self._lease_id
            )
        self.registered.set()
        log.info("node %s registered under lease %x", record.node_id, self._lease_id)

    async def _put_record(self) -> None:
        record = self._require()
        try:
            async with unavailable_guard(self._address, self._timeout_s):
                await self._client.put(
                    node_key(self._cluster, record.node_id), record.to_json(), lease=self._lease_id
                )
        except aetcd.ClientError as exc:
            if not _lease_not_found(exc):
                raise
            self.registered.clear()
            self.regrants += 1
            await self._grant_and_put()

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
            await self._grant_and_put()

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

    async def _stop_keepalive(self) -> None:
        task, self._keepalive = self._keepalive, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
