"""The run's checkers: safety on every request during faults, liveness after the heal.

Safety, checked as it happens:

* ``wrong_model``: an answer came from a model version other than the one the objective
  selects for that user under the config the ingress routed with (recomputed here with
  ``shardline.router.rules.evaluate`` from the config etcd stored, not from the node's copy);
* ``unknown_config``: the ingress routed with a config etcd never committed before then;
* ``stale_config``: it routed with a config superseded more than ``config_staleness_s``
  earlier although its watch was connected all along;
* ``routed_to_dead``: a request was sent to a node whose process had been dead (crashed
  or stopped) for longer than the detection bound;
* ``routed_to_confirmed_dead``: a node sent a request to a member its own view holds dead;
* ``lost``: a request that never ended (checked when the run is over).

Liveness: from the heal on, the cluster is sampled every ``SAMPLE_S``; it has converged
when every roster record belongs to a running process and every running process is in
the roster, no join is pending (nor a drain that an active node could take over), and
every running node has applied every roster and catalog write (etcd's revision, loaded-set
records aside: they change with every load and eviction, ``EtcdDouble.state_revision``), a
view of exactly the roster with nobody dead, and the ring over the roster's active members.

The checkers read the world through ``CheckedWorld`` (what ``shardline.sim.world.World`` is; the
world builds them and is not imported here); the request path reports to ``Safety`` as
its ``shardline.sim.serving.Checker``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from shardline.membership.registry import NodeState
from shardline.router.decision import Decision
from shardline.router.objectives import ObjectiveConfig
from shardline.router.rules import evaluate
from shardline.sim.core import EventLoop
from shardline.sim.etcd import EtcdDouble, ObjectiveVersion
from shardline.sim.node import SimNode
from shardline.sim.request import Host, Request
from shardline.sim.scenario import CATALOG_OBJECTIVE
from shardline.sim.serving import RequestEngine

SAMPLE_S = 0.5
MAX_EXAMPLES = 10


class CheckedWorld(Protocol):
    """What the checkers read: the clock, etcd, the request engine, the nodes and when
    each went down, and the roster of running processes."""

    @property
    def loop(self) -> EventLoop: ...
    @property
    def etcd(self) -> EtcdDouble: ...
    @property
    def engine(self) -> RequestEngine: ...
    @property
    def nodes(self) -> Mapping[str, SimNode]: ...
    @property
    def down_since(self) -> Mapping[str, float]: ...
    @property
    def pinned(self) -> frozenset[str]: ...

    def roster(self) -> dict[str, NodeState]:
        """The etcd roster's states, counting only records of running processes."""


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


