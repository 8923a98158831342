"""The simulated world: nodes, network, etcd, workload and faults on one virtual clock.

``World(scenario, seed).run()`` boots the initial cluster in its steady state (records
``active`` in etcd, each node holding its share of the ring over all of them), starts the
workload after ``WARMUP_S`` (gossip has met by then), fires the fault schedule, stops new
requests at ``duration_s`` and runs on until every request in flight has ended. The main
loop merges the arrival stream (generated in numpy chunks, no heap entry per arrival)
with the event heap; everything else is an event.

The world is where the parts meet: it builds them all and hands each what it needs; none of
them imports it (each names what it uses of the world in a protocol: ``RequestWorld``,
``NodeWorld``, ``ControlWorld``, ``CheckedWorld``, ``FaultWorld``).
"""

from __future__ import annotations

import gc
import heapq
import json
import math
from collections.abc import Callable
from typing import Any, TypeVar

from shardline.membership.loaded import LoadedSet
from shardline.membership.registry import NodeRecord, NodeState
from shardline.membership.snapshot import ClusterSnapshot, KeyEvent
from shardline.membership.swim_state import MemberChanged, MemberState, Send
from shardline.router import handoff
from shardline.router.objectives import ObjectiveConfig
from shardline.router.ring import Ring, RingMember
from shardline.sim.chaos import Chaos
from shardline.sim.checks import SAMPLE_S, Liveness, ResidencyCheck, Safety
from shardline.sim.control import Process
from shardline.sim.core import EventLoop, derive_rng
from shardline.sim.etcd import EtcdDouble
from shardline.sim.fleet import FleetOwners
from shardline.sim.metrics import Metrics
from shardline.sim.network import Network
from shardline.sim.node import SimNode
from shardline.sim.request import ObjectiveEntry
from shardline.sim.scenario import Scenario
from shardline.sim.serving import RequestEngine
from shardline.sim.workload import Workload

WARMUP_S = 3.0
_T = TypeVar("_T")


