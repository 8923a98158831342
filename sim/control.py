"""A simulated node's control-plane client: registration under a lease, keepalive, watch.

Mirrors ``shardline.membership.registry.Registration`` and
``shardline.membership.snapshot.SnapshotWatcher``: the node grants a lease of ``ttl`` and puts its
``NodeRecord`` under it, refreshes the lease every ``ttl/3`` (granting a new one and putting the
record again when the lease is gone), reads the whole prefix once and then follows the watch,
reconnecting with jittered exponential backoff (0.05 s doubling to 2 s) and resuming from its last
revision. While etcd is unreachable the node keeps its last snapshot. Every etcd call is an RPC
through the simulated network (``World.etcd_call``); the store applies it when it arrives.

The client sees its node as a ``Process`` and the world as a ``ControlWorld`` (both are
what ``shardline.sim.node.SimNode`` and ``shardline.sim.world.World`` are; neither is imported
here).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from shardline.membership.loaded import LoadedSet
from shardline.membership.registry import NodeRecord, NodeState
from shardline.membership.snapshot import ClusterSnapshot, KeyEvent
from shardline.sim.core import EventLoop, Handler
from shardline.sim.etcd import EtcdDouble
from shardline.sim.scenario import Scenario

INITIAL_BACKOFF_S = 0.05
MAX_BACKOFF_S = 2.0
_T = TypeVar("_T")


class ControlWorld(Protocol):
    """What the etcd client needs of the world: the clock, the store, RPCs to it."""

    @property
    def loop(self) -> EventLoop: ...
    @property
    def etcd(self) -> EtcdDouble: ...
    @property
    def scenario(self) -> Scenario: ...

    def etcd_call(
        self,
        node: Process,
        op: Callable[[EtcdDouble], _T],
        done: Callable[[_T | None], None],
        *,
        force: bool = False,
    ) -> None:
        """An RPC from ``node`` to etcd: ``op`` runs at the store, ``done`` gets the result
        (None: no answer within the client timeout)."""

    def watch_lease(self, lease_id: int) -> None:
        """Expire the lease when its time comes (unless kept alive)."""

    def snapshot_from(self, items: list[tuple[str, bytes]], revision: int) -> ClusterSnapshot:
        """``ClusterSnapshot.from_kvs`` (shared between nodes in a fleet)."""

    def snapshot_apply(
        self, prev: ClusterSnapshot, events: list[KeyEvent], revision: int
    ) -> ClusterSnapshot:
        """``prev.apply(events, revision)`` (shared between nodes in a fleet)."""


class Process(Protocol):
    """What the etcd client needs of its node process (``shardline.sim.node.SimNode``)."""

    @property
    def world(self) -> ControlWorld: ...
    @property
    def node_id(self) -> str: ...
    @property
    def grpc_address(self) -> str: ...
    @property
    def gossip_address(self) -> str: ...
    @property
    def capacity(self) -> float: ...
    @property
    def zone(self) -> str: ...
    @property
    def epoch(self) -> int:
        """Which process lifetime of the node (a restart begins a new one)."""

    @property
    def up(self) -> bool: ...
    @property
    def frozen(self) -> bool: ...
    @property
    def misc_rng(self) -> random.Random: ...
    @property
    def snapshot(self) -> ClusterSnapshot: ...

    def on_snapshot(self, snapshot: ClusterSnapshot, events: list[KeyEvent] | None) -> None:
        """A newer snapshot of the store; ``events`` made it from the previous one (None: a
        fresh read)."""

    def defer(self, fn: Handler, arg: Any) -> None:
        """Run ``fn(arg)`` when the paused process resumes."""


class ControlClient:
    """The etcd side of one node process (one instance per process lifetime)."""

    def __init__(self, node: Process) -> None:
        self.node = node
        self.world = node.world
        self.epoch = node.epoch
        self.lease_id = 0
        self.state = NodeState.JOINING
        self.connected = False
        self.connected_since = 0.0
        self.last_delivery_at = 0.0
        self._backoff_s = INITIAL_BACKOFF_S
        self._reconnecting = False
        self._registered = False
        self.stopped = False
        self.loaded: LoadedSet | None = None
        self._publishing = False

    @property
    def _live(self) -> bool:
        return not self.stopped and self.node.up and self.node.epoch == self.epoch

    def record(self) -> NodeRecord:
        node = self.node
        return NodeRecord(
            node_id=node.node_id,
            grpc_address=node.grpc_address,
            gossip_address=node.gossip_address,
            capacity=node.capacity,
            state=self.state,
            zone=node.zone,
        )

    # ------------------------------------------------------------------ watch

    def start(self) -> None:
        """Read the prefix (then register); retried with backoff while etcd is away."""
        self._resync()

    def _resync(self) -> None:
        self._reconnecting = True

        def read(etcd: EtcdDouble) -> tuple[list[tuple[str, bytes]], int]:
            return etcd.items(), etcd.revision

        def done(result: tuple[list[tuple[str, bytes]], int] | None) -> None:
            self._reconnecting = False
            if not self._live:
                return
            if result is None:
                self._retry_later()
                return
            items, revision = result
            node = self.node
            events: list[KeyEvent] | None = None
            if node.snapshot.revision == 0:
                snapshot = self.world.snapshot_from(items, revision)
            else:  # resume: apply what we missed (the double never compacts)
                events = self.world.etcd.events(node.snapshot.revision, revision)
                snapshot = self.world.snapshot_apply(node.snapshot, events, revision)
            self._backoff_s = INITIAL_BACKOFF_S
            self.connected = True
            self.connected_since = self.world.loop.now
            self.last_delivery_at = self.world.loop.now
            node.on_snapshot(snapshot, events)
            if not self._registered:
                self._register()

        self.world.etcd_call(self.node, read, done)

    def _retry_later(self) -> None:
        node = self.node
        delay = self._backoff_s * (0.5 + node.misc_rng.random())
        self._backoff_s = min(MAX_BACKOFF_S, self._backoff_s * 2)
        self._reconnecting = True
        self.world.loop.after(delay, self._retry, self.epoch)

    def _retry(self, epoch: int) -> None:
        if epoch != self.epoch or not self._live:
            return
        if self.node.frozen:
            self.node.defer(self._retry, epoch)
            return
        self._resync()

    def disconnect(self) -> None:
        """The watch broke (etcd down or cut off): keep the snapshot, reconnect."""
        if not self.connected or not self._live:
            return
        self.connected = False
        if not self._reconnecting:
            self._retry_later()

    def deliver(self, revision: int) -> None:
        """A watch batch up to ``revision`` arrives (scheduled by the world)."""
        if not self._live or not self.connected:
            return
        node = self.node
        if node.frozen:
            node.defer(self.deliver, revision)
            return
        if revision <= node.snapshot.revision:
            return
        events = self.world.etcd.events(node.snapshot.revision, revision)
        node.on_snapshot(self.world.snapshot_apply(node.snapshot, events, revision), events)

    # ------------------------------------------------------------------ registration

    def adopt(self, lease_id: int, state: NodeState) -> None:
        """Take over a registration made before the run (the initial steady state)."""
        self.lease_id, self.state, self._registered = lease_id, state, True
        ttl = self.world.scenario.cluster.lease_ttl_s
        delay = ttl / 3 * (0.5 + 0.5 * self.node.misc_rng.random())
        self.world.loop.after(delay, self._keepalive, self.epoch)

    def _register(self) -> None:
        self._registered = True
        record = self.record().to_json()
        ttl = self.world.scenario.cluster.lease_ttl_s
        key = f"nodes/{self.node.node_id}"

        def grant_put(etcd: EtcdDouble) -> int:
            lease = etcd.grant(ttl, self.world.loop.now)
            etcd.put(key, record, lease)
            return lease

        def done(lease: int | None) -> None:
            if not self._live:
                return
            if lease is None:
                self._registered = False
                self.world.loop.after(ttl / 3, self._retry_register, self.epoch)
                return
            self.lease_id = lease
            self.world.watch_lease(lease)
            self.world.loop.after(ttl / 3, self._keepalive, self.epoch)
            if self.loaded is not None:  # the old lease took our loaded set with it
                self.publish_loaded(self.loaded)

        self.world.etcd_call(self.node, grant_put, done)

    def _retry_register(self, epoch: int) -> None:
        if epoch == self.epoch and self._live and not self._registered:
            self._register()

    def _keepalive(self, epoch: int) -> None:
        if epoch != self.epoch or not self._live:
            return
        node = self.node
        if node.frozen:
            node.defer(self._keepalive, epoch)
            return
        ttl = self.world.scenario.cluster.lease_ttl_s
        lease = self.lease_id
        now = self.world.loop.now

        def refresh(etcd: EtcdDouble) -> bool:
            return etcd.keepalive(lease, now)

        def done(alive: bool | None) -> None:
            if not self._live:
                return
            if alive is None:
                self.disconnect()
            elif not alive:  # the lease expired meanwhile: register again
                self._register()
                return
            self.world.loop.after(ttl / 3, self._keepalive, self.epoch)

        self.world.etcd_call(node, refresh, done)

    def set_state(self, state: NodeState) -> None:
        """Put our record with a new state (retried until etcd takes it)."""
        self.state = state
        record = self.record().to_json()
        key = f"nodes/{self.node.node_id}"
        lease = self.lease_id

        def put(etcd: EtcdDouble) -> int | None:
            return etcd.put(key, record, lease)

        def done(revision: int | None) -> None:
            if not self._live or self.state is not state:
                return
            if revision is None:
                self.world.loop.after(0.5, self._retry_state, (self.epoch, state))

        self.world.etcd_call(self.node, put, done)

    def publish_loaded(self, loaded: LoadedSet) -> None:
        """Put our loaded set under our lease (``shardline.membership.loaded``); only the
        newest is retried while etcd is away, as ``LoadedPublisher`` does."""
        self.loaded = loaded
        if self._publishing or not self.lease_id:
            return
        self._publishing = True
        data, lease, key = loaded.to_json(), self.lease_id, f"loaded/{self.node.node_id}"

        def put(etcd: EtcdDouble) -> int | None:
            return etcd.put(key, data, lease)

        def done(revision: int | None) -> None:
            self._publishing = False
            if not self._live:
                return
            current = self.loaded
            if revision is None:
                self.world.loop.after(0.5, self._retry_loaded, self.epoch)
            elif current is not None and current.version != loaded.version:
                self.publish_loaded(current)

        self.world.etcd_call(self.node, put, done)

    def _retry_loaded(self, epoch: int) -> None:
        if epoch == self.epoch and self._live and self.loaded is not None:
            self.publish_loaded(self.loaded)

    def _retry_state(self, arg: tuple[int, NodeState]) -> None:
        epoch, state = arg
        if epoch == self.epoch and self._live and self.state is state:
            self.set_state(state)

    def deregister(self) -> None:
        """A graceful stop: revoke the lease (the record goes at once); best effort."""
        lease = self.lease_id
        self.stopped = True

        def revoke(etcd: EtcdDouble) -> int | None:
            return etcd.revoke(lease)

        self.world.etcd_call(self.node, revoke, lambda _result: None, force=True)