class Safety:
    def __init__(self, world: CheckedWorld, detection_bound_s: float, staleness_s: float) -> None:
        self.world = world
        self.bound_s = detection_bound_s
        self.staleness_s = staleness_s
        self.violations: Counter[str] = Counter()
        self.examples: list[str] = []
        self._expected: list[dict[int, dict[int, str | None]]] = []  # [obj][rev][user]
        self._histories: list[list[ObjectiveVersion]] = []
        self._configs: dict[tuple[str, int], ObjectiveConfig] = {}
        self.checked_answers = 0
        self.checked_routes = 0

    def _violation(self, kind: str, detail: str) -> None:
        self.violations[kind] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"t={self.world.loop.now:.3f}s {kind}: {detail}")

    def start(self) -> None:
        """Bind to etcd's objective histories (after the world wrote them)."""
        etcd = self.world.etcd
        self._histories = [etcd.objectives[name] for name in self.world.engine.names]
        self._expected = [{} for _ in self._histories]

    def routed(self, req: Request, via: Host, target: str) -> None:
        """``via`` sends ``req`` to ``target``. The request path calls this for every route
        to a node that is down or that ``via``'s view holds dead: no other route can
        violate these two properties (``checked_routes`` counts those calls)."""
        self.checked_routes += 1
        down = self.world.down_since.get(target)
        now = self.world.loop.now
        if down is not None and now - down > self.bound_s:
            self._violation(
                "routed_to_dead",
                f"request {req.rid} sent by {via.node_id} to {target}, down since {down:.3f}s",
            )
        if target in via.view.dead:
            self._violation(
                "routed_to_confirmed_dead",
                f"request {req.rid}: {via.node_id} holds {target} dead but sent to it",
            )

    def expected_model(
        self, name: str, revision: int, user: int, version: ObjectiveVersion | None = None
    ) -> str | None:
        """What ``evaluate`` says for this user under the config etcd stored (``version``:
        that revision as etcd stored it, when the caller has it at hand)."""
        if version is None:
            version = self.world.etcd.objective(name, revision)
            if version is None:
                return None
        keys = self.world.engine.catalog_keys
        if keys is not None and name == CATALOG_OBJECTIVE:
            return keys[user]  # the catalog objective names the model directly
        config = self._configs.get((name, revision))
        if config is None:
            config = self._configs[(name, revision)] = ObjectiveConfig.from_dict(version.config)
        decision: Decision = evaluate(config, self.world.engine.context(user))
        return decision.model_key

    def answered(self, reqs: list[Request], model_key: str, server: Host) -> None:
        """Answers from ``model_key`` (one batch on ``server``): was each the model (and
        config) it should be?"""
        self.checked_answers += len(reqs)
        staleness_s = self.staleness_s
        obj = rev = -1
        version: ObjectiveVersion | None = None
        committed_at = superseded_at = math.inf
        by_user: dict[int, str | None] = {}
        for req in reqs:
            if req.obj != obj or req.rev != rev:  # (a batch is mostly one objective revision)
                obj, rev = req.obj, req.rev
                history = self._histories[obj]
                version = history[rev - 1] if 0 < rev <= len(history) else None
                committed_at, superseded_at = (
                    (math.inf, math.inf)
                    if version is None
                    else (version.committed_at, version.superseded_at)
                )
                by_user = self._expected[obj].setdefault(rev, {})
            t_route = req.t_route
            if version is None or committed_at > t_route:
                name = self.world.engine.names[obj]
                self._violation("unknown_config", f"request {req.rid}: {name} revision {rev}")
                continue
            if t_route - superseded_at > staleness_s:
                self._stale(req, superseded_at)
            user = req.user
            expected = by_user.get(user)
            if expected is None:
                expected = by_user[user] = self.expected_model(
                    self.world.engine.names[obj], rev, user, version
                )
            if model_key != expected:
                self._violation(
                    "wrong_model",
                    f"request {req.rid} ({self.world.engine.names[obj]} rev {rev}, user "
                    f"u{user}) answered by {model_key} on {server.node_id}, "
                    f"expected {expected}",
                )

    def _stale(self, req: Request, superseded_at: float) -> None:
        control = self.world.nodes[req.ingress.node_id].control  # (its process's etcd client)
        if control is not None and control.connected and control.connected_since <= superseded_at:
            late = req.t_route - superseded_at
            self._violation(
                "stale_config",
                f"request {req.rid}: {req.ingress.node_id} routed "
                f"{self.world.engine.names[req.obj]} with revision {req.rev}, superseded "
                f"{late:.2f}s earlier",
            )

    def lost(self, open_requests: Mapping[int, Request]) -> None:
        for rid in sorted(open_requests)[:MAX_EXAMPLES]:
            req = open_requests[rid]
            self._violation("lost", f"request {rid} (ingress {req.ingress.node_id}) never ended")
        extra = len(open_requests) - min(len(open_requests), MAX_EXAMPLES)
        if extra > 0:
            self.violations["lost"] += extra

    def result(self) -> CheckResult:
        if not self.violations:
            detail = f"{self.checked_answers} answers and {self.world.engine.routes} routes checked"
            return CheckResult("safety", True, detail)
        counts = ", ".join(f"{k}={v}" for k, v in sorted(self.violations.items()))
        return CheckResult("safety", False, f"{counts}; first: {self.examples[0]}")


