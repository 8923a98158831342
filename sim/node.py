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
from collections.abc import Mapping
from typing import Any, Protocol

from shardline.membership.loaded import LoadedSet
from shardline.membership.registry import NodeState
from shardline.membership.snapshot import ClusterSnapshot
from shardline.membership.swim import LoadChanged, MemberChanged, Send, Swim
from shardline.membership.swim_state import Effect, Load, Message, SwimConfig
from shardline.membership.view import MembershipView, build_view
from shardline.router import handoff
from shardline.router.handoff import Phase
from shardline.sim.control import ControlClient, ControlWorld
from shardline.sim.core import derive_rng
from shardline.sim.executor import Executor
from shardline.sim.request import Host, ModelQueue, ObjectiveEntry
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

    def ring_changed(self, node: SimNode) -> None:
        """``node`` built a new ring (traced)."""

    def node_left(self, node: SimNode) -> None:
        """``node`` drained, deregistered and left gossip."""

    def node_stopped(self, node: SimNode) -> None:
        """``node``'s process exited after a graceful stop."""

    def objective_entry(self, name: str, revision: int, doc: Any) -> ObjectiveEntry:
        """The one shared entry of an objective revision."""


class SimNode(Host):
    """One node id; a crash ends its process, a restart begins a new ``epoch``.

    The ``Host`` fields are what the request path reads; the rest is the process."""

    # Slots: more attributes than CPython shares per class, so a dict per node otherwise.
    __slots__ = (
        "_activating",
        "_leaving",
        "_load_queue",
        "_loaded_seen",
        "_loaded_version",
        "_loading",
        "_models_changed",
        "_placement_due",
        "_placement_key",
        "_placement_refs",
        "_reported",
        "_seeds",
        "_stop_by",
        "_timer_at",
        "capacity",
        "closing",
        "control",
        "epoch",
        "gossip_address",
        "gossip_delay_s",
        "grpc_address",
        "misc_rng",
        "objectives",
        "phase",
        "ring_key",
        "service_rng",
        "snapshot",
        "swim",
        "world",
    )

    def __init__(self, world: NodeWorld, node_id: str, index: int, capacity: float) -> None:
        super().__init__(node_id, index)
        self.world = world
        self.capacity = capacity
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
        self._placement_key: tuple[tuple[str, int], ...] = ()
        self._placement_refs = MembershipView()
        self._seeds: tuple[ClusterSnapshot | None, dict[str, str]] = (None, {})
        self._models_changed = False
        self._load_queue: list[str] = []
        self._loading: str | None = None
        self._activating = False
        self._leaving = False
        self._reported: tuple[int, tuple[str, ...]] | None = None
        self._loaded_version = 0
        self._loaded_seen: Mapping[str, LoadedSet] = {}
        self._stop_by = math.inf

    # ------------------------------------------------------------------ lifecycle

    def boot(self, preloaded: set[str] | None = None, lease_id: int = 0) -> None:
        """Start a fresh process: gossip, snapshot, registration as ``joining``.

        ``preloaded``/``lease_id``: a node of the initial cluster, already registered
        ``active`` under that lease and holding those models (the steady state)."""
        self.epoch += 1
        self._reset()
        self.up = True
        self.accepting = True
        self.frozen, self.frozen_until = False, 0.0
        now = self.world.loop.now
        swim_rng = derive_rng(self.world.seed, f"swim:{self.node_id}:{self.epoch}")
        self.swim = Swim(self.node_id, self.gossip_address, self.world.swim_config, swim_rng, now)
        self.control = ControlClient(self)
        if lease_id:
            self.control.adopt(lease_id, NodeState.ACTIVE)
            self._activating = True
            for key in sorted(preloaded or ()):
                spec = self.world.workflows[key]
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
        dying = [*self.executors.values(), *sorted(self.closing, key=lambda e: e.key)]
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
                self.in_flight_of[member.node_id] = member.in_flight
                self.limits.clear()
                world.member_changed(self, effect)
            elif type(effect) is LoadChanged:
                member = effect.member
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

    def on_snapshot(self, snapshot: ClusterSnapshot) -> None:
        self.snapshot = snapshot
        if snapshot.loaded is not self._loaded_seen:  # who holds which model (etcd records)
            old = self._loaded_seen
            self._loaded_seen = snapshot.loaded
            for node_id in old.keys() | snapshot.loaded.keys():
                before, after = old.get(node_id), snapshot.loaded.get(node_id)
                if before is after:
                    continue
                keys_before = before.keys if before is not None else frozenset()
                keys_after = after.keys if after is not None else frozenset()
                if keys_before == keys_after:
                    continue
                self.models_of[node_id] = tuple(sorted(keys_after))
                for key in keys_before ^ keys_after:
                    self.cand.pop(key, None)  # only these keys' candidates can change
                self._models_changed = True
                self._placement_soon()
        replicas = replicas_of(snapshot)
        if replicas != self.replicas:
            self.cand.clear()  # (owners depend on R)
        self.replicas = replicas
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
        view = build_view(self.snapshot, swim.members(), self.node_id)
        self._models_changed = False
        if view == self.view:
            return
        if view.members.keys() != self.view.members.keys():
            self.cand.clear()  # (liveness and load changes leave the candidates as they are)
        self.view = view
        ring_key = tuple((m.node_id, m.record.capacity) for m in view.active())
        if ring_key != self.ring_key:
            self.ring_key = ring_key
            self.ring = handoff.ring_of(view)
            self.cand.clear()
            self.world.ring_changed(self)
        # Placement reads the members, their records and models (models: see _dispatch);
        # a change of liveness alone (suspect <-> alive) gives it nothing new to do.
        placement = tuple([(n, id(m.record)) for n, m in view.members.items()])
        if placement != self._placement_key:
            self._placement_key = placement
            self._placement_refs = view  # keeps those records alive: their ids stay unique
            self._placement_soon()

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
        if self._models_changed:  # the view's load fields are stale: rebuild
            self._models_changed = False
            view = build_view(self.snapshot, swim.members(), self.node_id)
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
        if self._loading is not None or not self._load_queue:
            return
        key = self._load_queue.pop(0)
        self._loading = key
        spec = self.world.workflows[key]
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
        if key in self.world.workflows and key not in self.executors:
            spec = self.world.workflows[key]
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
