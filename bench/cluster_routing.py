"""Benchmark: direct-to-owner vs through a non-owner ingress vs the smart client.

    python -m bench.cluster_routing [--duration 9] [--concurrency 64] [--rounds 3]

A real local cluster (etcd + 3 node processes) serves ``payment_fraud``. Requests use
users whose decision is ``payment_fraud@1`` with no shadow copy, so every setup does the
same model work, and every setup makes the same client call (``predict``: encode, send,
decode). Side by side, in alternating rounds:
  direct     client -> an owner of payment_fraud@1 (served there, 0 hops)
  forwarded  client -> the node that does not own it (forwards the raw bytes, 1 hop)
  smart      SmartClient (routes to an owner itself)
RPS and p50/p99 at the given concurrency and at concurrency 1, plus the CPU time the
ingress process spends per request (from /proc), forwarded vs served.
Targets: forwarded p50 <= 1.5x direct at concurrency 1; smart within 5 % of direct.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.loadgen import LoadResult, run_closed_loop
from bench.serving import FRAUD, merge
from shardline.membership.etcd import connect
from shardline.node.cluster.catalog_ops import catalog, register_tree
from shardline.node.ops.localcluster import routing_table, wait_ready
from shardline.node.sdk.client import Client, SmartClient
from shardline.router.objectives import load_objectives_dir
from shardline.router.rules import RequestContext, evaluate
from tests.etcd_server import EtcdServer
from tests.procs import EXAMPLES, NodeProcess

CLUSTER = "bench"
KEY = "payment_fraud@1"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def plain_users(n: int) -> list[str]:
    cfg = load_objectives_dir(EXAMPLES / "objectives")["payment_fraud"]
    users: list[str] = []
    i = 0
    while len(users) < n:
        d = evaluate(cfg, RequestContext(user_id=f"user-{i}"))
        if d.model_key == KEY and not d.shadows:
            users.append(f"user-{i}")
        i += 1
    return users


async def measure(
    name: str,
    call: Callable[[], Awaitable[object]],
    concurrency: int,
    seconds: float,
    pid: int | None,
) -> tuple[LoadResult, float]:
    before = cpu_seconds(pid) if pid else 0.0
    result = await run_closed_loop(name, call, concurrency=concurrency, duration_s=seconds,
                                   warmup_s=0.5)  # fmt: skip
    spent = (cpu_seconds(pid) - before) if pid else 0.0
    total = result.requests * (1 + 0.5 / seconds)  # warm-up requests burn CPU too
    return result, spent / total * 1e6 if total else 0.0


async def run(duration_s: float, concurrency: int, rounds: int) -> None:
    console = Console()
    with EtcdServer() as etcd:
        client = await connect(etcd.endpoint)
        await register_tree(catalog(client, CLUSTER), EXAMPLES, EXAMPLES / "objectives")
        await client.close()
        address = f"127.0.0.1:{etcd.client_port}"
        nodes = {
            f"node-{i}": NodeProcess.start(
                ["--cluster", CLUSTER, "--node-id", f"node-{i}", "--cpu-threads", "1"],
                etcd=address,
                metrics=False,
            )
            for i in (1, 2, 3)
        }
        try:
            await wait_ready([n.target for n in nodes.values()], 60, lambda _: None)
            table = await routing_table(nodes["node-1"].target)
            owners = next(p.owners for p in table.placements if p.model_key == KEY)
            owner = nodes[owners[0]]
            other = next(n for node_id, n in nodes.items() if node_id not in owners)
            users = plain_users(500)
            counter = iter(range(10**12))
            direct, via = Client(owner.target), Client(other.target)
            smart = SmartClient([other.target])
            await smart.refresh()

            def plain_call(c: Client) -> Callable[[], Awaitable[object]]:
                async def call() -> object:  # the same client-side work as the smart client
                    return await c.predict(
                        "payment_fraud", FRAUD, user_id=users[next(counter) % len(users)]
                    )

                return call

            async def smart_call() -> object:
                return await smart.predict(
                    "payment_fraud", FRAUD, user_id=users[next(counter) % len(users)]
                )

            setups = {
                "direct to owner": (plain_call(direct), owner.proc.pid),
                "via non-owner ingress": (plain_call(via), other.proc.pid),
                "smart client": (smart_call, None),
            }
            out = Table(title=f"payment_fraud on 3 nodes, {duration_s:g} s per setup")
            for col in ("setup", "in flight", "req/s", "p50 ms", "p99 ms", "errors",
                        "ingress CPU µs/req"):  # fmt: skip
                out.add_column(col)
            p50_at_1: dict[str, float] = {}
            rps: dict[str, float] = {}
            for conc in (concurrency, 1):
                per_setup: dict[str, list[LoadResult]] = {k: [] for k in setups}
                cpu: dict[str, list[float]] = {k: [] for k in setups}
                for _ in range(rounds):
                    for name, (call, pid) in setups.items():
                        r, us = await measure(name, call, conc, duration_s / rounds, pid)
                        per_setup[name].append(r)
                        cpu[name].append(us)
                for name, results in per_setup.items():
                    m = merge(name, results)
                    us = sorted(cpu[name])[len(cpu[name]) // 2]
                    out.add_row(name, str(conc), f"{m.rps:,.0f}", f"{m.p50_ms:.2f}",
                                f"{m.p99_ms:.2f}", str(m.errors),
                                f"{us:.0f}" if setups[name][1] else "-")  # fmt: skip
                    if conc == 1:
                        p50_at_1[name] = m.p50_ms
                    else:
                        rps[name] = m.rps
            console.print(out)
            d, f, s = "direct to owner", "via non-owner ingress", "smart client"
            console.print(
                f"forwarded p50 / direct p50 at concurrency 1: "
                f"{p50_at_1[f] / p50_at_1[d]:.2f} (target <= 1.5)"
            )
            console.print(
                f"smart client / direct throughput at {concurrency} in flight: "
                f"{rps[s] / rps[d]:.2f}; p50 at 1: {p50_at_1[s] / p50_at_1[d]:.2f} "
                "(target within 5 %)"
            )
            direct.close()
            via.close()
            smart.close()
        finally:
            for n in nodes.values():
                n.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=9.0, help="seconds per setup")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(run(args.duration, args.concurrency, args.rounds))


if __name__ == "__main__":
    main()
