"""Carries out the fault schedule (``shardline.sim.faults``) on a running world.

Each ``FaultSpec`` fires at its ``at_s``; node choices (``"random"``) and churn timing are
drawn from the run's ``faults`` generator, so the schedule is part of the seed's trace.
Ops that take time (drains, rolling restarts, churn) keep ``quiet_since`` up to date: the
liveness check starts counting only once the last fault action is over.

Faults act on the world through ``FaultWorld`` (what ``shardline.sim.world.World`` is; the world
builds the ``Chaos`` and is not imported here) and on its ``shardline.sim.node.SimNode``s.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from shardline.membership.registry import NodeState
from shardline.sim.core import EventLoop
from shardline.sim.etcd import EtcdDouble
from shardline.sim.faults import FaultSpec
from shardline.sim.metrics import Metrics
from shardline.sim.network import Network
from shardline.sim.node import SimNode


class FaultWorld(Protocol):
    """What the faults act on: the nodes, the network, etcd, and the world's node
    lifecycle (crash, restart, join, an etcd outage)."""

    @property
    def loop(self) -> EventLoop: ...
    @property
    def nodes(self) -> Mapping[str, SimNode]: ...
    @property
    def net(self) -> Network: ...
    @property
    def etcd(self) -> EtcdDouble: ...
    @property
    def metrics(self) -> Metrics: ...

    def crash(self, node: SimNode) -> None: ...
    def restart(self, node: SimNode) -> None: ...
    def join(self, node_id: str, capacity: float) -> None: ...
    def etcd_outage(self, until: float) -> None: ...


class Chaos:
    def __init__(self, world: FaultWorld, rng: random.Random) -> None:
        self.world = world
        self.loop = world.loop
        self.rng = rng
        self.quiet_since = 0.0
        self._restart_on_leave: dict[str, float] = {}
        self._joined = 0
        self._ops: dict[str, Callable[[Mapping[str, Any]], None]] = {
            name[4:]: getattr(self, name) for name in dir(self) if name.startswith("_op_")
        }

    def schedule(self, faults: tuple[FaultSpec, ...]) -> None:
        for fault in faults:
            self.loop.at(fault.at_s, self.fire, fault)

    def fire(self, fault: FaultSpec) -> None:
        self.touch()
        self.world.metrics.fault(self.loop.now, fault.label())
        self._ops[fault.op](fault.params)

    def touch(self, until: float | None = None) -> None:
        self.quiet_since = max(self.quiet_since, self.loop.now if until is None else until)

    # ------------------------------------------------------------------ choosing nodes

    def _running(self) -> list[SimNode]:
        return [n for _, n in sorted(self.world.nodes.items()) if n.accepting]

    def _active(self) -> list[SimNode]:
        return [
            n
            for n in self._running()
            if n.control is not None and n.control.state is NodeState.ACTIVE
        ]

    def _pick(self, params: Mapping[str, Any], pool: list[SimNode]) -> list[SimNode]:
        spec = params.get("node", "random")
        if spec == "random":
            count = min(int(params.get("count", 1)), len(pool))
            return self.rng.sample(pool, count) if count else []
        names = {spec} if isinstance(spec, str) else set(spec)
        return [node for node in pool if node.node_id in names]  # (a crashed one is not paused)

    # ------------------------------------------------------------------ ops

    def _op_crash(self, params: Mapping[str, Any]) -> None:
        running = self._running()
        zone = params.get("zone")
        picked = [n for n in running if n.zone == zone] if zone else self._pick(params, running)
        for node in picked:
            self.world.crash(node)

    def _op_restart(self, params: Mapping[str, Any]) -> None:
        down = [n for _, n in sorted(self.world.nodes.items()) if not n.up]
        for node in self._pick(params, down):
            self.world.restart(node)

    def _op_pause(self, params: Mapping[str, Any]) -> None:
        until = self.loop.now + float(params["duration_s"])
        self.touch(until)
        for node in self._pick(params, self._running()):
            node.pause(until)

    def _op_slow(self, params: Mapping[str, Any]) -> None:
        factor = float(params["factor"])
        nodes = self._pick(params, self._running())
        for node in nodes:
            node.slow_factor = factor
            node.gossip_delay_s = min(0.3, 0.05 * max(0.0, factor - 1.0))
        until = self.loop.now + float(params["duration_s"])
        self.touch(until)
        self.loop.at(until, self._unslow, nodes)

    def _unslow(self, nodes: list[SimNode]) -> None:
        for node in nodes:
            node.slow_factor, node.gossip_delay_s = 1.0, 0.0

    def _op_partition(self, params: Mapping[str, Any]) -> None:
        net = self.world.net
        symmetric = not params.get("asymmetric", False)
        if "isolate" in params:
            isolated = set(params["isolate"])
            rest = {n for n in self.world.nodes if n not in isolated} | {"etcd"}
            tokens = [net.cut(isolated, rest, symmetric=symmetric)]
        else:
            groups = [set(g) for g in params["groups"]]
            tokens = [
                net.cut(a, b, symmetric=symmetric)
                for i, a in enumerate(groups)
                for b in groups[i + 1 :]
            ]
        if "duration_s" in params:
            until = self.loop.now + float(params["duration_s"])
            self.touch(until)
            self.loop.at(until, self._uncut, tokens)

    def _uncut(self, tokens: list[int]) -> None:
        for token in tokens:
            self.world.net.uncut(token)
        self.world.metrics.fault(self.loop.now, "heal")

    def _op_heal(self, params: Mapping[str, Any]) -> None:
        self.world.net.heal()

    def _op_loss_burst(self, params: Mapping[str, Any]) -> None:
        self.world.net.extra_loss = float(params["loss"])
        until = self.loop.now + float(params["duration_s"])
        self.touch(until)
        self.loop.at(until, self._end_burst, None)

    def _end_burst(self, _: None) -> None:
        self.world.net.extra_loss = 0.0

    def _op_etcd_outage(self, params: Mapping[str, Any]) -> None:
        until = self.loop.now + float(params["duration_s"])
        self.touch(until)
        if "nodes" in params:
            token = self.world.net.cut(set(params["nodes"]), {"etcd"})
            self.loop.at(until, self._uncut, [token])
        else:
            self.world.etcd_outage(until)

    def _op_join(self, params: Mapping[str, Any]) -> None:
        self.world.join(str(params["node"]), float(params.get("capacity", 1.0)))

    def _op_drain(self, params: Mapping[str, Any]) -> None:
        for node in self._pick(params, self._active()):
            if any(other is not node for other in self._active()):  # as the Admin API:
                node.drain()  # the last active node is not drained (nothing takes over)

    def _op_rolling_restart(self, params: Mapping[str, Any]) -> None:
        interval = float(params["interval_s"])
        delay = float(params.get("restart_delay_s", 1.0))
        crash = params.get("mode", "drain") == "crash"
        for i, node in enumerate(self._active()):
            self.loop.after(i * interval, self._roll_one, (node, delay, crash))

    def _roll_one(self, arg: tuple[SimNode, float, bool]) -> None:
        node, delay, crash = arg
        self.touch()
        self.world.metrics.fault(self.loop.now, f"restart {node.node_id}")
        if crash:
            self.world.crash(node)
            self.loop.after(delay, self._restart, node)
        else:
            self._restart_on_leave[node.node_id] = delay
            node.drain()

    def node_stopped(self, node: SimNode) -> None:
        """A drained node's process exited: restart it if a rolling restart asked for it."""
        self.touch()
        delay = self._restart_on_leave.pop(node.node_id, None)
        if delay is not None:
            self.loop.after(delay, self._restart, node)

    def _restart(self, node: SimNode) -> None:
        self.touch()
        if not node.up:
            self.world.restart(node)

    def _op_objective_change(self, params: Mapping[str, Any]) -> None:
        self.world.etcd.put_objective(str(params["objective"]), params["config"], self.loop.now)

    def _op_churn(self, params: Mapping[str, Any]) -> None:
        until = float(params["until_s"])
        self.touch(until)
        for op, every in (
            ("crash", "crash_every_s"),
            ("join", "join_every_s"),
            ("drain", "drain_every_s"),
        ):
            if params.get(every):
                mean = float(params[every])
                self.loop.after(
                    self.rng.expovariate(1.0 / mean), self._churn, (op, mean, until, params)
                )

    def _churn(self, arg: tuple[str, float, float, Mapping[str, Any]]) -> None:
        op, mean, until, params = arg
        now = self.loop.now
        if now >= until:
            return
        self.touch()
        active = self._active()
        if op == "crash" and len(active) > 3:
            node = self.rng.choice(active)
            self.world.metrics.fault(now, f"crash {node.node_id}")
            self.world.crash(node)
            back = float(params.get("restart_after_s", 20.0))
            if now + back < until:
                self.loop.after(back, self._restart, node)
        elif op == "join":
            self._joined += 1
            name = f"j{self._joined:03d}"
            self.world.metrics.fault(now, f"join {name}")
            self.world.join(name, 1.0)
        elif op == "drain" and len(active) > 3:
            node = self.rng.choice(active)
            self.world.metrics.fault(now, f"drain {node.node_id}")
            node.drain()
        self.loop.after(self.rng.expovariate(1.0 / mean), self._churn, arg)
