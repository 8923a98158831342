"""Random fault schedules drawn from a seed (the swarm test, ``shardline sim run swarm``).

``random_scenario(seed)`` draws a whole scenario from its seed alone: cluster size, link
loss / duplication / reordering, and a schedule of faults (crashes with or without a
restart, symmetric and asymmetric partitions, pauses, slow nodes, loss bursts, etcd
outages, joins, drains, objective changes) between ``FAULTS_FROM_S`` and
``HEAL_BY_S``, after which the cluster must converge. A failing seed replays with
``shardline sim run swarm --seed N``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from shardline.sim.core import derive_rng
from shardline.sim.faults import FaultSpec
from shardline.sim.scenario import DEFAULT_OBJECTIVES, CheckSpec, Scenario, parse_scenario

FAULTS_FROM_S = 5.0
HEAL_BY_S = 24.0
DURATION_S = 50.0
OPS = (
    *("crash", "crash_restart", "partition", "asymmetric", "pause", "slow", "loss_burst"),
    *("etcd_outage", "etcd_partial", "join", "drain", "objective_change"),
)


def _fault(rng: Any, at: float, nodes: list[str], joined: list[str]) -> dict[str, Any]:
    op = rng.choice(OPS)
    node = rng.choice(nodes)
    room = max(1.0, HEAL_BY_S - at)
    duration = round(rng.uniform(1.0, min(10.0, room)), 2)
    if op == "crash":
        return {"at_s": at, "op": "crash", "node": node}
    if op == "crash_restart":
        return {"at_s": at, "op": "crash", "node": node, "_restart_after": duration}
    if op in ("partition", "asymmetric"):
        shuffled = list(nodes)
        rng.shuffle(shuffled)
        cut = rng.randint(1, len(shuffled) - 1)
        return {
            "at_s": at,
            "op": "partition",
            "groups": [shuffled[:cut], shuffled[cut:]],
            "asymmetric": op == "asymmetric",
            "duration_s": duration,
        }
    if op == "pause":
        return {"at_s": at, "op": "pause", "node": node, "duration_s": duration}
    if op == "slow":
        factor = round(rng.uniform(2.0, 10.0), 1)
        return {"at_s": at, "op": "slow", "node": node, "factor": factor, "duration_s": duration}
    if op == "loss_burst":
        loss = round(rng.uniform(0.05, 0.4), 2)
        return {"at_s": at, "op": "loss_burst", "loss": loss, "duration_s": duration}
    if op == "etcd_outage":
        return {"at_s": at, "op": "etcd_outage", "duration_s": duration}
    if op == "etcd_partial":
        return {"at_s": at, "op": "etcd_outage", "duration_s": duration, "nodes": [node]}
    if op == "join":
        joined.append(f"j{len(joined) + 1:02d}")
        return {"at_s": at, "op": "join", "node": joined[-1], "capacity": rng.choice([1.0, 2.0])}
    if op == "drain":
        return {"at_s": at, "op": "drain", "node": node}
    config = dict(DEFAULT_OBJECTIVES[1].config)
    config["canary"] = {"model": "payment_fraud@v2", "percent": rng.choice([0, 5, 50, 100])}
    return {"at_s": at, "op": "objective_change", "objective": "payment_fraud", "config": config}


def random_scenario(seed: int) -> Scenario:
    """A whole scenario drawn from ``seed`` (see the module docstring)."""
    rng = derive_rng(seed, "swarm")
    n = rng.randint(3, 8)
    nodes = [f"n{i:02d}" for i in range(n)]
    faults: list[dict[str, Any]] = []
    joined: list[str] = []
    at = FAULTS_FROM_S
    for _ in range(rng.randint(1, 5)):
        at = round(at + rng.uniform(0.5, 5.0), 2)
        if at >= HEAL_BY_S - 1.0:
            break
        fault = _fault(rng, at, nodes, joined)
        restart = fault.pop("_restart_after", None)
        faults.append(fault)
        if restart is not None:
            faults.append({"at_s": round(at + restart, 2), "op": "restart", "node": fault["node"]})
    if any(f["op"] == "partition" and "duration_s" not in f for f in faults):
        faults.append({"at_s": HEAL_BY_S, "op": "heal"})
    doc = {
        "name": "swarm",
        "description": f"random fault schedule drawn from seed {seed}",
        "seed": seed,
        "duration_s": DURATION_S,
        "cluster": {"nodes": n},
        "network": {
            "loss": round(rng.choice([0.0, 0.0, rng.uniform(0.0, 0.08)]), 3),
            "duplicate": round(rng.uniform(0.0, 0.03), 3),
            "reorder": round(rng.uniform(0.0, 0.05), 3),
        },
        "faults": sorted(faults, key=lambda f: float(f["at_s"])),
    }
    scenario = parse_scenario(doc, source="swarm").with_overrides(rate_scale=0.25)
    return replace(scenario, checks=CheckSpec(convergence_bound_s=25.0))


def schedule_summary(scenario: Scenario) -> str:
    """One line per fault, for failure messages."""
    return "; ".join(f"{f.at_s:g}s {f.op} {dict(f.params)}" for f in scenario.faults)


__all__ = ["FaultSpec", "random_scenario", "schedule_summary"]