class World:
    def __init__(self, scenario: Scenario, seed: int | None = None) -> None:
        self.scenario = scenario
        self.seed = scenario.seed if seed is None else seed
        self.loop = EventLoop()
        self.net = Network(scenario.network, derive_rng(self.seed, "net"))
        self.etcd = EtcdDouble(on_commit=self._on_commit)
        self.swim_config = scenario.cluster.swim_config()
        self.workflows = {w.key: w for w in scenario.workflows}
        self.metrics = Metrics({w.key: w.replicas for w in scenario.workflows})
        checks = scenario.checks
        self.safety = Safety(self, scenario.detection_bound_s(), checks.config_staleness_s)
        self.liveness = Liveness(self, scenario.heal_at_s(), checks.convergence_bound_s)
        self.nodes: dict[str, SimNode] = {}
        self.by_address: dict[str, SimNode] = {}
        self.down_since: dict[str, float] = {}
        longest = max((o.deadline_ms for o in scenario.objectives), default=0.0) / 1000.0
        self.end_s = scenario.duration_s + max(scenario.tail_s, longest + 1.0)
        self.workload = Workload(scenario, self.seed, WARMUP_S, scenario.duration_s)
        self.engine = RequestEngine(self)
        self.chaos = Chaos(self, derive_rng(self.seed, "faults"))
        self._watch_rng = derive_rng(self.seed, "watch")
        self._configs: dict[tuple[str, int], ObjectiveEntry] = {}
        self.gossip_sent = 0
        self._record_states: dict[bytes, NodeState] = {}
        # Memory budgets, hot copies and fleets (``shardline.sim.fleet``).
        self.residency_watch = ResidencyCheck(self, scenario.cluster.memory_budget_bytes)
        self.pinned = frozenset(w.key for w in scenario.workflows if w.pinned)
        self.copies: dict[str, int] = {}
        self.fleet: FleetOwners | None = None
        self._snapshots: dict[tuple[int, int], tuple[ClusterSnapshot, ClusterSnapshot]] = {}
        self._diffs: dict[tuple[int, int], tuple[object, object, frozenset[str]]] = {}
        self._batch_due = False

    # ------------------------------------------------------------------ set-up

    def add_node(self, node_id: str, capacity: float) -> SimNode:
        zone = self.scenario.cluster.zone_of(len(self.nodes))
        node = SimNode(self, node_id, len(self.nodes), capacity, zone)
        self.nodes[node_id] = node
        self.by_address[node.gossip_address] = node
        return node

    def setup(self) -> None:
        etcd = self.etcd
        for spec in self.scenario.workflows:
            name, version = spec.key.split("@")
            doc = {
                "manifest": {"replicas": spec.replicas},
                "artifact_uri": f"file:///sim/{spec.key}",
            }
            etcd.put(f"workflows/{name}/{version}", json.dumps(doc, sort_keys=True).encode())
        for objective in self.scenario.objectives:
            etcd.put_objective(objective.name, objective.config, 0.0)
        self.safety.start()
        cluster = self.scenario.cluster
        capacities = list(cluster.capacities) + [1.0] * cluster.nodes
        initial = [self.add_node(f"n{i:02d}", capacities[i]) for i in range(cluster.nodes)]
        replicas = {w.key: w.replicas for w in self.scenario.workflows}
        if self.scenario.catalog is not None:  # owners shared by every node
            members = [(n.node_id, n.capacity) for n in initial]
            self.fleet = FleetOwners(members, replicas, {n.node_id: n.zone for n in initial})
            fleet_ring = self.fleet.ring(members)
            owned = {n.node_id: set[str]() for n in initial}
            for key, r in replicas.items():
                for owner in fleet_ring.owners(key, r):
                    owned[owner].add(key)
        else:
            ring = Ring(RingMember(n.node_id, n.capacity) for n in initial)
            owned = {n.node_id: handoff.owned(n.node_id, ring, replicas) for n in initial}
        gossip = {n.node_id: n.gossip_address for n in initial} if cluster.gossip_settled else {}
        for node in initial:  # the steady state: registered active, holding its share
            lease = etcd.grant(cluster.lease_ttl_s, 0.0)
            record = NodeRecord(
                node.node_id, node.grpc_address, node.gossip_address,
                capacity=node.capacity, state=NodeState.ACTIVE, zone=node.zone,
            )  # fmt: skip
            etcd.put(f"nodes/{node.node_id}", record.to_json(), lease)
            node.boot(self._preload(owned[node.node_id]), lease, gossip)
            self.watch_lease(lease)
        self.engine.client_nodes = list(initial)
        self.chaos.schedule(self.scenario.faults)
        self.loop.at(cluster.client_refresh_s, self._refresh_clients, None)
        self.loop.at(0.0, self._sample, None)
        self.loop.at(0.0, self._sample_liveness, None)

    def _preload(self, owned: set[str]) -> set[str]:
        """What a node of the initial cluster holds: all it owns, or with a budget what
        its placement loads (pinned first, then in key order while it fits)."""
        budget = self.scenario.cluster.memory_budget_bytes
        if not budget:
            return owned
        out: set[str] = set()
        used = count = 0
        limit = self.scenario.cluster.max_resident_models
        for key in sorted(owned & self.pinned) + sorted(owned - self.pinned):
            size = self.workflows[key].bytes
            if used + size <= budget and count < limit:
                out.add(key)
                used += size
                count += 1
        return out

    # ------------------------------------------------------------------ running

    def run(self) -> None:
        """Run the scenario to its end (the garbage collector runs less often meanwhile:
        a run allocates millions of small, mostly acyclic objects)."""
        thresholds = gc.get_threshold()
        gc.set_threshold(100_000, 50, 100)
        try:
            self._run()
        finally:
            gc.set_threshold(*thresholds)

    def _run(self) -> None:
        self.setup()
        self._drive()
        self.loop.now = self.end_s
        self.safety.lost(self.engine.open)

    def _drive(self) -> None:
        """The main loop: the next arrival (``Workload``'s current chunk, read in place)
        runs before any event at the same time; stop at the first thing after ``end_s``."""
        loop = self.loop
        heap = loop.heap
        pop = heapq.heappop
        new_request = self.engine.new_request
        end = self.end_s
        times, objs, users, picks, i, stop = self.workload.take()
        arrival = times[i] if i < stop else math.inf
        # (``while True``: CPython 3.11 specializes a function's bytecode only after a few
        # calls or unconditional backward jumps, and this function is called once.)
        while True:
            if arrival > end:
                break
            while heap and heap[0][0] < arrival:  # (all before end, as the arrival is)
                when, _, fn, arg = pop(heap)
                loop.now = when
                fn(arg)
            loop.now = arrival
            new_request(objs[i], users[i], picks[i])
            i += 1
            if i < stop:
                arrival = times[i]
            else:
                self.workload.skip(i)
                times, objs, users, picks, i, stop = self.workload.take()
                arrival = times[i] if i < stop else math.inf
        while True:
            if not heap or heap[0][0] > end:
                break
            when, _, fn, arg = pop(heap)
            loop.now = when
            fn(arg)

    def _refresh_clients(self, _: None) -> None:
        """Clients re-fetch the node list now and then, like ``SmartClient.refresh``: from
        the first node they know that answers, whose routing table lists its view."""
        seeds = sorted(k[6:] for k in self.etcd.kv if k.startswith("nodes/"))  # deploy config
        engine = self.engine
        for node in [*engine.client_nodes, *(self.nodes[n] for n in seeds if n in self.nodes)]:
            if node.accepting and not node.frozen and node.view.members:
                engine.client_nodes = [self.nodes[n] for n in sorted(node.view.members)]
                break
        self.loop.after(self.scenario.cluster.client_refresh_s, self._refresh_clients, None)

    def reference_ring(self) -> Ring:
        """The ring the cluster should converge to: roster actives whose process runs."""
        members = []
        for node_id, state in sorted(self.roster().items()):
            if state is NodeState.ACTIVE:
                members.append(RingMember(node_id, self.nodes[node_id].capacity))
        return Ring(members)

    def roster(self) -> dict[str, NodeState]:
        """The etcd roster's states, counting only records of the running process (a
        crashed process's record stays until its lease expires; a restarted one re-puts)."""
        out: dict[str, NodeState] = {}
        for key, (value, lease) in self.etcd.kv.items():
            if key.startswith("nodes/"):
                node = self.nodes.get(key[6:])
                control = None if node is None else node.control
                if node is not None and node.accepting and control and control.lease_id == lease:
                    out[node.node_id] = self._state_of(value)
        return out

    def _state_of(self, value: bytes) -> NodeState:
        state = self._record_states.get(value)
        if state is None:
            state = self._record_states[value] = NodeState(json.loads(value)["state"])
        return state

    def _sample(self, _: None) -> None:
        now = self.loop.now
        if self.fleet is not None:  # (no ring over the roster: a ring at 1 000 nodes costs 1 s)
            self._sample_fleet(now)
            return
        ring = self.reference_ring()
        self.metrics.reference_ring(now, ring)
        running = [n for n in self.nodes.values() if n.accepting]
        key = tuple(sorted((m.node_id, m.capacity) for m in ring.members))
        agree = sum(1 for n in running if n.ring_key == key)
        self.metrics.samples.append(
            {
                "t": now,
                "running": len(running),
                "ring_agreement": agree / len(running) if running else 1.0,
                "in_flight": sum(n.in_flight for n in running),
            }
        )
        self.loop.after(1.0, self._sample, None)

    def _sample_fleet(self, now: float) -> None:
        running = [n for n in self.nodes.values() if n.accepting]
        roster = self.roster()
        key = tuple(
            sorted(
                (n, self.nodes[n].capacity) for n, st in roster.items() if st is NodeState.ACTIVE
            )
        )
        agree = sum(1 for n in running if tuple(sorted(n.ring_key)) == key)
        self.metrics.samples.append(
            {
                "t": now,
                "running": len(running),
                "ring_agreement": agree / len(running) if running else 1.0,
                "in_flight": sum(n.in_flight for n in running),
            }
        )
        self.loop.after(1.0, self._sample, None)

    def _sample_liveness(self, _: None) -> None:
        self.liveness.sample(self.loop.now, self.chaos.quiet_since)
        self.loop.after(SAMPLE_S, self._sample_liveness, None)

    # ------------------------------------------------------------------ node lifecycle

    def crash(self, node: SimNode) -> None:
        if not node.up:
            return
        now = self.loop.now
        observers = tuple(
            n for n, other in sorted(self.nodes.items()) if other.accepting and other is not node
        )
        executors = node.crash()
        self.down_since.setdefault(node.node_id, now)
        self.metrics.crashed(node.node_id, now, observers)
        self.engine.node_crashed(node, executors)

    def restart(self, node: SimNode) -> None:
        if node.up:
            return
        self.down_since.pop(node.node_id, None)
        self.engine.client_down.pop(node.node_id, None)  # health Watch streams reconnect
        self.metrics.restarted(node.node_id, self.loop.now)
        node.boot()

    def join(self, node_id: str, capacity: float) -> None:
        node = self.nodes.get(node_id) or self.add_node(node_id, capacity)
        self.restart(node)

    def node_left(self, node: SimNode) -> None:
        """A drained node deregistered and left gossip (it refuses new requests)."""
        self.down_since.setdefault(node.node_id, self.loop.now)
        self.metrics.trace("left", node.node_id, round(self.loop.now * 1e6))

    def node_stopped(self, node: SimNode) -> None:
        """Its process exited after the requests it was ingress for ended."""
        self.chaos.node_stopped(node)

    def etcd_outage(self, until: float) -> None:
        self.etcd.set_up(False, self.loop.now)
        for node in self.nodes.values():
            if node.control is not None:
                node.control.disconnect()
        self.loop.at(until, self._etcd_back, None)

    def _etcd_back(self, _: None) -> None:
        self.etcd.set_up(True, self.loop.now)
        self.metrics.fault(self.loop.now, "etcd back")

    # ------------------------------------------------------------------ gossip

    def send_gossip(self, src: SimNode, effect: Send) -> None:
        dst = self.by_address.get(effect.to_address)
        if dst is None:
            return
        self.gossip_sent += 1
        delays = self.net.datagram(src.node_id, dst.node_id)
        if not delays:
            return
        at = self.loop.now + src.gossip_delay_s + dst.gossip_delay_s
        arg = (dst.epoch, effect.message, src.gossip_address)
        for delay in delays:
            self.loop.at(at + delay, dst.receive, arg)

    def member_changed(self, observer: SimNode, effect: MemberChanged) -> None:
        member = effect.member
        now = self.loop.now
        self.metrics.member_events += 1
        self.metrics.trace(observer.index, member.node_id, member.state.value, member.incarnation)
        if member.state is MemberState.DEAD:
            self.metrics.declared_dead(observer.node_id, member.node_id, now)
            subject = self.nodes.get(member.node_id)
            if subject is not None and subject.accepting:
                self.metrics.false_dead += 1

    def keys_changed(self, before: LoadedSet | None, after: LoadedSet | None) -> frozenset[str]:
        """The model keys in one of two loaded sets and not the other (nodes sharing a
        snapshot see the same pair of records: one set difference for all of them)."""
        key = (id(before), id(after))
        found = self._diffs.get(key)
        if found is not None and found[0] is before and found[1] is after:
            return found[2]
        empty: frozenset[str] = frozenset()
        changed = (before.keys if before else empty) ^ (after.keys if after else empty)
        if len(self._diffs) >= 4096:
            del self._diffs[next(iter(self._diffs))]
        self._diffs[key] = (before, after, changed)
        return changed

    def ring_changed(self, node: SimNode) -> None:
        self.metrics.trace("ring", node.index, len(node.ring_key))

    # ------------------------------------------------------------------ etcd

    def objective_entry(self, name: str, revision: int, doc: Any) -> ObjectiveEntry:
        """The parsed config of one objective revision (one shared object per revision)."""
        key = (name, revision)
        entry = self._configs.get(key)
        if entry is None:
            config = ObjectiveConfig.from_dict(doc["config"])
            entry = self._configs[key] = ObjectiveEntry(name, revision, config)
        return entry

    def watch_lease(self, lease_id: int) -> None:
        lease = self.etcd.leases.get(lease_id)
        if lease is not None:
            self.loop.at(lease.expires_at, self._check_lease, lease_id)

    def _check_lease(self, lease_id: int) -> None:
        lease = self.etcd.leases.get(lease_id)
        if lease is None:
            return
        now = self.loop.now
        if not self.etcd.up:
            self.loop.after(1.0, self._check_lease, lease_id)
        elif lease.expires_at <= now:
            self.metrics.trace("lease expired", sorted(lease.keys), round(now * 1e6))
            self.etcd.revoke(lease_id)
        else:
            self.loop.at(lease.expires_at, self._check_lease, lease_id)

    # ------------------------------------------------------------------ snapshots

    def snapshot_from(self, items: list[tuple[str, bytes]], revision: int) -> ClusterSnapshot:
        """``ClusterSnapshot.from_kvs`` (a fleet: one parse per revision, shared)."""
        if self.fleet is None:
            return ClusterSnapshot.from_kvs(items, revision)
        found = self._snapshots.get((0, revision))
        if found is None:
            snap = ClusterSnapshot.from_kvs(items, revision)
            found = self._snapshots[(0, revision)] = (snap, snap)
        return found[1]

    def snapshot_apply(
        self, prev: ClusterSnapshot, events: list[KeyEvent], revision: int
    ) -> ClusterSnapshot:
        """``prev.apply(events, revision)`` (a fleet: nodes at the same snapshot share the
        next one: the same events on the same snapshot give the same result)."""
        if self.fleet is None:
            return prev.apply(events, revision)
        key = (id(prev), revision)
        found = self._snapshots.get(key)
        if found is None or found[0] is not prev:
            found = (prev, prev.apply(events, revision))
            if len(self._snapshots) >= 256:
                del self._snapshots[next(iter(self._snapshots))]
            self._snapshots[key] = found
        return found[1]

    # ------------------------------------------------------------------ hot copies

    def publish_copies(self, node: SimNode, key: str, copies: int) -> None:
        """The primary owner's change of hot copies reaches every node after the watch's
        longest delay (as an etcd record would); the nodes on the key's walk re-place it."""
        delay = self.scenario.cluster.watch_delay_ms[1] / 1000.0
        self.residency_watch.copies_changed(key, self.copies.get(key, 0), copies)
        self.loop.after(delay, self._copies_arrive, (key, copies))

    def _copies_arrive(self, arg: tuple[str, int]) -> None:
        key, copies = arg
        if copies:
            self.copies[key] = copies
        else:
            self.copies.pop(key, None)
        fleet = self.fleet
        near = fleet.walk.get(key, ()) if fleet is not None else tuple(self.nodes)
        for node_id in near:
            node = self.nodes.get(node_id)
            if node is not None and node.up:
                node.copies_changed(key)
        for node in self.nodes.values():
            node.cand.pop(key, None)

    def _on_commit(self, revision: int) -> None:
        """Watches: every connected node gets the revision after a delay, in order (with
        ``watch_batching``: one delivery per node per batch, ``_deliver_batch``)."""
        low, high = self.scenario.cluster.watch_delay_ms
        if self.scenario.cluster.watch_batching:
            if not self._batch_due:
                self._batch_due = True
                self.loop.after(high / 1000.0, self._deliver_batch, None)
            return
        now = self.loop.now
        uniform = self._watch_rng.uniform
        for node in self.nodes.values():
            control = node.control
            if control is None or not control.connected or not node.up:
                continue
            if self.net.partitioned and self.net.blocked("etcd", node.node_id):
                control.disconnect()
                continue
            at = max(control.last_delivery_at, now + uniform(low, high) / 1000.0)
            control.last_delivery_at = at
            self.loop.at(at, control.deliver, revision)

    def _deliver_batch(self, _: None) -> None:
        """One watch response per node with every revision committed until now: the nodes
        of a fleet then move from one shared snapshot to the next (``snapshot_apply``)."""
        self._batch_due = False
        revision = self.etcd.revision
        low, high = self.scenario.cluster.watch_delay_ms
        now = self.loop.now
        uniform = self._watch_rng.uniform
        for node in self.nodes.values():
            control = node.control
            if control is None or not control.connected or not node.up:
                continue
            if self.net.partitioned and self.net.blocked("etcd", node.node_id):
                control.disconnect()
                continue
            at = max(control.last_delivery_at, now + uniform(0.0, high - low) / 1000.0)
            control.last_delivery_at = at
            self.loop.at(at, control.deliver, revision)

    def etcd_call(
        self,
        node: Process,
        op: Callable[[EtcdDouble], _T],
        done: Callable[[_T | None], None],
        *,
        force: bool = False,
    ) -> None:
        """An RPC to etcd: ``op`` runs at the store when it arrives; ``done`` gets the
        result back, or None after the client timeout when etcd or a link is down."""
        now = self.loop.now
        timeout = now + self.scenario.network.etcd_timeout_ms / 1000.0
        epoch = node.epoch
        there = self.net.rpc(node.node_id, "etcd")

        def answer(result: _T | None) -> None:
            if force or (node.epoch == epoch and node.up):
                if node.frozen and not force:
                    node.defer(lambda _: answer(result), None)
                else:
                    done(result)

        def arrive(_: None) -> None:
            if not self.etcd.up:
                self.loop.at(timeout, lambda _: answer(None), None)
                return
            result = op(self.etcd)
            back = self.net.rpc("etcd", node.node_id)
            if back is None:
                self.loop.at(timeout, lambda _: answer(None), None)
            else:
                self.loop.after(back, lambda _: answer(result), None)

        if there is None or not self.etcd.up:
            self.loop.at(timeout, lambda _: answer(None), None)
        else:
            self.loop.after(there, arrive, None)
