"""Benchmark: how many model keys change owners when one member joins or leaves the ring.

    python -m bench.ring_moves [--keys 2000] [--trials 10]

For N = 5, 10, 50 equal-capacity members, builds `shardline.router.ring.Ring` s and measures the
fraction of ``--keys`` model keys whose owner *set* changes when one member is added
(``--trials`` different new ids) and when one is removed (``--trials`` different members,
spread over the ring), for R = 1 and R = 2. Prints the mean and the worst trial next to
1/N, and the mean as a multiple of 1/N: consistent hashing should move about 1/N of the
keys for R = 1 (the joiner's share is 1/(N+1)) and about R/N of the owner sets for R = 2
(a joiner becomes primary of ~1/N of the keys and second owner of ~1/N more; a leaver
held ~2/N of the sets). A naive ``hash(key) % N`` would move about 1 - 1/N.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

from shardline.router.ring import Ring, RingMember, key_moves

SIZES = (5, 10, 50)


def model_keys(count: int) -> list[str]:
    return [f"model_{i:05d}@v{1 + i % 3}" for i in range(count)]


def members(count: int) -> list[RingMember]:
    return [RingMember(f"node-{i:03d}") for i in range(count)]


def measure(n: int, keys: Sequence[str], replicas: int, trials: int) -> tuple[list[float], ...]:
    base_members = members(n)
    base = Ring(base_members)
    added = [
        key_moves(base, Ring([*base_members, RingMember(f"joiner-{t}")]), keys, replicas)
        for t in range(trials)
    ]
    step = max(1, n // trials)
    removed = [
        key_moves(base, Ring(m for m in base_members if m.node_id != gone.node_id), keys, replicas)
        for gone in base_members[::step][:trials]
    ]
    return added, removed


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=2000)
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args(argv)
    keys = model_keys(args.keys)
    started = time.perf_counter()
    print(f"{args.keys} model keys, {args.trials} trials per cell; owner-set changes:")
    header = f"{'N':>3} {'R':>2} {'change':<8} {'mean':>7} {'worst':>7} {'1/N':>7} {'mean*N':>7}"
    print(header)
    print("-" * len(header))
    for n in SIZES:
        for replicas in (1, 2):
            added, removed = measure(n, keys, replicas, args.trials)
            for label, values in (("add 1", added), ("remove 1", removed)):
                mean = statistics.fmean(values)
                print(
                    f"{n:>3} {replicas:>2} {label:<8} {mean:>7.4f} {max(values):>7.4f} "
                    f"{1 / n:>7.4f} {mean * n:>7.2f}"
                )
    print(f"({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
