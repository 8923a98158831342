"""A node in a cluster: gRPC server, etcd + gossip membership, routing and placement.

Start-up is make-before-break: the node binds its port, registers ``joining``, loads and
warms the workflows it will own on the ring that includes it, then turns ``active``.
Objective configs come from the etcd catalog and are swapped in on every change. Its
load (requests in flight, warm model keys) rides on its gossip.

Leaving is make-before-break too, for the ring and for clients: a drain turns the node
NOT_SERVING (gRPC health, ``/readyz``) at once and marks it ``draining``; its successors
load and warm what it held while it keeps answering (forwarding to the owners); once they
are warm *and* ``drain_grace_s`` has passed since NOT_SERVING, it sends HTTP/2 GOAWAY to
its clients, finishes the requests in flight, deregisters and exits. SIGTERM without a
drain leaves the same way for clients (NOT_SERVING, grace, GOAWAY) without the handoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shardline.membership.etcd import cluster_prefix
from shardline.membership.loaded import LoadedSet
from shardline.membership.registry import NodeState
from shardline.membership.snapshot import ClusterSnapshot
from shardline.membership.view import MembershipView
from shardline.node.cluster.admin import AdminService
from shardline.node.cluster.artifacts import DirectoryStore, artifact_path
from shardline.node.cluster.hot import HotCopies
from shardline.node.cluster.membership_shell import ClusterConfig, ClusterMembership
from shardline.node.cluster.peer_link import forward_handler
from shardline.node.cluster.peers import PeerPool
from shardline.node.cluster.placement import Placement
from shardline.node.cluster.residence import Residence
from shardline.node.cluster.routing import ClusterRouter
from shardline.node.cluster.routing_table import describe_cluster
from shardline.node.serving.node_config import NodeConfig
from shardline.node.serving.runtime import NodeRuntime
from shardline.node.serving.server import NodeServer, drain_grace_from_env
from shardline.node.serving.service import ClusterService, PeerService
from shardline.router.handoff import Phase
from shardline.router.objectives import ObjectiveConfig
from shardline.workflows.manifest import WorkflowManifest

log = logging.getLogger("shardline.node")

LOAD_REPORT_INTERVAL_S = 0.2


def objectives_of(
    snapshot: ClusterSnapshot, known: Mapping[str, tuple[object, ObjectiveConfig]] | None = None
) -> dict[str, ObjectiveConfig]:
    """The valid objective configs of a snapshot (writes are validated; skip the odd bad one).

    ``known`` (name -> (the document parsed, its config)) is filled in and reused: a
    document that did not change is not parsed again, so a change of one objective costs
    one parse, not one per objective in the catalog."""
    out: dict[str, ObjectiveConfig] = {}
    cache = dict(known) if known is not None else {}
    for name, doc in snapshot.objectives.items():
        seen = cache.get(name)
        if seen is not None and seen[0] is doc:
            out[name] = seen[1]
            continue
        try:
            out[name] = ObjectiveConfig.from_dict(doc["config"])
        except Exception as exc:
            log.error("objective %s in the catalog is invalid, ignored: %s", name, exc)
            continue
        cache[name] = (doc, out[name])
    if isinstance(known, dict):
        known.clear()
        known.update({n: cache[n] for n in out})
    return out


def manifests_of(snapshot: ClusterSnapshot) -> dict[str, WorkflowManifest]:
    out: dict[str, WorkflowManifest] = {}
    for key, doc in snapshot.workflows.items():
        try:
            out[key] = WorkflowManifest.from_dict(doc["manifest"])
        except Exception as exc:
            log.error("workflow %s in the catalog is invalid, ignored: %s", key, exc)
    return out


class ClusterNode:
    def __init__(
        self,
        config: NodeConfig,
        cluster: ClusterConfig,
        *,
        admin_token: str | None = None,
        artifact_store: Path | None = None,
        drain_grace_s: float | None = None,
    ) -> None:
        self.config = config
        self.drain_grace_s = drain_grace_from_env() if drain_grace_s is None else drain_grace_s
        self.cluster = cluster
        self.runtime = NodeRuntime(config)
        self.runtime.ingress.starting = True
        self.peers = PeerPool(config.tls, transport=cluster.peer_transport)
        self.budget_bytes = config.memory_budget
        self.residence = Residence(
            self.runtime.executor,
            self.budget_bytes,
            config.max_resident_models,
            path_of=self._artifact_of,
            doc_of=lambda key: self.placement.snapshot.workflows.get(key),
            pinned=lambda: self.placement.pinned(),
            device_budgets=config.device_budgets(),
        )
        self.router = ClusterRouter(
            self.runtime.executor, self.runtime.shadows, self.peers, residence=self.residence
        )
        self.runtime.use_router(self.router)
        self.placement = Placement(self.runtime.executor, config.node_id, self.residence)
        self.hot = HotCopies(
            config.node_id, self.runtime.executor, self.router, config.hot_policy, self._put_hot
        )
        self.server = NodeServer(
            self.runtime,
            [
                PeerService(self.router),
                ClusterService(lambda: describe_cluster(self.runtime, self.router, self.placement)),
                AdminService(
                    self,
                    admin_token,
                    DirectoryStore(artifact_store) if artifact_store is not None else None,
                ),
            ],
            ready=self.readiness,
        )
        self.server.peer_link.handler = forward_handler(self.router)  # forwards, link side
        self.runtime.metrics.registry.register(self.server.peer_link.collector())
        self.membership: ClusterMembership | None = None
        self.draining = asyncio.Event()
        self.drained = asyncio.Event()
        self.join_seconds = 0.0
        self._drain_task: asyncio.Task[None] | None = None
        self._objectives_revision = -1
        self._objective_revisions: dict[str, object] = {}
        self._reporter: asyncio.Task[None] | None = None
        self._loaded: LoadedSet | None = None
        self._seen_objectives: Mapping[str, Any] | None = None
        self._parsed_objectives: dict[str, tuple[object, ObjectiveConfig]] = {}
        self._seen_workflows: Mapping[str, Any] | None = None
        self._seen_loaded: Mapping[str, LoadedSet] = {}
        self.runtime.executor.watch(self._report_load)

    async def _put_hot(self, key: str, value: bytes | None) -> None:
        """Write (or, for no extra copies, delete) a model's hot-copies record."""
        assert self.membership is not None and self.membership.client is not None
        name = cluster_prefix(self.cluster.cluster) + f"hot/{key}".encode()
        try:
            if value is None:
                await self.membership.client.delete(name)
            else:
                await self.membership.client.put(name, value)
        except Exception as exc:  # etcd away: the next observation tries again
            log.warning("could not write the hot copies of %s: %s", key, exc)

    def _artifact_of(self, key: str) -> Path:
        doc = self.placement.snapshot.workflows.get(key)
        if doc is None:
            raise ValueError(f"{key} is not in the catalog")
        return artifact_path(dict(doc))

    def readiness(self) -> tuple[bool, str]:
        """/readyz: registered, active, not draining, and the owned workflows warm."""
        if self.draining.is_set():
            return False, "draining"
        if self.membership is None or self.membership.registration is None:
            return False, "not registered"
        me = self.membership.view.members.get(self.config.node_id)
        if me is None or me.state is not NodeState.ACTIVE:
            return False, f"state {me.state.value if me else 'unregistered'}"
        if self.placement.phase is not Phase.ACTIVE:
            return False, f"placement {self.placement.phase.value}"
        return True, f"ready: active, {len(self.runtime.models)} models warm"

    def _on_view(self, view: MembershipView, snapshot: ClusterSnapshot) -> None:
        if snapshot.revision != self._objectives_revision:
            self._objectives_revision = snapshot.revision
            # Most revisions change only a loaded set: parse objectives and manifests again
            # only when their sections changed (``ClusterSnapshot.apply`` keeps the others).
            if snapshot.objectives is not self._seen_objectives:
                self._seen_objectives = snapshot.objectives
                self._observe_objective_lag(snapshot)
                self.runtime.set_objectives(objectives_of(snapshot, self._parsed_objectives))
            if snapshot.workflows is not self._seen_workflows:
                self._seen_workflows = snapshot.workflows
                self.runtime.catalog_manifests = manifests_of(snapshot)
                self.router.catalog_models = frozenset(self.runtime.catalog_manifests)
            if snapshot.loaded is not self._seen_loaded:
                self._observe_loaded_lag(snapshot)
            self.runtime.ingress.starting = snapshot.revision == 0
            self.runtime.metrics.catalog_revision.set(snapshot.revision)
        self.router.on_view(view, snapshot)
        self.runtime.ingress.set_active_nodes(len(self.router.state.ring))
        self.placement.on_view(view, snapshot)

    def _observe_objective_lag(self, snapshot: ClusterSnapshot) -> None:
        """Write time -> applied here, for objective documents that changed."""
        now = datetime.now(UTC)
        for name, doc in snapshot.objectives.items():
            seen = self._objective_revisions.get(name)
            revision = doc.get("revision")
            if seen is not None and revision != seen:
                try:
                    written = datetime.fromisoformat(str(doc.get("updated_at")))
                    lag = (now - written).total_seconds()
                    self.runtime.metrics.watch_lag_seconds.observe(max(0.0, lag))
                except ValueError:
                    pass
            self._objective_revisions[name] = revision

    def _observe_loaded_lag(self, snapshot: ClusterSnapshot) -> None:
        """Publish time -> applied here, for the other nodes' loaded sets that changed."""
        now = time.time()
        seen = self._seen_loaded
        for node_id, loaded in snapshot.loaded.items():
            changed = node_id != self.config.node_id and seen.get(node_id) is not loaded
            if changed and loaded.published_at > 0:
                lag = max(0.0, now - loaded.published_at)
                self.runtime.metrics.loaded_lag_seconds.observe(lag)
        self._seen_loaded = snapshot.loaded

    def _observe_gossip(self, direction: str, size: int, kind: str) -> None:
        metrics = self.runtime.metrics
        metrics.gossip_packets.labels(direction).inc()
        metrics.gossip_packet_bytes.labels(direction).observe(size)
        if direction == "sent":
            metrics.gossip_probes.labels(kind).inc()

    async def start(self) -> None:
        await self.runtime.start_prediction_log()
        await self.server.start()
        host = self.config.advertise_host or self.config.host
        if host in ("0.0.0.0", "::", ""):
            raise ValueError(
                "binding all interfaces: give --advertise-host (the address peers dial)"
            )
        address = f"{host}:{self.server.bound_port}"
        self.membership = ClusterMembership(
            self.config.node_id, address, self.cluster, memory_budget=self.budget_bytes
        )
        self.membership.subscribe(self._on_view)
        self.membership.gossip.packet_observer = self._observe_gossip
        transitions = self.runtime.metrics.member_transitions
        self.membership.gossip.subscribe(
            lambda change: transitions.labels(change.member.state.value).inc()
        )
        joined_at = asyncio.get_running_loop().time()
        await self.membership.start(NodeState.JOINING)
        self._on_view(self.membership.view, self.membership.snapshot)
        self.placement.start()
        await self.placement.wait_phase(Phase.READY)  # our share of the future ring is warm
        self._report_load()
        await self.membership.set_state(NodeState.ACTIVE)
        self.join_seconds = asyncio.get_running_loop().time() - joined_at
        self.runtime.tune_process()
        self._reporter = asyncio.create_task(self._report_loop(), name="load-reporter")
        self.hot.start()

    def start_drain(self) -> None:
        """Begin draining in the background (the Admin call returns at once)."""
        if self._drain_task is None:
            self._drain_task = asyncio.create_task(self.drain(), name="drain")

    async def drain(self) -> None:
        """Leave the ring; successors load what we hold while we keep serving it; once
        they have it warm and nothing is in flight here, deregister and stop."""
        assert self.membership is not None
        if self.draining.is_set():
            return
        self.draining.set()
        self.server.begin_leaving()  # NOT_SERVING now: clients move away while we answer
        log.info("%s: draining", self.config.node_id)
        await self.membership.set_state(NodeState.DRAINING)
        await self.placement.wait_phase(Phase.DRAINED)
        await self.server.wait_grace(self.drain_grace_s)
        log.info("%s: drained; leaving the cluster", self.config.node_id)
        self.drained.set()

    def _report_load(self) -> None:
        """Gossip the load summary; the loaded set goes to etcd when its version changed."""
        if self.membership is None or self.membership.registration is None:
            return
        executor = self.runtime.executor
        loaded = self._loaded
        if loaded is None or loaded.version != executor.loaded_version:
            loaded = self._loaded = executor.loaded_set(self.config.node_id, self.budget_bytes)
        self.membership.report_load(executor.in_flight, loaded)

    async def _report_loop(self) -> None:
        """The in-flight count changes with every request: sampled every interval (a change
        of the loaded set is reported at once, by the executor's watcher)."""
        last: tuple[int, int] | None = None
        executor = self.runtime.executor
        while True:
            current = (executor.in_flight, executor.loaded_version)
            if current != last:
                self._report_load()
                last = current
            await asyncio.sleep(LOAD_REPORT_INTERVAL_S)

    async def stop(self, grace_s: float = 10.0) -> None:
        """GOAWAY and the requests in flight first (they may still need the cluster to
        be forwarded), then leave the cluster, then close."""
        await self.server.quiesce(grace_s)
        if self._reporter is not None:
            self._reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reporter
        await self.hot.stop()
        await self.placement.stop()
        if self.membership is not None:
            await self.membership.stop(graceful=True)
        await self.server.close()
        self.peers.close()


