"""A simulated cluster node: the real SWIM core, view, ring and handoff, on the virtual clock.

Per process lifetime (``epoch``) a node runs a real ``shardline.membership.swim.Swim`` (ticked
exactly at ``next_deadline``, fed the datagrams the simulated network delivers), keeps an etcd
snapshot through its ``ControlClient``, builds its ``MembershipView`` with the real ``build_view``
and its ring with the real ``shardline.router.handoff.ring_of``, and runs placement as
``shardline.node.cluster.placement`` does: the real ``shardline.router.handoff.step`` says what to
load (one at a time, taking the workflow's ``load_s``), what to let go, and when a joiner may turn
active or a draining node may leave. The request path on top of this lives in
``shardline.sim.serving``: it sees a node as the ``shardline.sim.request.Host`` that ``SimNode``
extends, and never imports this module. The node sees the world as a ``NodeWorld`` (what
``shardline.sim.world.World`` is, not imported here).

A crashed node loses everything; a paused node (GC pause, frozen VM) runs nothing and
every event addressed to it waits in ``deferred`` until it resumes; a slow node computes
``slow_factor`` times slower and handles gossip late.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, KeysView, Mapping
from typing import Any, Protocol

from shardline.membership.loaded import LoadedSet
from shardline.membership.registry import NodeState
from shardline.membership.snapshot import ClusterSnapshot, KeyEvent
from shardline.membership.swim import LoadChanged, MemberChanged, Send, Swim
from shardline.membership.swim_state import Effect, Load, Member, Message, SwimConfig
from shardline.membership.view import MembershipView, ViewMember, build_view, update_view
from shardline.router import handoff
from shardline.router.handoff import Phase
from shardline.router.hot_copies import HotState, observe
from shardline.router.residency import NoRoom, Residency
from shardline.sim.control import ControlClient, ControlWorld
from shardline.sim.core import derive_rng
from shardline.sim.executor import Executor
from shardline.sim.fleet import FleetOwners, FleetRing
from shardline.sim.request import Host, ModelQueue, ObjectiveEntry, Request
from shardline.sim.routing import replicas_of
from shardline.sim.scenario import WorkflowSpec
from shardline.sim.serving import RequestEngine

STOP_GRACE_S = 10.0


class NodeWorld(ControlWorld, Protocol):
    """What a node process needs of the world it runs in (``shardline.sim.world.World``): the run's
    seed and settings, the request engine its executors answer to, and where it reports
    what it sends and sees."""

    @property
    def seed(self) -> int: ...
    @property
    def swim_config(self) -> SwimConfig: ...
    @property
    def workflows(self) -> Mapping[str, WorkflowSpec]: ...
    @property
    def engine(self) -> RequestEngine: ...

    def send_gossip(self, src: SimNode, effect: Send) -> None:
        """Deliver a datagram through the simulated network."""

    def member_changed(self, observer: SimNode, effect: MemberChanged) -> None:
        """``observer``'s gossip changed a member's state (traced, detections)."""

    def keys_changed(self, before: LoadedSet | None, after: LoadedSet | None) -> frozenset[str]: ...

    def ring_changed(self, node: SimNode) -> None:
        """``node`` built a new ring (traced)."""

    def node_left(self, node: SimNode) -> None:
        """``node`` drained, deregistered and left gossip."""

    def node_stopped(self, node: SimNode) -> None:
        """``node``'s process exited after a graceful stop."""

    def objective_entry(self, name: str, revision: int, doc: Any) -> ObjectiveEntry:
        """The one shared entry of an objective revision."""

    @property
    def residency_watch(self) -> ResidencyObserver:
        """Told of every load, eviction, unload and cold start (checks and counts)."""

    @property
    def fleet(self) -> FleetOwners | None:
        """Owners shared by every node (catalog scenarios), or None: per-node rings."""

    @property
    def pinned(self) -> frozenset[str]:
        """Model keys pinned resident (with a budget)."""

    @property
    def copies(self) -> Mapping[str, int]:
        """Hot copies per model key, as published (``shardline.router.hot_copies``)."""

    def publish_copies(self, node: SimNode, key: str, copies: int) -> None:
        """``node``, the primary owner of ``key``, asks for ``copies`` extra copies."""


class ResidencyObserver(Protocol):
    """What a node with a memory budget reports (``shardline.sim.checks.ResidencyCheck``)."""

    def loaded(self, node: SimNode, key: str, lazy: bool) -> None: ...
    def evicting(self, node: SimNode, key: str, busy: bool) -> None: ...
    def unloaded(self, node: SimNode, key: str) -> None: ...
    def cold_start(self, wait_s: float) -> None: ...
    def no_room(self, node: SimNode, key: str, why: str) -> None: ...


