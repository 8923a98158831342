"""An etcd double: a linearizable key-value store with revisions, leases and watches.

Every operation is applied atomically at the instant it reaches the store (one global
order, one revision per write), so the double is linearizable by construction. Keys are
relative to the cluster prefix (``nodes/n1``, ``workflows/w/v1``, ``objectives/o``) and
values are the bytes the real registry and catalog write, so nodes build their snapshots
with the real ``shardline.membership.snapshot.ClusterSnapshot.apply``.

Leases expire ``ttl`` after their last keepalive, deleting their keys in one revision.
While the store is down nothing expires, and when it comes back every lease gets a full
TTL again (what an etcd leader election does). Watches are the simulator's business
(``shardline.sim.world``): the double keeps the event log they read from. It also keeps every
objective config it ever stored, with the time it was committed and superseded, for the
safety checker.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shardline.membership.snapshot import KeyEvent


@dataclass
class Lease:
    lease_id: int
    ttl_s: float
    expires_at: float
    keys: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class ObjectiveVersion:
    """One stored revision of an objective config and when it was in force in etcd."""

    revision: int
    config: Mapping[str, Any]
    committed_at: float
    superseded_at: float = math.inf


class EtcdDouble:
    """The store (see the module docstring). ``on_commit(revision)`` runs after each write."""

    def __init__(self, on_commit: Callable[[int], None] | None = None) -> None:
        self.revision = 0
        self.state_revision = 0
        """The last revision that wrote anything but a loaded set (``loaded/``): the roster,
        the catalog. Loaded sets change with every load and eviction; a busy fleet's
        nodes are rarely all at ``revision`` at one instant, but they all reach this one."""
        self.kv: dict[str, tuple[bytes, int]] = {}  # key -> (value, lease id or 0)
        self.log: list[tuple[KeyEvent, ...]] = [()]  # index = revision
        self.leases: dict[int, Lease] = {}
        self.up = True
        self._next_lease = 1000
        self.on_commit = on_commit
        self.objectives: dict[str, list[ObjectiveVersion]] = {}

    # ------------------------------------------------------------------ writes

    def _commit(self, changes: list[tuple[str, bytes | None]]) -> int:
        self.revision += 1
        rev = self.revision
        events = tuple(KeyEvent(key, value, rev) for key, value in changes)
        if any(not key.startswith("loaded/") for key, _ in changes):
            self.state_revision = rev
        self.log.append(events)
        if self.on_commit is not None:
            self.on_commit(rev)
        return rev

    def put(self, key: str, value: bytes, lease_id: int = 0) -> int | None:
        """Store ``value``; None when the lease does not exist (etcd: lease not found)."""
        if lease_id and lease_id not in self.leases:
            return None
        old = self.kv.get(key)
        if old is not None and old[1] and old[1] != lease_id and old[1] in self.leases:
            self.leases[old[1]].keys.discard(key)
        self.kv[key] = (value, lease_id)
        if lease_id:
            self.leases[lease_id].keys.add(key)
        return self._commit([(key, value)])

    def delete(self, key: str) -> int | None:
        if key not in self.kv:
            return None
        _, lease_id = self.kv.pop(key)
        if lease_id in self.leases:
            self.leases[lease_id].keys.discard(key)
        return self._commit([(key, None)])

    def put_objective(self, name: str, config: Mapping[str, Any], now: float) -> int:
        """Store a new revision of an objective document, as the real catalog does."""
        history = self.objectives.setdefault(name, [])
        revision = history[-1].revision + 1 if history else 1
        doc = {"revision": revision, "config": dict(config), "updated_at": f"{now:.6f}"}
        doc["author"] = "sim"
        if history:
            last = history[-1]
            history[-1] = ObjectiveVersion(last.revision, last.config, last.committed_at, now)
        history.append(ObjectiveVersion(revision, dict(config), now))
        self.put(f"objectives/{name}", json.dumps(doc, sort_keys=True).encode())
        return revision

    def objective(self, name: str, revision: int) -> ObjectiveVersion | None:
        history = self.objectives.get(name, [])
        return history[revision - 1] if 0 < revision <= len(history) else None

    # ------------------------------------------------------------------ leases

    def grant(self, ttl_s: float, now: float) -> int:
        self._next_lease += 1
        self.leases[self._next_lease] = Lease(self._next_lease, ttl_s, now + ttl_s)
        return self._next_lease

    def keepalive(self, lease_id: int, now: float) -> bool:
        lease = self.leases.get(lease_id)
        if lease is None:
            return False
        lease.expires_at = now + lease.ttl_s
        return True

    def revoke(self, lease_id: int) -> int | None:
        lease = self.leases.pop(lease_id, None)
        if lease is None or not lease.keys:
            return None
        changes: list[tuple[str, bytes | None]] = []
        for key in sorted(lease.keys):
            if self.kv.get(key, (b"", 0))[1] == lease_id:
                del self.kv[key]
                changes.append((key, None))
        return self._commit(changes) if changes else None

    def expire(self, now: float) -> float:
        """Revoke the leases due by ``now``; returns the next expiry time (inf: none)."""
        if not self.up:
            return math.inf
        for lease_id in sorted(i for i, lease in self.leases.items() if lease.expires_at <= now):
            self.revoke(lease_id)
        return min((lease.expires_at for lease in self.leases.values()), default=math.inf)

    def set_up(self, up: bool, now: float) -> None:
        """Take the store down or bring it back (a recovered store renews every lease)."""
        if up and not self.up:
            for lease in self.leases.values():
                lease.expires_at = now + lease.ttl_s
        self.up = up

    # ------------------------------------------------------------------ reads

    def events(self, after: int, upto: int | None = None) -> list[KeyEvent]:
        """The events of revisions ``after + 1 .. upto`` (default: the current revision)."""
        top = self.revision if upto is None else min(upto, self.revision)
        out: list[KeyEvent] = []
        for rev in range(max(after, 0) + 1, top + 1):
            out.extend(self.log[rev])
        return out

    def items(self) -> list[tuple[str, bytes]]:
        """Every key and value, sorted (one list per revision, shared: do not change it)."""
        cached: tuple[int, list[tuple[str, bytes]]] | None = getattr(self, "_items", None)
        if cached is not None and cached[0] == self.revision:
            return cached[1]
        out = sorted((key, value) for key, (value, _) in self.kv.items())
        self._items = (self.revision, out)
        return out
