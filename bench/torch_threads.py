"""Benchmark: torch intra-op threads of a node's CPU worker vs its cores.

    python -m bench.torch_threads [--threads 1,2] [--duration 6] [--rounds 3] [--concurrency 64]

One standalone node per setting (``shardline serve --cpu-threads N``; "auto" is the node's
default) serves ``payment_fraud`` under the grpcio load generator (``bench.grpcio_load``,
its own process, closed loop); in alternating rounds, the median round by throughput of
each setting is printed: req/s, p50/p99 and the node's CPU per request. A node runs all
its models' torch work on one worker thread per device; on CPU that thread's intra-op
pool competes with the event loop, which does most of the per-request work of a small
model (decoding, routing, HTTP/2): more intra-op threads only pay when a batch's compute
is long enough to split.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from bench.grpcio_load import LoadRun, fraud_payloads, run_load
from tests.procs import NodeProcess


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--threads", default=f"auto,1,{os.cpu_count() or 1}")
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)
    settings = list(dict.fromkeys(args.threads.split(",")))
    nodes = {
        s: NodeProcess.start([] if s == "auto" else ["--cpu-threads", s], metrics=False)
        for s in settings
    }
    payloads = fraud_payloads()
    runs: dict[str, list[LoadRun]] = {s: [] for s in settings}
    try:
        for _ in range(args.rounds):
            for s, node in nodes.items():
                runs[s].append(
                    run_load(
                        [node.target],
                        server_pids=[node.proc.pid],
                        payloads=payloads,
                        concurrency=args.concurrency,
                        duration_s=args.duration,
                        warmup_s=args.warmup,
                    )
                )
    finally:
        for node in nodes.values():
            node.stop()
    table = Table(
        title=f"payment_fraud, {args.concurrency} in flight, {os.cpu_count()} cores, "
        f"median of {args.rounds} rounds"
    )
    for col in ("--cpu-threads", "req/s", "p50 ms", "p99 ms", "errors", "node CPU ms/req"):
        table.add_column(col, justify="right")
    for s, rs in runs.items():
        r = sorted(rs, key=lambda x: x.rps)[len(rs) // 2]
        table.add_row(s, f"{r.rps:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}",
                      str(r.error_count), f"{r.server_cpu_ms_per_request:.3f}")  # fmt: skip
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
