"""Benchmark: how fast the simulator runs.

    python -m bench.sim_speed [--throughput-s 40] [--churn-s 600] [--skip-churn]

1. Simulated requests per wall-clock second: an 8-node cluster under about 16 000
   requests/s (eight model keys, two to three replicas, batches up to 64) with one crash,
   for ``--throughput-s`` virtual seconds; every request goes through the real rules,
   ring, handoff and replica cores and through the safety checker. Target: >= 100 000.
2. The wall time of ``churn_100_nodes`` for ``--churn-s`` virtual seconds (default: the
   full 10 virtual minutes: 100 nodes running the real SWIM core, a crash about every
   15 s, joins, drains). Target: <= 60 s.

Both print the checks' outcome too (a fast but wrong run is not a result), and which
code ran: the compiled cores (``python -m shardline.sim.native build``; ``scripts/setup.sh`` builds
them when a C compiler is present) or plain Python. With the compiled build, (1) also runs
in a second process on plain Python, side by side, and prints the ratio.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import replace

import shardline.membership.native as native
from shardline.sim.result import RunResult, run_scenario
from shardline.sim.scenario import DEFAULT_WORKFLOWS, Scenario, load_scenario, parse_scenario

THROUGHPUT_TARGET = 100_000
CHURN_TARGET_S = 60.0


def throughput_scenario(duration_s: float) -> Scenario:
    scenario = parse_scenario(
        {
            "name": "throughput",
            "duration_s": duration_s,
            "cluster": {"nodes": 8},
            "faults": [{"at_s": duration_s / 2, "op": "crash", "node": "n03"}],
        }
    ).with_overrides(rate_scale=20.0)
    workflows = tuple(
        replace(w, base_ms=w.base_ms / 2, per_item_ms=w.per_item_ms / 4, max_batch=64)
        for w in DEFAULT_WORKFLOWS
    )
    return replace(scenario, workflows=workflows)


def timed(scenario: Scenario) -> tuple[RunResult, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = run_scenario(scenario)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def checks(result: RunResult) -> str:
    return ", ".join(f"{c.name} {'ok' if c.ok else 'FAILED'}" for c in result.checks)


def plain_throughput(duration_s: float) -> float:
    """(1) in another process forced to plain Python: its requests per wall second."""
    code = (
        "from bench.sim_speed import throughput_scenario, timed;"
        f"r, wall, _ = timed(throughput_scenario({duration_s!r}));"
        "print(r.summary['requests'] / wall)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, native.ENV: "0"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = float(out.split()[-1])
    print(f"throughput on plain Python: {rate:,.0f} requests/s wall")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--throughput-s", type=float, default=40.0)
    parser.add_argument("--churn-s", type=float, default=None, help="default: the full run")
    parser.add_argument("--skip-churn", action="store_true")
    args = parser.parse_args()
    mode = "compiled cores" if native.enabled() else f"plain Python (compiled: {native.state()})"
    print(f"code: {mode}", flush=True)

    result, wall, cpu = timed(throughput_scenario(args.throughput_s))
    requests = result.summary["requests"]
    print(
        f"throughput: {requests:,} simulated requests in {wall:.1f} s wall ({cpu:.1f} s CPU): "
        f"{requests / wall:,.0f} requests/s wall, {requests / cpu:,.0f} per CPU second "
        f"(target >= {THROUGHPUT_TARGET:,}); {checks(result)}",
        flush=True,
    )
    if native.enabled():
        plain_rate = plain_throughput(args.throughput_s)
        print(f"compiled / plain Python, same scenario: {requests / wall / plain_rate:.2f}x")
    if args.skip_churn:
        return
    churn = load_scenario("churn_100_nodes")
    if args.churn_s is not None:
        churn = churn.with_overrides(duration_s=args.churn_s)
    result, wall, cpu = timed(churn)
    s = result.summary
    print(
        f"churn_100_nodes: {churn.duration_s:g} virtual s in {wall:.1f} s wall ({cpu:.1f} s "
        f"CPU; target <= {CHURN_TARGET_S:g} s): {s['requests']:,} requests, "
        f"{s['nodes_total']} nodes, {s['detection']['crashes']} crashes, "
        f"{s['gossip_datagrams']:,} gossip datagrams, {s['events']:,} events; {checks(result)}"
    )


if __name__ == "__main__":
    main()
