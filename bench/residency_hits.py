"""Benchmark: hit rate of the resident-model LRU (`shardline.router.residency`) under Zipf load.

    python -m bench.residency_hits [--models 1000] [--requests 200000] [--seed 1] [--quick]

The workload, all from one seeded `random.Random` (a run replays exactly):

- a catalog of ``--models`` models whose sizes are lognormal: median 100 MB (10^8 bytes),
  sigma 1.0 (mean ~165 MB; the largest of 1 000 is typically ~20x the median);
- popularity Zipf with s = 1.0 (the model of rank k gets weight 1/k), ranks assigned by a
  random permutation, independent of size;
- ``--requests`` requests drawn independently from that popularity, one per time unit.

For memory budgets of 10 %, 25 % and 50 % of the catalog's bytes it drives a
`Residency` the way a node does: a request for a resident model touches it (a hit);
otherwise (a miss: a load) the node asks `Residency.plan`, removes the evicted and adds the
model. Nothing is pinned or busy here (one request at a time), so this measures the
eviction order alone. It prints the hit rate by requests (cold start included: the first
request to each model is a miss), evictions per 1 000 requests, and the time of one
`plan()` call (mean and p99, over the misses).

The yardstick is a static "pin the top k" policy that knows the true popularity: the most
popular models are pinned, in rank order, while they fit in the budget (a model that does
not fit is skipped and the next tried); nothing is ever loaded or evicted after that, and
its hit rate is the requests that hit a pinned model. It is the best any policy can do
that keeps a fixed set resident under independent requests; LRU needs no knowledge of
popularity and follows it when it changes, at the cost of some misses.

``--quick`` (200 models, 20 000 requests) is for the test suite.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

from rich.console import Console
from rich.table import Table

from shardline.router.residency import NoRoom, Residency

BUDGETS = (0.10, 0.25, 0.50)
ZIPF_S = 1.0
SIZE_MEDIAN = 100_000_000  # bytes
SIZE_SIGMA = 1.0
LRU = "LRU (Residency)"
STATIC = "pin top-k (static)"


@dataclass(frozen=True)
class Workload:
    sizes: tuple[int, ...]  # bytes per model
    ranks: tuple[int, ...]  # model index by popularity, most popular first
    requests: tuple[int, ...]  # model index per request

    @property
    def catalog_bytes(self) -> int:
        return sum(self.sizes)


def workload(models: int, requests: int, seed: int) -> Workload:
    rng = random.Random(seed)
    mu = math.log(SIZE_MEDIAN)
    sizes = tuple(max(1, round(rng.lognormvariate(mu, SIZE_SIGMA))) for _ in range(models))
    ranks = list(range(models))
    rng.shuffle(ranks)
    cum = list(accumulate((k + 1) ** -ZIPF_S for k in range(models)))
    drawn = rng.choices(ranks, cum_weights=cum, k=requests)
    return Workload(sizes, tuple(ranks), tuple(drawn))


@dataclass(frozen=True)
class Result:
    policy: str
    hits: int
    evictions: int
    plan_ns: tuple[int, ...]  # one per plan() call
    resident: int  # models resident at the end
    too_big: int  # requests for a model larger than the whole budget


def run_lru(w: Workload, budget: int) -> Result:
    r = Residency(budget, max_models=max(1, len(w.sizes)))
    keys = [f"m{i:06d}@1" for i in range(len(w.sizes))]
    hits = too_big = 0
    plan_ns: list[int] = []
    clock = time.perf_counter_ns
    for t, i in enumerate(w.requests):
        key = keys[i]
        if key in r:
            r.touch(key, float(t))
            hits += 1
            continue
        size = w.sizes[i]
        start = clock()
        try:
            plan = r.plan(key, size)
        except NoRoom:
            plan_ns.append(clock() - start)
            too_big += 1
            continue
        plan_ns.append(clock() - start)
        for k in plan.evict:
            r.remove(k)
        r.add(key, size, float(t))
    return Result(LRU, hits, r.evictions, tuple(plan_ns), len(r), too_big)


def run_static(w: Workload, budget: int) -> Result:
    pinned: set[int] = set()
    used = 0
    for i in w.ranks:
        if used + w.sizes[i] <= budget:
            pinned.add(i)
            used += w.sizes[i]
    hits = sum(1 for i in w.requests if i in pinned)
    too_big = sum(1 for i in w.requests if w.sizes[i] > budget)
    return Result(STATIC, hits, 0, (), len(pinned), too_big)


def percentile(values: Sequence[int], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.residency_hits", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="200 models, 20 000 requests")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.requests = 200, 20_000
    if args.models < 1 or args.requests < 1:
        parser.error("--models and --requests must be >= 1")
    started = time.perf_counter()
    w = workload(args.models, args.requests, args.seed)
    catalog = w.catalog_bytes
    table = Table(
        title=(
            f"Resident-model hit rate: {args.models} models, {catalog / 1e9:.1f} GB catalog, "
            f"{args.requests} requests, Zipf s={ZIPF_S}, seed {args.seed}"
        )
    )
    for col in ("budget", "budget GB", "policy", "hit rate", "evictions/1k req",
                "plan µs mean", "plan µs p99", "resident", "too big"):  # fmt: skip
        table.add_column(col, justify="left" if col == "policy" else "right")
    for fraction in BUDGETS:
        budget = max(1, int(fraction * catalog))
        for result in (run_lru(w, budget), run_static(w, budget)):
            n = len(result.plan_ns)
            table.add_row(
                f"{fraction * 100:.0f} %",
                f"{budget / 1e9:.2f}",
                result.policy,
                f"{result.hits / args.requests:.4f}",
                f"{1000 * result.evictions / args.requests:.1f}",
                f"{sum(result.plan_ns) / n / 1e3:.2f}" if n else "-",
                f"{percentile(result.plan_ns, 0.99) / 1e3:.2f}" if n else "-",
                str(result.resident),
                str(result.too_big),
            )
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # piped or captured: no wrapped cells
    console.print(table)
    console.print(
        f"sizes: lognormal, median {SIZE_MEDIAN / 1e6:.0f} MB, sigma {SIZE_SIGMA} "
        f"(smallest {min(w.sizes) / 1e6:.1f} MB, largest {max(w.sizes) / 1e6:.0f} MB); "
        "hit rate by requests, cold start included; pin top-k knows the true popularity; "
        f"'too big': requests for a model larger than the budget. Wall time "
        f"{time.perf_counter() - started:.1f} s.",
        soft_wrap=True,
    )


if __name__ == "__main__":
    main()
