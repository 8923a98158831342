"""Benchmark: does a flood on one objective hurt another objective on the same model?

    python -m bench.isolation [--duration 20] [--burst N] [--per-item-ms 8]

One standalone node process serves the generated ``bench@1`` workflow of
``bench.overload`` (forward sleeps 2 ms + 8 ms per item, batches of up to 8: about 120
requests/s; see that module for why the model is simulated this way and why at this
speed) through two objectives that both route to it:
  flood   (A) with ``[limits] rate_per_s`` at 40 % of the model's ideal capacity
          (``burst`` unset, i.e. one second's worth, unless ``--burst`` is given);
  steady  (B) without limits.
The node's capacity is measured first (closed loop on B). Then, open loop, Poisson
arrivals, 1 s deadlines, ``--duration`` seconds per phase, with B measured from the
first request of each phase (a flood's onset counts):
  B alone         B at 30 % of capacity, nothing else (reference);
  without flood   A at 30 % of capacity (under its limit), B at 30 %;
  with flood      A at 10x capacity, B at 30 %.
Each objective's load comes from its own process with its own connections, as tenants
are separate clients: one process generating both would measure itself, B's answers
queueing behind A's 1 200/s in the generator's event loop.
Printed per phase: each objective's goodput, p50/p99 and errors by status, what the node
did (shed counters, batches, device busy, CPU) and B's summary.
Targets: B's p99 with the flood <= 1.5x its p99 without it, and zero B errors.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

from rich.console import Console
from rich.table import Table

from bench.loadgen import LoadResult, OpenLoopResult, run_open_loop
from bench.overload import (
    DEADLINE_S,
    ClientPool,
    Meter,
    ModelSpec,
    Step,
    add_model_args,
    bench_node,
    capacity_line,
    measure_capacity,
    step_table,
    usage_table,
)
from tests.procs import NodeProcess

A, B = "flood", "steady"
TAG = {A: "A", B: "B"}
A_LIMIT_SHARE = 0.4
STEADY_SHARE = 0.3
FLOOD_X = 10.0


START_DELAY_S = 4.0  # time for the generator processes to start before their common start


def tenant_load(
    target: str,
    objective: str,
    rate: float,
    duration_s: float,
    name: str,
    seed: int,
    start_at: float,
) -> OpenLoopResult:
    """One tenant: an open loop on ``objective`` from this (child) process, starting at
    the wall-clock time ``start_at`` so every tenant of a phase starts together."""

    async def run() -> OpenLoopResult:
        pool = ClientPool(target)
        try:
            call = pool.caller(objective)
            await asyncio.sleep(max(0.0, start_at - time.time()))  # a common start
            return await run_open_loop(
                call, rate, duration_s, name=name, timeout_s=DEADLINE_S + 0.25, seed=seed
            )
        finally:
            pool.close()

    return asyncio.run(run())  # fmt: skip


async def phase(
    label: str,
    node: NodeProcess,
    spec: ModelSpec,
    rates: dict[str, float],
    duration_s: float,
    seed: int,
) -> dict[str, Step]:
    """Offer each objective its rate at once, each from its own process; one ``Step`` per
    objective (the node's usage is for the whole phase, so both steps carry the same)."""
    loop = asyncio.get_running_loop()
    start_at = time.time() + START_DELAY_S
    with ProcessPoolExecutor(len(rates), mp_context=multiprocessing.get_context("spawn")) as ex:
        futures = [
            loop.run_in_executor(
                ex, tenant_load, node.target, obj, rate, duration_s, f"{label}: {TAG[obj]}",
                seed * 10 + i, start_at,
            )
            for i, (obj, rate) in enumerate(rates.items())
        ]  # fmt: skip
        await asyncio.sleep(max(0.0, start_at - time.time()))
        meter = Meter(node, spec)
        meter.start()
        results = await asyncio.gather(*futures)
    usage = meter.stop()  # after the generators exited, so their CPU is counted
    return {obj: Step(r.name, r, usage) for obj, r in zip(rates, results, strict=True)}


async def run(
    spec: ModelSpec, duration_s: float, burst: float | None
) -> tuple[LoadResult, float, list[dict[str, Step]]]:
    a_rate = round(A_LIMIT_SHARE * spec.ideal_capacity, 1)
    a_limits: dict[str, float] = {"rate_per_s": a_rate}
    if burst is not None:
        a_limits["burst"] = burst
    with bench_node(spec, {A: a_limits, B: None}) as node:
        pool = ClientPool(node.target)
        try:
            cap = await measure_capacity(pool.caller(B), spec)
            steady = STEADY_SHARE * cap.rps
            phases = [
                ("B alone", {B: steady}),
                ("without flood", {A: steady, B: steady}),
                ("with flood", {A: FLOOD_X * cap.rps, B: steady}),
            ]
            out = []
            for i, (label, rates) in enumerate(phases):
                out.append(await phase(label, node, spec, rates, duration_s, seed=i))
        finally:
            pool.close()
    return cap, a_rate, out


def b_table(phases: list[dict[str, Step]]) -> Table:
    table = Table(title=f"objective B ({B!r}) by phase")
    for col in ("phase", "B req/s", "B p50 ms", "B p99 ms", "B errors", "B error rate"):
        table.add_column(col, justify="right")
    for p in phases:
        r = p[B].result
        table.add_row(
            r.name.split(":")[0], f"{r.goodput:.0f}", f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}",
            f"{r.error_count} ({', '.join(f'{k}:{v}' for k, v in r.errors.items()) or '-'})",
            f"{r.error_rate:.2%}",
        )  # fmt: skip
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per phase")
    parser.add_argument(
        "--burst", type=float, default=None, help="A's limits.burst (default: unset)"
    )
    add_model_args(parser)
    args = parser.parse_args()
    spec = ModelSpec(base_ms=args.base_ms, per_item_ms=args.per_item_ms)
    console = Console(width=max(Console().width, 120))
    console.print(f"machine: {os.cpu_count()} CPUs; model: {spec.describe()}")
    capacity, a_rate, phases = asyncio.run(run(spec, args.duration, args.burst))
    burst = "unset (one second's worth)" if args.burst is None else f"{args.burst:g}"
    console.print(f"{capacity_line(capacity)} (on B)")
    console.print(
        f"A's limit: rate_per_s = {a_rate:g} ({a_rate / capacity.rps:.0%} of capacity), "
        f"burst {burst}"
    )
    steps = [s for p in phases for s in p.values()]
    console.print(step_table(f"open loop, {args.duration:g} s per phase", steps))
    per_phase = [replace(p[B], label=p[B].label.split(":")[0]) for p in phases]
    console.print(usage_table("the node and the machine during each phase", per_phase))
    console.print(b_table(phases))
    without, flood = phases[1][B].result, phases[2][B].result
    ratio = flood.p99_ms / without.p99_ms if without.p99_ms else float("nan")
    console.print(
        f"B p99 with / without flood: {ratio:.2f} (target <= 1.5) "
        f"{'met' if ratio <= 1.5 else 'MISSED'}; "
        f"B errors with flood: {flood.error_count} (target 0) "
        f"{'met' if flood.error_count == 0 else 'MISSED'}"
    )
    alone = phases[0][B].result
    if alone.p99_ms:
        console.print(f"B p99 with flood / B alone: {flood.p99_ms / alone.p99_ms:.2f} (reference)")


if __name__ == "__main__":
    main()
