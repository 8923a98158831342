"""The fleet scenario (``sim/scenarios/fleet_1000_nodes.toml``) at a chosen scale, in one run.

    python -m bench.sim_fleet [--nodes 1000] [--models 100000] [--seconds 40] [--quick]
                              [--seed N] [--json PATH] [--progress S]

Scales the scenario by the flags: ``--nodes`` (zones stay 10; the zone-z3 crash takes 10 %
of the nodes), ``--models`` (the catalog), ``--seconds`` (traffic time; the crash stays at
15 s or at 3/8 of it when shorter). The request rate and each node's memory budget scale so
that requests per node and the fraction of its owned bytes a node can hold stay as in the
scenario file (10 000 requests/s and 24 GiB at 1 000 nodes and 100 000 models).
``--quick``: 30 nodes, 2 000 models, 10 s.

Prints the wall time, requests, failed requests, hit rate, cold starts with their wait
p50/p99, evictions, hot-copy changes, failure detection (p50/p99/max over every (live node,
dead node) pair, and false "dead" declarations) and the simulator's checks (safety,
liveness, residency, expectations). Exit status 0 when every check passed, 1 otherwise.
``SHARDLINE_NATIVE=0`` runs plain Python; otherwise the compiled cores are used when built
and fresh (``python -m shardline.sim.native build --if-stale``).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

from shardline.membership import native
from shardline.sim.result import RunResult, summarize
from shardline.sim.scenario import Scenario, parse_scenario
from shardline.sim.world import World

SCENARIO = Path(__file__).resolve().parent.parent / "sim" / "scenarios" / "fleet_1000_nodes.toml"
QUICK = {"nodes": 30, "models": 2000, "seconds": 10.0}


def scaled(nodes: int, models: int, seconds: float, seed: int | None = None) -> Scenario:
    """The fleet scenario at ``nodes`` x ``models`` for ``seconds`` of traffic."""
    raw: dict[str, Any] = tomllib.loads(SCENARIO.read_text())
    base_nodes = int(raw["cluster"]["nodes"])
    base_models = int(raw["catalog"]["models"])
    base_seconds = float(raw["duration_s"])
    # Per node: owned bytes ∝ models / nodes; keep the budget the same fraction of them.
    per_node = (models / nodes) / (base_models / base_nodes)
    raw["cluster"]["nodes"] = nodes
    raw["cluster"]["memory_budget_bytes"] = int(raw["cluster"]["memory_budget_bytes"] * per_node)
    raw["catalog"]["models"] = models
    raw["catalog"]["rate_per_s"] = float(raw["catalog"]["rate_per_s"]) * nodes / base_nodes
    raw["duration_s"] = seconds
    if seconds < base_seconds:
        for fault in raw.get("faults", []):
            fault["at_s"] = float(fault["at_s"]) * seconds / base_seconds
    if seed is not None:
        raw["seed"] = seed
    raw["name"] = f"fleet_{nodes}_nodes_{models}_models"
    return parse_scenario(raw, str(SCENARIO))


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} ms"


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} s"


def report(result: RunResult, wall_s: float, setup_s: float) -> dict[str, Any]:
    s = result.summary
    res = s.get("residency") or {}
    det = s.get("view_detection") or {}
    return {
        "scenario": result.scenario.name,
        "nodes": s["nodes"],
        "models": s.get("catalog_models"),
        "traffic_s": result.scenario.duration_s,
        "virtual_s": s["virtual_s"],
        "native": native.enabled(),
        "wall_s": wall_s,
        "setup_s": setup_s,
        "requests": s["requests"],
        "failed": s.get("failed", s["requests"] - s["ok"]),
        "statuses": s["statuses"],
        "hit_rate": res.get("hit_rate"),
        "cold_starts": res.get("cold_starts"),
        "cold_wait_p50_ms": res.get("cold_wait_p50_ms"),
        "cold_wait_p99_ms": res.get("cold_wait_p99_ms"),
        "loads": res.get("loads"),
        "evictions": res.get("evictions"),
        "hot_copy_changes": res.get("hot_copy_changes"),
        "detection_p50_s": det.get("p50_s"),
        "detection_p99_s": det.get("p99_s"),
        "detection_max_s": det.get("max_s"),
        "detection_pairs": det.get("pairs"),
        "detection_missing": det.get("missing"),
        "false_dead": s["false_dead_declarations"],
        "checks": {c.name: c.ok for c in result.checks},
        "check_details": {c.name: c.detail for c in result.checks if not c.ok},
        "ok": result.ok,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sim_fleet", description=__doc__)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--models", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="30 nodes, 2 000 models, 10 s")
    parser.add_argument(
        "--progress", type=float, default=0.0, help="print the virtual time every this many s"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    if args.quick:
        args.nodes, args.models, args.seconds = QUICK["nodes"], QUICK["models"], QUICK["seconds"]
    if args.nodes < 10 or args.models < 1 or args.seconds < 1:
        parser.error("--nodes must be >= 10 (10 zones), --models >= 1, --seconds >= 1")
    spec = scaled(args.nodes, args.models, args.seconds, args.seed)
    start = time.perf_counter()
    world = World(spec, args.seed)
    thresholds = gc.get_threshold()
    gc.set_threshold(100_000, 50, 100)  # as World.run
    done = threading.Event()

    def progress() -> None:  # reads the clock only: the run is the same without it
        while not done.wait(args.progress):
            print(f"[{time.perf_counter() - start:.0f} s] virtual {world.loop.now:.1f} s "
                  f"of {world.end_s:.0f} s", file=sys.stderr, flush=True)  # fmt: skip

    if args.progress > 0:
        threading.Thread(target=progress, daemon=True).start()
    try:
        world.setup()
        setup_s = time.perf_counter() - start
        world._drive()
    finally:
        gc.set_threshold(*thresholds)
        done.set()
    result = summarize(world)
    wall_s = time.perf_counter() - start
    out = report(result, wall_s, setup_s)
    rows = [
        ("scale", f"{out['nodes']} nodes x {out['models']:,} models, "
                  f"{out['traffic_s']:.0f} s traffic ({out['virtual_s']:.0f} s virtual)"),
        ("wall time", f"{wall_s:.1f} s (set-up {setup_s:.1f} s; "
                      f"{'native' if out['native'] else 'plain Python'})"),
        ("requests", f"{out['requests']:,}"),
        ("failed", f"{out['failed']:,}"),
        ("hit rate", "-" if out["hit_rate"] is None else f"{100 * out['hit_rate']:.2f} %"),
        ("cold starts", f"{out['cold_starts']:,} (wait p50 {_ms(out['cold_wait_p50_ms'])}, "
                        f"p99 {_ms(out['cold_wait_p99_ms'])})"),
        ("loads / evictions", f"{out['loads']:,} / {out['evictions']:,}"),
        ("hot-copy changes", f"{out['hot_copy_changes']:,}"),
        ("failure detection", f"p50 {_s(out['detection_p50_s'])} / p99 "
                              f"{_s(out['detection_p99_s'])} / max {_s(out['detection_max_s'])} "
                              f"over {out['detection_pairs']:,} pairs "
                              f"({out['detection_missing']} never)"),
        ("false positives", f"{out['false_dead']} false 'dead' declarations"),
    ]  # fmt: skip
    rows += [(f"check: {name}", "pass" if ok else "FAIL") for name, ok in out["checks"].items()]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    for name, detail in out["check_details"].items():
        print(f"{name}: {detail}")
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2, sort_keys=True))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