class _Waiting:
    """The requests waiting on a node for one model's load (killed with the process)."""

    __slots__ = ("closing", "key", "reqs")

    def __init__(self, key: str) -> None:
        self.key = key
        self.closing = False
        self.reqs: list[tuple[Request, int, float]] = []

    def offer(self, req: Request) -> str | None:  # (never offered to: ModelQueue's shape)
        return "UNAVAILABLE"

    def kill(self) -> list[Request]:
        out = [req for req, _, _ in self.reqs]
        self.reqs = []
        return out

    @property
    def pending(self) -> bool:
        return bool(self.reqs)


class _WithCopies:
    """R per key plus its published hot copies (what routing and placement ask owners for)."""

    __slots__ = ("base", "copies")

    def __init__(self, base: Mapping[str, int], copies: Mapping[str, int]) -> None:
        self.base = base
        self.copies = copies

    def get(self, key: str, default: int = 2) -> int:
        return self.base.get(key, default) + self.copies.get(key, 0)

    def __contains__(self, key: object) -> bool:
        return key in self.base


class SimNode(Host):
    """One node id; a crash ends its process, a restart begins a new ``epoch``.

    The ``Host`` fields are what the request path reads; the rest is the process."""

    # Slots: more attributes than CPython shares per class, so a dict per node otherwise.
    __slots__ = (
        "_activating",
        "_base_replicas",
        "_desired_ring",
        "_dirty",
        "_gossip_ids",
        "_hot",
        "_lazy",
        "_leaving",
        "_load_queue",
        "_loaded_seen",
        "_loaded_version",
        "_loading",
        "_loading_bytes",
        "_may_evict",
        "_models_changed",
        "_owned_ring",
        "_placement_due",
        "_placement_key",
        "_placement_refs",
        "_reported",
        "_seeds",
        "_stop_by",
        "_timer_at",
        "_waiting",
        "capacity",
        "closing",
        "control",
        "epoch",
        "gossip_address",
        "gossip_delay_s",
        "grpc_address",
        "misc_rng",
        "objectives",
        "owned",
        "phase",
        "residency",
        "ring_key",
        "service_rng",
        "snapshot",
        "swim",
        "world",
        "zone",
    )

    def __init__(
        self, world: NodeWorld, node_id: str, index: int, capacity: float, zone: str = ""
    ) -> None:
        super().__init__(node_id, index)
        self.world = world
        self.capacity = capacity
        self.zone = zone
        host = f"10.{index // 62500}.{index // 250 % 250}.{index % 250 + 1}"
        self.gossip_address = f"{host}:7946"
        self.grpc_address = f"{host}:7400"
        self.epoch = 0
        self.gossip_delay_s = 0.0
        self._reset()

    def _reset(self) -> None:
        seed = self.world.seed
        tag = f"{self.node_id}:{self.epoch}"
        self.clear(derive_rng(seed, f"replica:{tag}"))
        self.misc_rng = derive_rng(seed, f"node:{tag}")
        self.service_rng = derive_rng(seed, f"service:{tag}")
        self.swim: Swim | None = None
        self.control: ControlClient | None = None
        self.snapshot = ClusterSnapshot()
        self.ring_key: tuple[tuple[str, float], ...] = ()
        self.objectives: dict[str, ObjectiveEntry] = {}
        self.closing: set[ModelQueue] = set()
        self.phase = Phase.GONE
        self._timer_at = math.inf
        self._placement_due = False
        self._placement_key: frozenset[tuple[str, int]] = frozenset()
        self._placement_refs = MembershipView()
        self._seeds: tuple[ClusterSnapshot | None, dict[str, str]] = (None, {})
        self._models_changed = False
        self._load_queue: list[str] = []
        self._loading: str | None = None
        self._activating = False
        self._leaving = False
        self._reported: tuple[int, tuple[str, ...]] | None = None
        cluster = self.world.scenario.cluster
        self.residency: Residency | None = None
        if cluster.memory_budget_bytes > 0:
            self.residency = Residency(
                cluster.memory_budget_bytes, max_models=cluster.max_resident_models
            )
            self.cold = self._cold_start
        self._loading_bytes: dict[str, int] = {}
        self._waiting: dict[str, _Waiting] = {}
        self._may_evict: frozenset[str] = frozenset()
        self._lazy: frozenset[str] = frozenset()
        self._hot: dict[str, HotState] = {}
        self._base_replicas: Mapping[str, int] = {}
        self.owned: set[str] = set()
        self._owned_ring: FleetRing | None = None
        self._loaded_version = 0
        self._loaded_seen: Mapping[str, LoadedSet] = {}
        self._stop_by = math.inf
        # Node ids whose roster record, loaded set or gossip member changed since the view
        # was built (None: rebuild it whole), and the gossip ids it was built from.
        self._dirty: set[str] | None = None
        self._desired_ring: tuple[object, float | None, FleetRing | None] = (None, None, None)
        self._gossip_ids: KeysView[str] = _NO_IDS

    # ------------------------------------------------------------------ lifecycle

    def boot(
        self,
        preloaded: set[str] | None = None,
        lease_id: int = 0,
        gossip: Mapping[str, str] | None = None,
    ) -> None:
        """Start a fresh process: gossip, snapshot, registration as ``joining``.

        ``preloaded``/``lease_id``: a node of the initial cluster, already registered
        ``active`` under that lease and holding those models (the steady state);
        ``gossip``: the members its gossip holds alive from the start (``Swim.settle``)."""
        self.epoch += 1
        self._reset()
        self.up = True
        self.accepting = True
        self.frozen, self.frozen_until = False, 0.0
        now = self.world.loop.now
        swim_rng = derive_rng(self.world.seed, f"swim:{self.node_id}:{self.epoch}")
        self.swim = Swim(self.node_id, self.gossip_address, self.world.swim_config, swim_rng, now)
        if gossip:
            self.swim.settle(gossip, now)
        self.control = ControlClient(self)
        if lease_id:
            self.control.adopt(lease_id, NodeState.ACTIVE)
            self._activating = True
            for key in sorted(preloaded or ()):
                spec = self.world.workflows[key]
                if self.residency is not None:
                    self.residency.add(key, spec.bytes, now)
                self.executors[key] = Executor(
                    self,
                    spec,
                    self.world.loop,
                    self.world.engine,
                    self.service_rng,
                    self.executor_drained,
                )
        self.control.start()
        self._schedule_timer()
        if self.residency is not None:
            hot_s = self.world.scenario.cluster.hot_interval_s
            self.world.loop.after(hot_s * self.misc_rng.random(), self._observe_hot, self.epoch)
        interval = self.world.scenario.cluster.load_report_interval_s
        self.world.loop.after(interval * self.misc_rng.random(), self._report, self.epoch)

    def crash(self) -> list[ModelQueue]:
        """The process dies: nothing is sent, nothing is cleaned up. Returns its executors."""
        self.up = False
        self.accepting = False
        self.frozen = False
        pending, self.deferred = self.deferred, []
        for fn, value in pending:  # what waited for a frozen process now meets a dead one
            self.world.loop.at(self.world.loop.now, fn, value)
        dying: list[ModelQueue] = [
            *self.executors.values(),
            *sorted(self.closing, key=lambda e: e.key),
            *self._waiting.values(),
        ]
        self.executors.clear()
        self.closing.clear()
        return dying

    def pause(self, until: float) -> None:
        self.frozen = True
        self.frozen_until = max(self.frozen_until, until)
        self.world.loop.at(self.frozen_until, self._resume, (self.epoch, self.frozen_until))

    def _resume(self, arg: tuple[int, float]) -> None:
        epoch, until = arg
        if epoch != self.epoch or until != self.frozen_until or not self.frozen:
            return
        self.frozen = False
        pending, self.deferred = self.deferred, []
        for fn, value in pending:  # in arrival order, at the resume instant
            self.world.loop.at(self.world.loop.now, fn, value)

    def drain(self) -> None:
        if self.up and self.control is not None and self.control.state is not NodeState.DRAINING:
            self.control.set_state(NodeState.DRAINING)

    def _leave(self) -> None:
        """Drained: deregister, leave gossip, stop (``ClusterNode.stop`` after ``drained``).

        Like ``NodeServer.stop(grace)``, new requests are refused at once while the ones
        this node is ingress for get ``STOP_GRACE_S`` to finish."""
        self._leaving = True
        assert self.control is not None and self.swim is not None
        self.control.deregister()
        self._dispatch(self.swim.leave(self.world.loop.now))
        self.accepting = False
        self._stop_by = self.world.loop.now + STOP_GRACE_S
        self.world.node_left(self)
        self._stopping(self.epoch)

    def _stopping(self, epoch: int) -> None:
        """The server stops once the requests it is ingress for have ended (or at grace)."""
        if epoch != self.epoch or not self.up or self.accepting:
            return
        if self.world.loop.now < self._stop_by and self.world.engine.ingress_requests(self):
            self.world.loop.after(0.05, self._stopping, epoch)
            return
        self.up = False
        self.world.node_stopped(self)

    # ------------------------------------------------------------------ gossip

    def _schedule_timer(self) -> None:
        swim = self.swim
        if swim is None:
            return
        deadline = swim.next_deadline()
        if deadline is not None and deadline < self._timer_at:
            self._timer_at = deadline
            self.world.loop.at(deadline, self._tick, (self.epoch, deadline))

    def _tick(self, arg: tuple[int, float]) -> None:
        epoch, at = arg
        if epoch != self.epoch or not self.up or at != self._timer_at:
            return
        if self.frozen:
            self.defer(self._tick, arg)
            return
        self._timer_at = math.inf
        assert self.swim is not None
        self._dispatch(self.swim.on_tick(self.world.loop.now))

    def receive(self, arg: tuple[int, Message, str]) -> None:
        """A datagram arrives (dropped when the process that it was sent to is gone)."""
        if not self.up or self.swim is None:
            return
        if self.frozen:
            self.defer(self.receive, arg)
            return
        _, message, source = arg
        self._dispatch(self.swim.on_message(message, source, self.world.loop.now))

    def _dispatch(self, effects: list[Effect]) -> None:
        membership = False
        world = self.world
        for effect in effects:
            if type(effect) is Send:
                world.send_gossip(self, effect)
            elif type(effect) is MemberChanged:
                membership = True
                member = effect.member
                if self._dirty is not None:
                    self._dirty.add(member.node_id)
                self.in_flight_of[member.node_id] = member.in_flight
                self.limits.clear()
                world.member_changed(self, effect)
            elif type(effect) is LoadChanged:
                member = effect.member
                if self._dirty is not None:
                    self._dirty.add(member.node_id)
                self.in_flight_of[member.node_id] = member.in_flight
                self.limits.clear()
        if membership:
            self.refresh()
        if self.up:
            self._schedule_timer()

    def _report(self, epoch: int) -> None:
        """The load reporter: gossip (in flight, load summary) and put the loaded set in etcd
        when it changed (``shardline.node.cluster.cluster_node``)."""
        if epoch != self.epoch or not self.up:
            return
        interval = self.world.scenario.cluster.load_report_interval_s
        self.world.loop.after(interval, self._report, epoch)
        if self.frozen or self.swim is None:
            return
        current = (self.in_flight, tuple(sorted(self.executors)))
        if current != self._reported:
            models_changed = self._reported is None or self._reported[1] != current[1]
            self._reported = current
            if models_changed:
                self._loaded_version += 1
                loaded = LoadedSet(
                    self.node_id,
                    self._loaded_version,
                    {key: self.world.workflows[key].bytes for key in current[1]},
                )
                assert self.control is not None
                self.control.publish_loaded(loaded)
            summary = Load(
                resident_bytes=sum(self.world.workflows[k].bytes for k in current[1]),
                loaded_count=len(current[1]),
                loaded_version=self._loaded_version,
            )
            self.swim.set_local_load(current[0], summary)
            self._schedule_timer()

    # ------------------------------------------------------------------ view and placement

    def on_snapshot(self, snapshot: ClusterSnapshot, events: list[KeyEvent] | None) -> None:
        """``events``: what changed since the previous snapshot (None: anything may have)."""
        previous = self.snapshot
        self.snapshot = snapshot
        fleet = self.world.fleet is not None
        loaded_ids: Iterable[str] | None = None
        if events is None:
            self._dirty = None
        else:
            loaded_ids = set()
            for event in events:
                section, _, name = event.key.partition("/")
                if section == "loaded":
                    loaded_ids.add(name)
                    if self._dirty is not None:
                        self._dirty.add(name)
                elif section == "nodes" and self._dirty is not None:
                    self._dirty.add(name)
        if snapshot.loaded is not self._loaded_seen:  # who holds which model (etcd records)
            old = self._loaded_seen
            self._loaded_seen = snapshot.loaded
            if loaded_ids is None:
                loaded_ids = old.keys() | snapshot.loaded.keys()
            for node_id in loaded_ids:
                before, after = old.get(node_id), snapshot.loaded.get(node_id)
                if before is after:
                    continue
                changed = self.world.keys_changed(before, after)
                if not changed:
                    continue
                self.models_of[node_id] = after.keys if after is not None else frozenset()
                cand = self.cand  # only these keys' candidates can change
                if len(changed) <= len(cand):
                    for key in changed:
                        cand.pop(key, None)
                else:
                    for key in [k for k in cand if k in changed]:
                        del cand[key]
                self._models_changed = True
                if fleet and node_id != self.node_id and self._unconcerned(changed):
                    # Placement reads other nodes' loaded sets only for keys on this node's
                    # walks (handed over, releasable): nothing here for it to do.
                    continue
                self._placement_soon()
        replicas = replicas_of(snapshot)
        if self.residency is None:
            if replicas != self.replicas:
                self.cand.clear()  # (owners depend on R)
            self.replicas = replicas
        elif replicas is not self._base_replicas:  # (R plus the published hot copies)
            self._base_replicas = replicas
            self.replicas = _WithCopies(replicas, self.world.copies)  # type: ignore[assignment]
            self.cand.clear()
        objectives: dict[str, ObjectiveEntry] = {}
        for name, doc in snapshot.objectives.items():
            known = self.objectives.get(name)
            revision = int(doc["revision"])
            if known is not None and known.revision == revision:
                objectives[name] = known
            else:
                objectives[name] = self.world.objective_entry(name, revision, doc)
        self.objectives = objectives
        self.objective_at = [objectives.get(name) for name in self.world.engine.names]
        if (
            fleet
            and previous.nodes is snapshot.nodes
            and self.view.members
            and previous.objectives is snapshot.objectives
        ):
            return  # only loaded sets changed: routing reads them from ``models_of``
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the view (``ClusterMembership._refresh``); ring and placement follow."""
        swim = self.swim
        if swim is None or not self.up:
            return
        if self._seeds[0] is not self.snapshot:  # the roster's gossip addresses
            nodes = self.snapshot.nodes.items()
            seeds = {n: r.gossip_address for n, r in nodes if n != self.node_id}
            self._seeds = (self.snapshot, seeds)
        self._dispatch_quiet(swim.set_seeds(self._seeds[1], self.world.loop.now))
        gossip = swim.members()
        dirty = self._dirty_ids(gossip)
        view = self._view_of(gossip, dirty)
        self._dirty, self._gossip_ids = set(), gossip.keys()
        self._models_changed = False
        old = self.view
        if view is old:
            return
        if view.members.keys() != old.members.keys():
            self.cand.clear()  # (liveness and load changes leave the candidates as they are)
        self.view = view
        if dirty is None or any(_ring_entry(old, n) != _ring_entry(view, n) for n in dirty):
            ring_key = tuple((m.node_id, m.record.capacity) for m in view.active())
        else:
            ring_key = self.ring_key
        if ring_key != self.ring_key:
            self.ring_key = ring_key
            fleet = self.world.fleet
            if fleet is not None and fleet.covers(ring_key):
                self.ring = fleet.ring(ring_key)
            else:
                self.ring = handoff.ring_of(view)
            self.cand.clear()
            self.world.ring_changed(self)
        # Placement reads the members, their records and models (models: see _dispatch);
        # a change of liveness alone (suspect <-> alive) gives it nothing new to do.
        if dirty is None or any(_record_of(old, n) is not _record_of(view, n) for n in dirty):
            placement = frozenset([(n, id(m.record)) for n, m in view.members.items()])
        else:
            placement = self._placement_key
        if placement != self._placement_key:
            self._placement_key = placement
            self._placement_refs = view  # keeps those records alive: their ids stay unique
            self._placement_soon()

    def _dirty_ids(self, gossip: Mapping[str, Member]) -> set[str] | None:
        """The ids whose members may differ from ``self.view``'s (None: all): the changes
        heard since it was built, and gossip members added or reaped (reaping is silent)."""
        if self._dirty is None:
            return None
        added_or_reaped = gossip.keys() ^ self._gossip_ids
        return self._dirty | added_or_reaped if added_or_reaped else self._dirty

    def _view_of(self, gossip: Mapping[str, Member], dirty: set[str] | None) -> MembershipView:
        """``build_view`` of the current snapshot and gossip, updating ``self.view`` in place
        of rebuilding every member on each change (``view.update_view``): a fleet's nodes
        each hear every other node join, O(nodes^2) events in all."""
        if dirty is None:
            return build_view(self.snapshot, gossip, self.node_id)
        return update_view(self.view, self.snapshot, gossip, dirty, self.node_id)

    def _dispatch_quiet(self, effects: list[Effect]) -> None:
        for effect in effects:
            if type(effect) is Send:
                self.world.send_gossip(self, effect)

    def _placement_soon(self) -> None:
        """Placement runs in its own task: changes coalesce into one pass."""
        if not self._placement_due and self.up:
            self._placement_due = True
            self.world.loop.after(0.001, self._placement, self.epoch)

    def _placement(self, epoch: int) -> None:
        if epoch != self.epoch or not self.up:
            return
        if self.frozen:
            self.defer(self._placement, epoch)
            return
        self._placement_due = False
        swim = self.swim
        assert swim is not None and self.control is not None
        view = self.view
        if self.residency is not None:  # (reads loaded sets from ``models_of``, states from
            self._models_changed = False  # the view: a roster or gossip change refreshed it)
            self._placement_budget(view)
            return
        if self._models_changed:  # the view's load fields are stale: bring them up to date
            self._models_changed = False
            gossip = swim.members()
            view = self._view_of(gossip, self._dirty_ids(gossip))
        s = handoff.step(self.node_id, view, self.replicas, set(self.executors), self.in_flight)
        for key in sorted(s.load):
            if key not in self._load_queue and key != self._loading:
                self._load_queue.append(key)
        self._next_load()
        for key in sorted(s.unload):
            executor = self.executors.pop(key)
            executor.closing = True
            self.cand.pop(key, None)
            if executor.pending:
                self.closing.add(executor)
        self.phase = s.phase
        if s.phase is Phase.READY and not self._activating and self._loading is None:
            self._activating = True
            self.control.set_state(NodeState.ACTIVE)
        elif s.phase is Phase.DRAINED and not self._leaving:
            self._leave()

    def _next_load(self) -> None:
        """Start the next queued load that can start (keys that stay lazy are dropped)."""
        busy: set[str] | None = None  # (no request starts or ends within this loop)
        while self._loading is None and self._load_queue:
            key = self._load_queue.pop(0)
            spec = self.world.workflows[key]
            if self.residency is not None:  # Residence.load: plan (evict) first, or stay lazy
                if key in self.executors or key in self._waiting:
                    continue
                if busy is None:
                    busy = self._busy()
                if not self._make_room(key, spec.bytes, evict=key in self._may_evict, busy=busy):
                    continue
                self._loading_bytes[key] = spec.bytes
            self._loading = key
            took = spec.load_s * (0.8 + 0.4 * self.misc_rng.random())
            self.world.loop.after(took, self._loaded, (self.epoch, key))

    def _loaded(self, arg: tuple[int, str]) -> None:
        epoch, key = arg
        if epoch != self.epoch or not self.up:
            return
        if self.frozen:
            self.defer(self._loaded, arg)
            return
        self._loading = None
        if self.residency is not None:
            self._loading_bytes.pop(key, None)
        if key in self.world.workflows and key not in self.executors:
            spec = self.world.workflows[key]
            if self.residency is not None:
                self.residency.add(key, spec.bytes, self.world.loop.now)
                self.world.residency_watch.loaded(self, key, lazy=False)
            self.executors[key] = Executor(
                self,
                spec,
                self.world.loop,
                self.world.engine,
                self.service_rng,
                self.executor_drained,
            )
            self.cand.pop(key, None)
        self._next_load()
        self._placement_soon()

    # ------------------------------------------------------------------ memory budget

    def _r(self, key: str) -> int:
        return self.replicas.get(key, handoff.DEFAULT_REPLICAS)

    def _owned_for(self, ring: FleetRing) -> set[str]:
        """The keys this node owns on ``ring`` (R plus hot copies each), updated from the
        last ring by re-asking only the keys whose walk passes a member that changed."""
        fleet = ring.fleet
        me = self.node_id
        near = fleet.keys_near.get(me, frozenset())
        old = self._owned_ring
        if old is ring:
            return self.owned
        if old is None or old.fleet is not fleet:
            affected: set[str] | frozenset[str] = near
            owned: set[str] = set()
        else:
            affected = set()
            for changed in old.ids ^ ring.ids:
                affected |= fleet.keys_near.get(changed, frozenset()) & near
            owned = set(self.owned)
        r = self._r
        for key in affected:
            if me in ring.owners(key, r(key)):
                owned.add(key)
            else:
                owned.discard(key)
        self._owned_ring, self.owned = ring, owned
        return owned

    def copies_changed(self, key: str) -> None:
        """The published hot copies of ``key`` changed (this node is on its walk)."""
        self.cand.pop(key, None)
        ring = self._owned_ring
        if ring is not None:
            if self.node_id in ring.owners(key, self._r(key)):
                self.owned.add(key)
            else:
                self.owned.discard(key)
        self._placement_soon()

    def _desired(self, view: MembershipView) -> set[str]:
        """``handoff.desired`` on the ring shared by the fleet (or per node without one)."""
        me = view.members.get(self.node_id)
        if me is None or me.state is NodeState.DRAINING:
            return set()
        joining = me.record.capacity if me.state is NodeState.JOINING else None
        fleet = self.world.fleet
        if fleet is not None:
            memo = self._desired_ring
            if view is self.view and memo[0] is self.ring_key and memo[1] == joining:
                ring = memo[2]  # (ring_key: this view's active members, as below)
            else:
                members = {m.node_id: m.record.capacity for m in view.active()}
                if joining is not None:
                    members[self.node_id] = joining
                ring = fleet.ring(members.items()) if fleet.covers(members.items()) else None
                if view is self.view:
                    self._desired_ring = (self.ring_key, joining, ring)
            if ring is not None:
                return set(self._owned_for(ring))
        extra = (self.node_id,) if me.state is NodeState.JOINING else ()
        replicas = {k: self._r(k) for k in self._base_replicas}
        return handoff.owned(self.node_id, handoff.ring_of(view, extra), replicas)

    def _releasable(self, key: str) -> bool:
        """``handoff.releasable`` with the loaded sets as this node knows them."""
        if key not in self.replicas:
            return True
        others = [o for o in self.ring.owners(key, self._r(key)) if o != self.node_id]
        if not others:
            return False
        return all(key in self.models_of.get(o, frozenset()) for o in others)

    def _placement_budget(self, view: MembershipView) -> None:
        """``shardline.node.cluster.placement.reconcile`` with a budget: the keys
        ``handoff.step`` would load split into eager (pinned, handed over by a node that
        loses them, then others while they fit in free room) and lazy (first request)."""
        me = view.members.get(self.node_id)
        assert self.control is not None
        if me is None:
            self.phase = Phase.GONE
            return
        want = self._desired(view)
        resident = set(self.executors)
        load = want - resident
        unload = {k for k in resident - want if self._releasable(k)}
        if me.state is NodeState.JOINING:
            unload = set()
        for key in sorted(unload):
            if self.executors[key].pending:
                continue  # (a busy model is let go once its requests end)
            executor = self.executors.pop(key)
            executor.closing = True
            self.cand.pop(key, None)
            assert self.residency is not None
            self.residency.remove(key, eviction=False)
            self.world.residency_watch.unloaded(self, key)
        pinned = self.world.pinned
        if load:
            # Handed over: held warm by a member that does not own it (asked once per key,
            # when it becomes ours: a key already lazy was asked before).
            new = load - self._lazy
            handed: set[str] = set()
            fleet = self.world.fleet
            if (  # holders are on a key's walk (every member is on the fleet's roster)
                new
                and fleet is not None
                and not fleet.fallbacks
                and isinstance(self.ring, FleetRing)
                and view.members.keys() <= fleet.capacity.keys()
            ):
                models_of, members = self.models_of, view.members
                for key in new:
                    owners = self.ring.owners(key, self._r(key))
                    for node_id in fleet.walk.get(key, ()):
                        if (
                            node_id != self.node_id
                            and node_id in members
                            and node_id not in owners
                            and key in models_of.get(node_id, ())
                        ):
                            handed.add(key)
                            break
            elif new:
                for node_id, keys in self.models_of.items():
                    if node_id == self.node_id or node_id not in view.members:
                        continue
                    for key in new.intersection(keys):
                        if node_id not in self.ring.owners(key, self._r(key)):
                            handed.add(key)
            first = sorted(load & pinned) + sorted(handed - pinned)
            self._may_evict = frozenset(first)
            rest: Iterable[str] = load - pinned - handed
            room = self._free_room()
            if room[0] <= 0 or room[1] < 1:  # full: only a key's own load can give it room
                rest = [k for k in rest if k in self._loading_bytes]
            sizes, residency = self.world.workflows, self.residency
            assert residency is not None
            fit = fitting(residency, self._loading_bytes, [(k, sizes[k].bytes) for k in rest], room)
            eager = first + sorted(fit)  # (= fitting over the sorted keys: it keeps their order)
            self._lazy = frozenset(load.difference(eager))
            for key in eager:
                if key not in self._load_queue and key != self._loading:
                    self._load_queue.append(key)
            self._next_load()
        if me.state is NodeState.DRAINING:
            left = set(self.executors) - unload
            self.phase = Phase.DRAINED if not left and self.in_flight == 0 else Phase.DRAINING
        elif me.state is NodeState.JOINING:
            busy = self._loading is not None or any(k in load for k in self._load_queue)
            self.phase = Phase.JOINING if busy else Phase.READY
        else:
            self.phase = Phase.ACTIVE
        if self.phase is Phase.READY and not self._activating:
            self._activating = True
            self.control.set_state(NodeState.ACTIVE)
        elif self.phase is Phase.DRAINED and not self._leaving:
            self._leave()

    def _unconcerned(self, changed: set[str] | frozenset[str]) -> bool:
        """None of ``changed`` is on this node's precomputed walks (a fleet) or held here."""
        fleet = self.world.fleet
        near = fleet.keys_near.get(self.node_id) if fleet is not None else None
        if near is None or not near.isdisjoint(changed):
            return False
        executors = self.executors
        return not any(k in executors for k in changed)

    def _busy(self) -> set[str]:
        return {k for k, e in self.executors.items() if e.pending}

    def _free_room(self) -> tuple[int, int]:
        assert self.residency is not None
        return free_room(self.residency, self._loading_bytes)

    def _make_room(self, key: str, size: int, *, evict: bool, busy: set[str] | None = None) -> bool:
        """``Residency.plan`` for a load of ``key``; evict what it names (when allowed).
        ``busy``: the models with requests in flight, when the caller has them."""
        assert self.residency is not None
        try:
            plan = self.residency.plan(
                key, size, pinned=self.world.pinned,
                busy=self._busy() if busy is None else busy, loading=self._loading_bytes,
            )  # fmt: skip
        except NoRoom as exc:
            self.world.residency_watch.no_room(self, key, str(exc))
            return False
        if plan.evict and not evict:
            return False
        for victim in plan.evict:
            executor = self.executors.pop(victim)
            self.world.residency_watch.evicting(self, victim, executor.pending)
            executor.closing = True
            self.cand.pop(victim, None)
            self.residency.remove(victim, eviction=True)
        return True

    def _cold_start(self, req: Request, hops: int) -> bool:
        """``Residence.ensure``: a request for a model placed here but not resident waits
        for its load (one load however many wait), bounded by its deadline."""
        if not self.accepting or self.frozen:
            return False
        key = req.key
        if self.node_id not in self.ring.owners(key, self._r(key)):
            return False
        now = self.world.loop.now
        waiting = self._waiting.get(key)
        if waiting is None:
            spec = self.world.workflows.get(key)
            if spec is None or not self._make_room(key, spec.bytes, evict=True):
                return False
            waiting = self._waiting[key] = _Waiting(key)
            self._loading_bytes[key] = spec.bytes
            took = spec.load_s * (0.8 + 0.4 * self.misc_rng.random())
            self.world.loop.after(took, self._lazy_loaded, (self.epoch, key))
        waiting.reqs.append((req, hops, now))
        return True

    def _lazy_loaded(self, arg: tuple[int, str]) -> None:
        epoch, key = arg
        if epoch != self.epoch or not self.up:
            return
        if self.frozen:
            self.defer(self._lazy_loaded, arg)
            return
        waiting = self._waiting.pop(key)
        self._loading_bytes.pop(key, None)
        now = self.world.loop.now
        executor = self.executors.get(key)
        if executor is None:
            spec = self.world.workflows[key]
            assert self.residency is not None
            self.residency.add(key, spec.bytes, now)
            executor = self.executors[key] = Executor(
                self, spec, self.world.loop, self.world.engine, self.service_rng,
                self.executor_drained,
            )  # fmt: skip
            self.cand.pop(key, None)
            self.world.residency_watch.loaded(self, key, lazy=True)
        engine = self.world.engine
        watch = self.world.residency_watch
        for req, hops, since in waiting.reqs:
            if not req.done:
                watch.cold_start(now - since)
                engine.loaded_for(req, self, hops, executor)

    def _observe_hot(self, epoch: int) -> None:
        """A primary owner feeds ``hot_copies.observe`` the load of each model it holds
        (in flight per warm copy, queue time) and publishes a change of copies."""
        if epoch != self.epoch or not self.up:
            return
        world = self.world
        cluster = world.scenario.cluster
        world.loop.after(cluster.hot_interval_s, self._observe_hot, epoch)
        if self.frozen:
            return
        policy = cluster.hot_policy()
        now = world.loop.now
        hot = self._hot
        for key, executor in self.executors.items():
            state = hot.get(key)
            queue = getattr(executor, "queue", ())
            if state is None and not queue:
                continue
            owners = self.ring.owners(key, self._r(key))
            if not owners or owners[0] != self.node_id:
                hot.pop(key, None)
                continue
            oldest = min((r.t_queued for r in queue), default=now)
            state = observe(
                policy, state or HotState(world.copies.get(key, 0)), now,
                in_flight_per_copy=float(len(queue)), queue_ms=(now - oldest) * 1000.0,
            )  # fmt: skip
            if state.copies != world.copies.get(key, 0):
                world.publish_copies(self, key, state.copies)
            if state.copies == 0 and state.above_since is None and state.below_since is None:
                hot.pop(key, None)
            else:
                hot[key] = state

    def executor_drained(self, executor: ModelQueue) -> None:
        """A closing executor finished its last batch."""
        self.closing.discard(executor)
        if self.control is not None and self.control.state is NodeState.DRAINING:
            self._placement_soon()

    @property
    def random(self) -> random.Random:
        return self.misc_rng

    def load_summary(self) -> Mapping[str, Any]:
        return {
            "id": self.node_id,
            "up": self.up,
            "phase": str(self.phase),
            "models": sorted(self.executors),
            "in_flight": self.in_flight,
        }