async def serve_cluster(
    config: NodeConfig,
    cluster: ClusterConfig,
    announce: Callable[[str], Any] = print,
    *,
    admin_token: str | None = None,
    artifact_store: Path | None = None,
    drain_grace_s: float | None = None,
) -> None:
    """Run a cluster node until SIGINT/SIGTERM or a finished drain, then leave and exit.

    ``drain_grace_s`` (default ``$SHARDLINE_DRAIN_GRACE_S``, else 2 s): how long the node
    keeps answering once NOT_SERVING, before GOAWAY (see the module docstring)."""
    node = ClusterNode(
        config,
        cluster,
        admin_token=admin_token,
        artifact_store=artifact_store,
        drain_grace_s=drain_grace_s,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    models = ", ".join(sorted(node.runtime.models)) or "none yet"
    announce(
        f"shardline node {config.node_id} serving on {config.host}:{node.server.bound_port} "
        f"(cluster {cluster.cluster}, etcd {cluster.etcd}; models: {models})"
        + (
            f" metrics on :{node.server.metrics_port}"
            if node.server.metrics_port is not None
            else ""
        )
    )
    drained = asyncio.ensure_future(node.drained.wait())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({drained, stopped}, return_when=asyncio.FIRST_COMPLETED)
    drained.cancel()
    stopped.cancel()
    announce(f"shardline node {config.node_id} leaving the cluster")
    await node.server.wait_grace(node.drain_grace_s)  # at once after a drain: already waited
    await node.stop()
    announce(f"shardline node {config.node_id} stopped")
