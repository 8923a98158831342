"""Benchmark: owner load balance of plain Ring vs bounded-load `assign`, its speed and key moves.

    python -m bench.placement_balance [--models 100000] [--nodes 10,50,1000] [--quick]

For N = 10, 50 and 1 000 equal nodes (capacity 1, equal budgets) and ``--models`` models
at R = 2:

- sizes are lognormal, median 50 MB, sigma ``--sigma`` (1.0), seed ``--seed`` (15);
- request rates are Zipf, s = 1.0, over the models in a seeded random order;
- a hot key gets extra copies: ``copies_for_rate(rate, per_copy_rate, 2, max_copies=N)``
  with ``per_copy_rate = --per-copy x (total rate / N)`` (0.05: a copy takes at most 5 %
  of a node's mean load); a key's rate is split evenly over its owners.

It prints owner load max/mean by placed bytes and by request rate for the plain ring
(today's placement: ``Ring.owners(key, R + copies)``, computed as ``assign(...,
balance=inf)``, which is identical and tested so) and for ``assign`` at the default
balance 1.25; the time per model of ``assign``; and the fraction of keys whose owner set
changes when one node joins and when one (the middle one by id) leaves, for both.
The target is max/mean <= 1.25 in both dimensions with ``assign``.
``--quick``: 2 000 models on 10 and 50 nodes (a smoke run for CI).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Mapping, Sequence

import numpy as np
from rich.console import Console
from rich.table import Table

from shardline.router.hot_copies import copies_for_rate
from shardline.router.placement_policy import (
    DEFAULT_BALANCE,
    Assignment,
    ModelNeed,
    NodeSpace,
    assign,
)
from shardline.router.ring import moved_keys

REPLICAS = 2
MEDIAN_BYTES = 50_000_000
BUDGET = 10**13  # every node can load every model: the bench measures balance, not refusals


def models(count: int, nodes: int, *, sigma: float, seed: int, per_copy: float) -> list[ModelNeed]:
    rng = np.random.default_rng(seed)
    sizes = rng.lognormal(math.log(MEDIAN_BYTES), sigma, count).astype(np.int64)
    ranks = rng.permutation(count) + 1  # Zipf rank of each model
    rates = 1.0 / ranks.astype(np.float64)  # s = 1.0
    rates *= 1000.0 * nodes / rates.sum()  # 1 000 requests/s per node on average
    per_copy_rate = per_copy * float(rates.sum()) / nodes
    return [
        ModelNeed(
            f"model_{i:06d}@v{1 + i % 3}",
            int(sizes[i]),
            REPLICAS,
            copies_for_rate(float(rates[i]), per_copy_rate, REPLICAS, nodes),
            float(rates[i]),
        )
        for i in range(count)
    ]


def spaces(count: int) -> list[NodeSpace]:
    return [NodeSpace(f"node-{i:04d}", BUDGET) for i in range(count)]


def max_over_mean(loads: Mapping[str, float]) -> float:
    values = np.asarray(list(loads.values()), dtype=np.float64)
    return float(values.max() / values.mean()) if values.mean() > 0 else 1.0


def moves(before: Assignment, after: Assignment) -> float:
    return moved_keys(before.owners, after.owners) / max(1, len(before.owners))


def measure(n: int, args: argparse.Namespace) -> dict[str, float]:
    needs = models(args.models, n, sigma=args.sigma, seed=args.seed, per_copy=args.per_copy)
    base = spaces(n)
    joined = [*base, NodeSpace("node-joiner", BUDGET)]
    left = [s for s in base if s.node_id != base[n // 2].node_id]
    out: dict[str, float] = {}
    for label, balance in (("ring", math.inf), ("assign", DEFAULT_BALANCE)):
        started = time.perf_counter()
        before = assign(base, needs, balance=balance)
        elapsed = time.perf_counter() - started
        out[f"{label}_bytes"] = max_over_mean(before.placed_bytes)
        out[f"{label}_rate"] = max_over_mean(before.placed_rate)
        out[f"{label}_join"] = moves(before, assign(joined, needs, balance=balance))
        out[f"{label}_leave"] = moves(before, assign(left, needs, balance=balance))
        if label == "assign":
            out["us_per_model"] = elapsed / len(needs) * 1e6
            out["copies"] = float(sum(m.copies for m in needs))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", type=int, default=100_000)
    parser.add_argument("--nodes", default="10,50,1000", help="comma-separated node counts")
    parser.add_argument("--sigma", type=float, default=1.0, help="lognormal sigma of sizes")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument(
        "--per-copy", type=float, default=0.05, help="a copy's rate, x the mean node rate"
    )
    parser.add_argument("--quick", action="store_true", help="2 000 models on 10 and 50 nodes")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.nodes = 2000, "10,50"
    sizes = [int(n) for n in args.nodes.split(",")]
    console = Console(width=160)
    console.print(
        f"{args.models} models, R={REPLICAS}; sizes lognormal(median {MEDIAN_BYTES / 1e6:.0f} MB, "
        f"sigma {args.sigma}), Zipf rates s=1.0, seed {args.seed}; hot copies: "
        f"copies_for_rate(rate, {args.per_copy} x mean node rate, R, max_copies=N); "
        f"balance {DEFAULT_BALANCE}. Ring = today's ring (assign with balance=inf)."
    )
    table = Table(title="owner load max/mean, and owner sets moved by one join / one leave")
    for column in (
        "N",
        "copies",
        "ring bytes",
        "ring rate",
        "assign bytes",
        "assign rate",
        "assign µs/model",
        "join ring",
        "join assign",
        "leave ring",
        "leave assign",
    ):
        table.add_column(column, justify="right")
    started = time.perf_counter()
    for n in sizes:
        r = measure(n, args)
        table.add_row(
            str(n),
            f"{r['copies']:.0f}",
            f"{r['ring_bytes']:.4f}",
            f"{r['ring_rate']:.4f}",
            f"{r['assign_bytes']:.4f}",
            f"{r['assign_rate']:.4f}",
            f"{r['us_per_model']:.1f}",
            f"{r['ring_join']:.4f}",
            f"{r['assign_join']:.4f} x{r['assign_join'] / max(r['ring_join'], 1e-12):.2f}",
            f"{r['ring_leave']:.4f}",
            f"{r['assign_leave']:.4f} x{r['assign_leave'] / max(r['ring_leave'], 1e-12):.2f}",
        )
    console.print(table)
    console.print(f"total {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