class ResidencyCheck:
    """Memory budgets, checked at every change (``shardline.sim.node.ResidencyObserver``):

    * ``over_budget``: a node's resident bytes exceeded its budget after a load;
    * ``evicted_pinned``: a pinned model was evicted;
    * ``evicted_busy``: a model with requests in flight was evicted;

    and counted: loads (eager, lazy), evictions, unloads, cold starts with their waits,
    refusals for lack of room, and hot-copy changes."""

    def __init__(self, world: CheckedWorld, budget_bytes: int) -> None:
        self.world = world
        self.budget_bytes = budget_bytes
        self.violations: Counter[str] = Counter()
        self.examples: list[str] = []
        self.loads = 0
        self.lazy_loads = 0
        self.evictions = 0
        self.unloads = 0
        self.no_room_count = 0
        self.cold_waits: list[float] = []
        self.copy_changes = 0
        self.copies_up = 0
        self.max_copies = 0
        self.peak_fill = 0.0  # the highest resident bytes / budget seen on any node

    def _violation(self, kind: str, detail: str) -> None:
        self.violations[kind] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"t={self.world.loop.now:.3f}s {kind}: {detail}")

    def loaded(self, node: SimNode, key: str, lazy: bool) -> None:
        self.loads += 1
        self.lazy_loads += lazy
        residency = node.residency
        if residency is None:
            return
        used = residency.resident_bytes
        self.peak_fill = max(self.peak_fill, used / residency.budget_bytes)
        if used > residency.budget_bytes:
            self._violation(
                "over_budget",
                f"{node.node_id} holds {used} bytes after loading {key}, budget "
                f"{residency.budget_bytes}",
            )

    def evicting(self, node: SimNode, key: str, busy: bool) -> None:
        self.evictions += 1
        if key in self.world.pinned:
            self._violation("evicted_pinned", f"{node.node_id} evicted pinned {key}")
        if busy:
            self._violation("evicted_busy", f"{node.node_id} evicted {key} with requests in flight")

    def unloaded(self, node: SimNode, key: str) -> None:
        self.unloads += 1
        if key in self.world.pinned and key in node.owned:
            self._violation("evicted_pinned", f"{node.node_id} unloaded pinned {key} it owns")

    def cold_start(self, wait_s: float) -> None:
        self.cold_waits.append(wait_s)

    def no_room(self, node: SimNode, key: str, why: str) -> None:
        self.no_room_count += 1

    def copies_changed(self, key: str, before: int, after: int) -> None:
        self.copy_changes += 1
        self.copies_up += after > before
        self.max_copies = max(self.max_copies, after)

    def summary(self, answered: int) -> dict[str, Any]:
        waits = sorted(self.cold_waits)

        def pct(q: float) -> float | None:
            return waits[min(len(waits) - 1, int(q * len(waits)))] * 1000.0 if waits else None

        return {
            "budget_bytes": self.budget_bytes,
            "loads": self.loads,
            "lazy_loads": self.lazy_loads,
            "evictions": self.evictions,
            "unloads": self.unloads,
            "no_room": self.no_room_count,
            "cold_starts": len(waits),
            "cold_wait_p50_ms": pct(0.5),
            "cold_wait_p99_ms": pct(0.99),
            "hit_rate": (answered - len(waits)) / answered if answered else None,
            "hot_copy_changes": self.copy_changes,
            "hot_copies_added": self.copies_up,
            "hot_copies_max": self.max_copies,
            "peak_fill": self.peak_fill,
        }

    def result(self) -> CheckResult:
        if not self.violations:
            detail = (
                f"{self.loads} loads and {self.evictions} evictions checked: within budget, "
                "no pinned or busy model evicted"
            )
            return CheckResult("residency", True, detail)
        counts = ", ".join(f"{k}={v}" for k, v in sorted(self.violations.items()))
        return CheckResult("residency", False, f"{counts}; first: {self.examples[0]}")


class Liveness:
    """Convergence after the heal (see the module docstring)."""

    def __init__(self, world: CheckedWorld, heal_at_s: float, bound_s: float) -> None:
        self.world = world
        self.heal_at_s = heal_at_s
        self.bound_s = bound_s
        self.converged_at: float | None = None
        self.last_problem = "not sampled"

    def problem(self) -> str | None:
        """Why the cluster has not converged (None: it has)."""
        world = self.world
        etcd = world.etcd
        records = sum(1 for key in etcd.kv if key.startswith("nodes/"))
        roster = world.roster()
        if len(roster) != records:
            return f"{records - len(roster)} roster record(s) of processes that are gone"
        for node_id, node in sorted(world.nodes.items()):
            if node.accepting and node_id not in roster:
                return f"{node_id} runs but is not in the roster"
        # A join must complete; a drain too, unless no active node is left to take over.
        can_drain = any(state is NodeState.ACTIVE for state in roster.values())
        unsettled = sorted(
            n
            for n, state in roster.items()
            if state is NodeState.JOINING or (state is NodeState.DRAINING and can_drain)
        )
        if unsettled:
            return f"{', '.join(unsettled)} still joining or draining"
        active = tuple(
            sorted(
                (n, world.nodes[n].capacity) for n, st in roster.items() if st is NodeState.ACTIVE
            )
        )
        for node_id in sorted(roster):
            node = world.nodes[node_id]
            if node.frozen:
                return f"{node_id} is paused"
            if node.snapshot.revision < etcd.state_revision:
                return (
                    f"{node_id} is at revision {node.snapshot.revision}, etcd's roster and "
                    f"catalog at {etcd.state_revision}"
                )
            if set(node.view.members) != set(roster) or node.view.dead:
                dead = sorted(node.view.dead)
                return (
                    f"{node_id}'s view has {len(node.view.members)}/{len(roster)} members "
                    f"(dead: {', '.join(dead) or 'none'})"
                )
            if node.ring_key != active:
                return f"{node_id}'s ring has {len(node.ring_key)} members, {len(active)} active"
        return None

    def sample(self, now: float, quiet_since: float) -> None:
        """Check once; ``quiet_since`` is the last fault action (restarts run late)."""
        if self.converged_at is not None and self.converged_at < quiet_since:
            self.converged_at = None  # a later fault action: start over
        if self.converged_at is not None or now < max(self.heal_at_s, quiet_since):
            return
        problem = self.problem()
        if problem is None:
            self.converged_at = now
        else:
            self.last_problem = problem

    def result(self, quiet_since: float) -> CheckResult:
        start = max(self.heal_at_s, quiet_since)
        if self.converged_at is not None:
            took = max(0.0, self.converged_at - start)
            ok = took <= self.bound_s
            return CheckResult(
                "liveness", ok, f"converged {took:.1f}s after the heal (bound {self.bound_s:g}s)"
            )
        return CheckResult("liveness", False, f"not converged by the end: {self.last_problem}")
