"""Benchmark: does a flood on one objective hurt another objective on the same model?

    python -m bench.isolation [--duration 8] [--rounds 3] [--a-limit SHARE] [--rows 1024]

The hard case of ``bench.overload``: one standalone node process serves its CPU-bound
``bench@1`` (a 4-layer MLP over ``--rows`` candidates per request, one torch thread,
TorchScript unless ``--eager``)
through two objectives that both route to it, with **no limits** on either:
  flood   (A): no ``[limits]`` (``--a-limit SHARE`` gives it ``rate_per_s`` at SHARE of
          the measured capacity, to compare);
  steady  (B): no limits.
Fair queues (the model's mailbox takes one request from each objective in turn) and
the node's shedding (queue budget, deadlines) are all that protects B.
The node's capacity is measured first (grpcio closed loop on B). Then, open loop,
Poisson arrivals, 1 s deadlines, ``--duration`` seconds per phase after 2 s of warm-up,
the three phases in turn ``--rounds`` times, each phase's rounds merged:
  B alone         B at 30 % of capacity, nothing else (reference);
  without flood   A at 30 % of capacity, B at 30 %;
  with flood      A at 10x capacity, B at 30 %.
Each objective's load comes from its own grpcio generator process
(``bench.grpcio_open_loop``) with its own connections, as tenants are separate clients,
both starting at the same wall-clock time.
Printed per phase: each objective's goodput, p50/p99 and errors by status, what the node
did (shed counters, batches, model busy, CPU of node and clients) and B's summary.
Targets: B's p99 with the flood <= 1.5x its p99 without it, and B errors ~0.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import replace

from rich.console import Console
from rich.table import Table

from bench.grpcio_load import LoadRun
from bench.grpcio_open_loop import Generator, command
from bench.overload import (
    DEADLINE_S,
    WARMUP_S,
    BenchNode,
    Meter,
    ModelSpec,
    Step,
    add_model_args,
    bench_node,
    capacity_line,
    measure_capacity,
    merge_steps,
    spec_of,
    step_table,
    usage_table,
)

A, B = "flood", "steady"
TAG = {A: "A", B: "B"}
STEADY_SHARE = 0.3
FLOOD_X = 10.0
START_DELAY_S = 3.0  # time for the generator processes to start before their common start
CHANNELS = {A: 8, B: 2}


def phase(
    label: str, node: BenchNode, rates: dict[str, float], duration_s: float, seed: int
) -> dict[str, Step]:
    """Offer each objective its rate at once, each from its own generator process; one
    ``Step`` per objective (the node's usage is for the whole phase, so both steps carry
    the same; each step's server CPU is the node's over that generator's window)."""
    start_at = time.time() + START_DELAY_S
    budget = 120.0 + START_DELAY_S + WARMUP_S + duration_s + DEADLINE_S
    gens = {
        obj: Generator(
            command(
                [node.target], node.payloads[obj], rate_per_s=rate, duration_s=duration_s,
                warmup_s=WARMUP_S, deadline_s=DEADLINE_S, channels=CHANNELS[obj],
                seed=seed * 10 + i, start_at=start_at,
            ),
            [node.pid],
            budget,
        )
        for i, (obj, rate) in enumerate(rates.items())
    }  # fmt: skip
    time.sleep(max(0.0, start_at - time.time()))  # the node's span starts with the load
    meter = Meter(node)
    meter.start()
    loads = {obj: g.wait(f"{label}: {TAG[obj]}") for obj, g in gens.items()}
    usage = meter.stop()
    return {obj: Step(ld.result.name, ld, usage) for obj, ld in loads.items()}


def run(
    spec: ModelSpec, duration_s: float, a_limit: float | None, rounds: int = 1
) -> tuple[LoadRun, float | None, list[dict[str, Step]], list[float]]:
    """The capacity, then the three phases in turn ``rounds`` times (a shared machine's
    changing load falls on every phase alike), each phase's rounds merged; also each
    round's B p99 with / without the flood."""
    a_rate: float | None = None
    if a_limit is not None:  # the limit needs the capacity: measure it on a first node
        with bench_node(spec, {A: None, B: None}) as probe:
            a_rate = round(a_limit * measure_capacity(probe, B, spec).rps, 1)
    limits = {A: {"rate_per_s": a_rate} if a_rate else None, B: None}
    with bench_node(spec, limits) as node:
        cap = measure_capacity(node, B, spec)
        steady = STEADY_SHARE * cap.rps
        phases = [
            ("B alone", {B: steady}),
            ("without flood", {A: steady, B: steady}),
            ("with flood", {A: FLOOD_X * cap.rps, B: steady}),
        ]
        per_round = [
            [
                phase(label, node, rates, duration_s, seed=k * 10 + i)
                for i, (label, rates) in enumerate(phases)
            ]
            for k in range(rounds)
        ]
    merged = [
        {obj: merge_steps(f"{label}: {TAG[obj]}", [r[i][obj] for r in per_round]) for obj in rates}
        for i, (label, rates) in enumerate(phases)
    ]
    ratios = [
        r[2][B].result.p99_ms / r[1][B].result.p99_ms if r[1][B].result.p99_ms else float("nan")
        for r in per_round
    ]
    return cap, a_rate, merged, ratios


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


def report(
    console: Console,
    capacity: LoadRun,
    spec: ModelSpec,
    a_rate: float | None,
    phases: list[dict[str, Step]],
    ratios: Sequence[float] = (),
) -> float:
    """Print the tables; return B's p99 with / without the flood."""
    console.print(f"{capacity_line(capacity, spec)} (on B)")
    if a_rate is None:
        console.print("A's limits: none (fair queues and the node's shedding only)")
    else:
        console.print(f"A's limit: rate_per_s = {a_rate:g} ({a_rate / capacity.rps:.0%})")
    steps = [s for p in phases for s in p.values()]
    rounds = f", {len(ratios)} rounds merged" if len(ratios) > 1 else ""
    console.print(step_table(f"open loop, Poisson arrivals, per phase{rounds}", steps))
    per_phase = [replace(p[B], label=p[B].label.split(":")[0]) for p in phases]
    console.print(
        usage_table("the node and the machine during each phase (client CPU: B's)", per_phase)
    )
    if A in phases[-1]:
        a = phases[-1][A].load
        console.print(f"with flood, A's generator: {a.client_cores:.2f} cores")
    console.print(b_table(phases))
    without, flood = phases[1][B].result, phases[2][B].result
    ratio = flood.p99_ms / without.p99_ms if without.p99_ms else float("nan")
    console.print(
        f"B p99 with / without flood: {ratio:.2f} (target <= 1.5) "
        f"{'met' if ratio <= 1.5 else 'MISSED'}; "
        f"B errors with flood: {flood.error_count} of {flood.scheduled} "
        f"({flood.error_rate:.2%}, target ~0)"
    )
    if len(ratios) > 1:
        console.print(
            "B p99 with / without flood, per round: " + ", ".join(f"{r:.2f}" for r in ratios)
        )
    alone = phases[0][B].result
    if alone.p99_ms:
        console.print(f"B p99 with flood / B alone: {flood.p99_ms / alone.p99_ms:.2f} (reference)")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per phase")
    parser.add_argument("--rounds", type=int, default=3, help="times every phase is run")
    parser.add_argument(
        "--a-limit", type=float, default=None,
        help="give A a rate limit at this share of capacity (default: no limit)",
    )  # fmt: skip
    add_model_args(parser)
    args = parser.parse_args()
    spec = spec_of(args)
    console = Console(width=max(Console().width, 120))
    console.print(f"machine: {os.cpu_count()} CPUs; model: {spec.describe()}")
    capacity, a_rate, phases, ratios = run(spec, args.duration, args.a_limit, args.rounds)
    report(console, capacity, spec, a_rate, phases, ratios)


if __name__ == "__main__":
    main()
