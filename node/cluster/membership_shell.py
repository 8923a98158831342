"""The membership shell of a cluster node: etcd roster + catalog, gossip, one merged view.

``ClusterMembership`` connects to etcd, watches the cluster prefix (``SnapshotWatcher``),
registers this node under a lease (``Registration``), runs a gossip agent seeded from
the roster, and publishes a new immutable ``MembershipView`` to its subscribers whenever
the roster, a member's liveness or a member's load changes. The node's load summary
(requests in flight, resident bytes, the version of its loaded set) goes out with its
gossip; the loaded set itself goes to etcd (``LoadedPublisher``), under the roster lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import aetcd

from shardline.membership.etcd import EtcdEndpoint, connect
from shardline.membership.gossip import GossipAgent
from shardline.membership.loaded import LoadedPublisher, LoadedSet
from shardline.membership.registry import NodeRecord, NodeState, Registration
from shardline.membership.snapshot import ClusterSnapshot, SnapshotWatcher
from shardline.membership.swim_state import Load, SwimConfig
from shardline.membership.view import MembershipView, build_view

log = logging.getLogger("shardline.cluster")

ViewSubscriber = Callable[[MembershipView, ClusterSnapshot], None]


@dataclass(frozen=True)
class ClusterConfig:
    cluster: str = "default"
    etcd: str = "127.0.0.1:2379"
    zone: str = ""
    capacity: float = 1.0
    lease_ttl_s: int = 10
    gossip_host: str = "127.0.0.1"
    gossip_port: int = 0
    gossip_advertise_host: str | None = None
    probe_interval_s: float = 0.5
    etcd_ca: str | None = None
    etcd_cert: str | None = None
    etcd_key: str | None = None
    etcd_user: str | None = None
    etcd_password: str | None = None
    # How this node forwards to owners: the peer link, or gRPC Peer.Forward (peers.py).
    peer_transport: str = "link"

    def __post_init__(self) -> None:
        if not self.cluster:
            raise ValueError("cluster name must not be empty")
        if self.peer_transport not in ("link", "grpc"):
            raise ValueError(f"peer_transport must be link or grpc, got {self.peer_transport!r}")
        if self.capacity <= 0:
            raise ValueError("capacity must be > 0")
        if self.lease_ttl_s < 2:
            raise ValueError("lease_ttl_s must be at least 2")


class ClusterMembership:
    def __init__(
        self,
        node_id: str,
        grpc_address: str,
        config: ClusterConfig,
        *,
        version: str = "",
        devices: tuple[str, ...] = (),
        rng: random.Random | None = None,
        memory_budget: int = 0,
    ) -> None:
        self.memory_budget = memory_budget
        self.node_id = node_id
        self.grpc_address = grpc_address
        self.config = config
        self.endpoint = EtcdEndpoint.parse(
            config.etcd,
            ca_file=config.etcd_ca,
            cert_file=config.etcd_cert,
            key_file=config.etcd_key,
            username=config.etcd_user,
            password=config.etcd_password,
        )
        self.version = version
        self.devices = devices
        self.gossip = GossipAgent(
            node_id,
            SwimConfig(cluster=config.cluster, probe_interval_s=config.probe_interval_s),
            host=config.gossip_host,
            port=config.gossip_port,
            advertise_host=config.gossip_advertise_host,
            rng=rng,
        )
        self.client: aetcd.Client | None = None
        self.watcher = SnapshotWatcher(self._client_factory, config.cluster)
        self.registration: Registration | None = None
        self.publisher: LoadedPublisher | None = None
        self.view = MembershipView()
        self._subscribers: list[ViewSubscriber] = []
        self._changed = asyncio.Event()
        self._seeded_revision = -1
        self.started_at = datetime.now(UTC).isoformat(timespec="seconds")

    async def _client_factory(self) -> aetcd.Client:
        return await connect(self.endpoint)

    @property
    def snapshot(self) -> ClusterSnapshot:
        return self.watcher.current

    def subscribe(self, callback: ViewSubscriber) -> None:
        self._subscribers.append(callback)

    async def start(self, state: NodeState = NodeState.JOINING) -> None:
        """Connect, watch, start gossip and register (raises ControlPlaneUnavailable, and
        NodeIdTaken when a live node holds this node id: then nothing is left running).

        Once registered, the record is watched: if it disappears while the node runs, the
        registration logs it and puts it back (``Registration``), with no call from here.
        """
        self.client = await connect(self.endpoint)
        try:
            await self.gossip.start()
            self.watcher.subscribe(lambda _snapshot: self._refresh())
            self.gossip.subscribe(lambda _change: self._refresh())
            self.gossip.subscribe_load(lambda _change: self._refresh())
            await self.watcher.start()
            registration = Registration(
                self.client, self.config.cluster, ttl_s=self.config.lease_ttl_s
            )
            await registration.register(self.record(state))
        except BaseException:
            with contextlib.suppress(Exception):
                await self.gossip.stop(graceful=False)
            with contextlib.suppress(Exception):
                await self.watcher.stop()
            with contextlib.suppress(Exception):
                await self.client.close()
            self.client = None
            raise
        self.registration = registration
        self.publisher = LoadedPublisher(
            self.client, self.config.cluster, self.node_id, lambda: registration.lease_id
        )
        self.publisher.start()
        self._refresh()  # seed gossip now that the id is ours
        await self.wait_for(lambda v: self.node_id in v.members, timeout_s=10)

    def record(self, state: NodeState) -> NodeRecord:
        return NodeRecord(
            node_id=self.node_id,
            grpc_address=self.grpc_address,
            gossip_address=self.gossip.address,
            zone=self.config.zone,
            capacity=self.config.capacity,
            devices=self.devices,
            version=self.version,
            state=state,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            started_at=self.started_at,
            memory_budget=self.memory_budget,
        )

    async def set_state(self, state: NodeState) -> None:
        assert self.registration is not None
        await self.registration.set_state(state)
        await self.wait_for(
            lambda v: (m := v.members.get(self.node_id)) is not None and m.state is state,
            timeout_s=10,
        )

    def report_load(self, in_flight: int, loaded: LoadedSet) -> None:
        """Gossip the summary; publish the loaded set to etcd when its version changed."""
        summary = Load(
            resident_bytes=loaded.resident_bytes,
            loaded_count=len(loaded.models),
            loaded_version=loaded.version,
        )
        self.gossip.set_local_load(in_flight, summary)
        if self.publisher is not None:
            self.publisher.publish(loaded)

    def _refresh(self) -> None:
        snapshot = self.watcher.current
        # No gossip before this node holds its id: a duplicate refused at registration must
        # not have spoken to the cluster under the live holder's name.
        registered = self.registration is not None
        if registered and self.publisher is not None and self.node_id not in snapshot.loaded:
            self.publisher.lease_changed()  # our record went with an old lease: put it back
        if registered and snapshot.revision != self._seeded_revision:  # roster changes with it
            self._seeded_revision = snapshot.revision
            self.gossip.set_seeds(
                {
                    node_id: rec.gossip_address
                    for node_id, rec in snapshot.nodes.items()
                    if node_id != self.node_id
                }
            )
        view = build_view(snapshot, self.gossip.members(), self.node_id)
        if view == self.view:
            return
        self.view = view
        self._changed.set()
        self._changed = asyncio.Event()
        self._seeded_revision = -1
        for callback in list(self._subscribers):
            try:
                callback(view, snapshot)
            except Exception:
                log.exception("view subscriber failed")

    async def wait_for(
        self, predicate: Callable[[MembershipView], bool], timeout_s: float
    ) -> MembershipView:
        """Wait (on view changes, not polling) until ``predicate(view)`` holds."""
        async with asyncio.timeout(timeout_s):
            while not predicate(self.view):
                await self._changed.wait()
        return self.view

    async def stop(self, graceful: bool = True) -> None:
        if self.publisher is not None:
            await self.publisher.stop()
        if self.registration is not None:
            try:
                if graceful:
                    await self.registration.deregister()
                else:
                    await self.registration.abandon()
            except Exception as exc:  # etcd down: the lease expires by itself
                log.warning("could not deregister %s: %s", self.node_id, exc)
        await self.gossip.stop(graceful=graceful)
        await self.watcher.stop()
        if self.client is not None:
            await self.client.close()