_NO_IDS: KeysView[str] = {}.keys()


def _ring_entry(view: MembershipView, node_id: str) -> float | None:
    """What the ring reads of a member: its capacity while active, else nothing."""
    member = view.members.get(node_id)
    if member is None or member.state is not NodeState.ACTIVE:
        return None
    return member.record.capacity


def _record_of(view: MembershipView, node_id: str) -> object:
    member: ViewMember | None = view.members.get(node_id)
    return None if member is None else member.record


def free_room(residency: Residency, loading: Mapping[str, int]) -> tuple[int, int]:
    """Bytes and model slots left under the budget with every load in ``loading`` (key ->
    bytes; resident keys ignored) counted, as ``Residency.plan`` counts them."""
    resident = residency.resident
    pending = [b for k, b in loading.items() if k not in resident]
    return (
        residency.budget_bytes - residency.resident_bytes - sum(pending),
        residency.max_models - len(resident) - len(pending),
    )


def fits_free(
    residency: Residency,
    loading: Mapping[str, int],
    key: str,
    size: int,
    room: tuple[int, int] | None = None,
) -> bool:
    """``Residence.fits_free``: does ``Residency.plan(key, size, loading=loading, ...)``
    evict nothing (and not raise ``NoRoom``)? It does exactly when ``key`` is resident or
    fits in the free room (its own load in progress given back), whatever is pinned or busy
    (tests/sim/test_fleet.py checks it against ``plan``). Answered from that arithmetic with
    ``room`` (``free_room``) computed once per placement pass: ``plan`` with the busy set of
    every executor costs O(resident) per key, and placement asks it for every lazy key."""
    room = free_room(residency, loading) if room is None else room
    return bool(fitting(residency, loading, [(key, size)], room))


def fitting(
    residency: Residency,
    loading: Mapping[str, int],
    keys: Iterable[tuple[str, int]],
    room: tuple[int, int],
) -> list[str]:
    """The keys of ``keys`` ((key, size) pairs) that ``fits_free`` each alone, in order."""
    free_bytes, free_count = room
    resident = residency.resident
    out: list[str] = []
    for key, size in keys:
        if key in resident:
            out.append(key)
            continue
        own = loading.get(key)
        if own is None:
            if size <= free_bytes and free_count >= 1:
                out.append(key)
        elif size <= free_bytes + own and free_count >= 0:
            out.append(key)
    return out
