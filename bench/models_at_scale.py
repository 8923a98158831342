"""Benchmark: hundreds of model types, in one run — placement, cold loads, memory, hit rate.

    python -m bench.models_at_scale [--quick]

Prints, side by side from one run:

1. placement decision time per model at 1 000 nodes with 100 000 models (heavy-tailed
   sizes, Zipf rates, hot copies), and owner load max/mean by bytes and by request rate
   (``bench.placement_balance``: the real ``router/placement_policy.assign``);
2. cold-load latency, the largest RSS against budget + process overhead, and memory per
   resident model against its file size, through one real cluster node whose catalog is
   larger than its ``--memory-budget`` (``bench.residency_memory``: real etcd, real node);
3. the hit rate of the node's LRU (``router/residency.Residency``) under Zipf load at budgets
   of 10 %, 25 % and 50 % of the catalog, beside a static "pin the most popular" yardstick
   that knows the true popularity (``bench.residency_hits``).

``--quick`` shrinks every part (CI-sized): 2 000 models on 50 nodes, 6 models of 20 MB with
a 70 MB budget, 200 models and 20 000 requests.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from bench import placement_balance, residency_hits, residency_memory

BUDGETS = (0.10, 0.25, 0.50)


def placement_part(models: int, nodes: int) -> dict[str, float]:
    args = argparse.Namespace(models=models, sigma=1.0, seed=15, per_copy=0.05)
    return placement_balance.measure(nodes, args)


def hits_part(models: int, requests: int) -> list[tuple[float, float, float, float]]:
    """(budget share, LRU hit rate, evictions per 1 000 requests, yardstick hit rate)."""
    w = residency_hits.workload(models, requests, seed=1)
    out = []
    for share in BUDGETS:
        budget = max(1, int(w.catalog_bytes * share))
        lru = residency_hits.run_lru(w, budget)
        static = residency_hits.run_static(w, budget)
        n = len(w.requests)
        out.append((share, lru.hits / n, lru.evictions * 1000 / n, static.hits / n))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized parts")
    args = parser.parse_args(argv)
    console = Console()
    started = time.perf_counter()
    if args.quick:
        place = placement_part(2_000, 50)
        nodes, models = 50, 2_000
        memory = residency_memory.run(6, 20.0, "70M")
        hits = hits_part(200, 20_000)
    else:
        place = placement_part(100_000, 1_000)
        nodes, models = 1_000, 100_000
        memory = residency_memory.run(20, 200.0, "2G")
        hits = hits_part(1_000, 200_000)

    table = Table(title=f"Placement: {models} models on {nodes} nodes (R=2, hot copies)")
    for column in ("measure", "today's ring", "memory-aware placement"):
        table.add_column(column)
    table.add_row("decision time per model", "-", f"{place['us_per_model']:.1f} µs")
    table.add_row(
        "owner bytes max/mean", f"{place['ring_bytes']:.3f}", f"{place['assign_bytes']:.3f}"
    )
    table.add_row("owner rate max/mean", f"{place['ring_rate']:.3f}", f"{place['assign_rate']:.3f}")
    table.add_row(
        "keys moved on a join / a leave",
        f"{place['ring_join']:.4f} / {place['ring_leave']:.4f}",
        f"{place['assign_join']:.4f} / {place['assign_leave']:.4f}",
    )
    console.print(table)
    residency_memory.report(memory, console)

    table = Table(title="Hit rate under Zipf load (s=1.0), LRU under the budget")
    for column in ("budget (of catalog bytes)", "LRU hit rate", "evictions / 1k req",
                   "pin-the-most-popular yardstick"):  # fmt: skip
        table.add_column(column)
    for share, hit, evictions, static in hits:
        table.add_row(f"{share:.0%}", f"{hit:.3f}", f"{evictions:.0f}", f"{static:.3f}")
    console.print(table)
    console.print(f"wall time {time.perf_counter() - started:.0f} s")
    ok = all(math.isfinite(v) for v in place.values())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
