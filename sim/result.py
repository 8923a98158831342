"""One run's outcome: the summary, the checks, the time series and the trace hash.

``run_scenario(scenario, seed)`` is the library entry point (the CLI, the tests and the
benchmark call it). ``RunResult.to_dict`` is the JSON report's content.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shardline.sim.checks import CheckResult
from shardline.sim.request import OK
from shardline.sim.scenario import Scenario
from shardline.sim.world import World


@dataclass
class RunResult:
    scenario: Scenario
    seed: int
    summary: dict[str, Any]
    checks: list[CheckResult]
    series: dict[str, list[Any]]
    samples: list[dict[str, float]]
    ownership: list[tuple[float, dict[str, int]]]
    faults: list[tuple[float, str]]
    trace_hash: str
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def replay_command(self) -> str:
        target = self.scenario.source or self.scenario.name
        return f"shardline sim run {target} --seed {self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.name,
            "description": self.scenario.description,
            "seed": self.seed,
            "ok": self.ok,
            "replay": self.replay_command(),
            "trace_hash": self.trace_hash,
            "summary": self.summary,
            "checks": [c.to_dict() for c in self.checks],
            "violations": self.violations,
            "faults": [{"t": t, "what": what} for t, what in self.faults],
            "series": self.series,
            "samples": self.samples,
            "ownership": [{"t": t, "owned": owned} for t, owned in self.ownership],
        }


def _expectations(scenario: Scenario, summary: dict[str, Any]) -> list[CheckResult]:
    out: list[CheckResult] = []
    most = scenario.checks.max_failed
    if most is not None:
        failed = summary["requests"] - summary["ok"]
        out.append(
            CheckResult("failed_requests", failed <= most, f"{failed} failed (at most {most})")
        )
    floor = scenario.checks.min_success_rate
    if floor > 0:
        rate = summary["success_rate"]
        out.append(
            CheckResult(
                "success_rate",
                rate is not None and rate >= floor,
                f"{0.0 if rate is None else rate:.4f} (at least {floor:g})",
            )
        )
    return out


def summarize(world: World) -> RunResult:
    scenario = world.scenario
    metrics = world.metrics
    counts = metrics.status_counts()
    total = sum(counts.values())
    liveness = world.liveness
    heal = max(liveness.heal_at_s, world.chaos.quiet_since)
    convergence = None if liveness.converged_at is None else liveness.converged_at - heal
    summary: dict[str, Any] = {
        "nodes": scenario.cluster.nodes,
        "nodes_total": len(world.nodes),
        "virtual_s": world.end_s,
        "requests": total,
        "ok": counts.get(OK, 0),
        "success_rate": counts.get(OK, 0) / total if total else None,
        "statuses": counts,
        "latency_ms": metrics.latency_ms(),
        "detection": metrics.detection_summary(),
        "keys_moved": metrics.keys_moved,
        "ring_changes": metrics.ring_changes,
        "imbalance": metrics.imbalance(),
        "heal_at_s": heal,
        "convergence_s": convergence,
        "events": world.loop.scheduled,
        "gossip_datagrams": world.gossip_sent,
        "member_changes": metrics.member_events,
        "false_dead_declarations": metrics.false_dead,
        "shadow_copies": world.engine.shadows_sent,
    }
    if scenario.cluster.memory_budget_bytes > 0:
        summary["residency"] = world.residency_watch.summary(counts.get(OK, 0))
    if scenario.catalog is not None:
        live = {n for n, node in world.nodes.items() if node.accepting}
        summary["view_detection"] = metrics.view_detection(live)
        summary["catalog_models"] = scenario.catalog.models
        summary["failed"] = total - counts.get(OK, 0)
    checks = [world.safety.result(), liveness.result(world.chaos.quiet_since)]
    if scenario.cluster.memory_budget_bytes > 0:
        checks.append(world.residency_watch.result())
    checks += _expectations(scenario, summary)
    return RunResult(
        scenario=scenario,
        seed=world.seed,
        summary=summary,
        checks=checks,
        series=metrics.series(world.end_s),
        samples=metrics.samples,
        ownership=metrics.ownership,
        faults=metrics.faults,
        trace_hash=metrics.trace_hash(),
        violations=list(world.safety.examples),
    )


def run_scenario(scenario: Scenario, seed: int | None = None) -> RunResult:
    """Run one scenario with one seed (the scenario's own when None)."""
    world = World(scenario, seed)
    world.run()
    return summarize(world)
