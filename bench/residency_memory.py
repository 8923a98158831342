"""Benchmark: a node's real memory under its model budget, and what a cold start costs.

    python -m bench.residency_memory [--models 20] [--megabytes 200] [--budget 2G]

Generates ``--models`` packages of ``--megabytes`` MB of weights (random, under a temp dir;
nothing committed), registers them in a real etcd with one objective per model, and starts
one real cluster node with ``--memory-budget``. The catalog is bigger than the budget, so
the node loads what fits and leaves the rest lazy. Then every model is called in turn,
twice round (each call of a model not resident is a cold start that evicts the least
recently used one), and after each call the node's RSS is read from ``/proc`` and its
resident bytes from its routing table.

Prints: the budget, the largest resident bytes seen (never above the budget), the node's
RSS against budget + the process's own overhead (measured on a node with no model: the
interpreter, torch, gRPC), RSS per resident model against its file size (1.0 = weights held
once), and the latency of cold and warm calls (p50 / p99).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from shardline.membership.etcd import connect
from shardline.node.cluster.catalog_ops import catalog, register_tree
from shardline.node.ops.localcluster import routing_table, wait_ready
from shardline.node.sdk.client import Client
from shardline.node.serving.node_config import parse_bytes
from tests.big_packages import make_big_package
from tests.etcd_server import EtcdServer
from tests.procs import NodeProcess

CLUSTER = "residency-memory"


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        return next(int(ln.split()[1]) * 1024 for ln in status if ln.startswith("VmRSS:"))


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _node(etcd: EtcdServer, node_id: str, budget: str) -> NodeProcess:
    return NodeProcess.start(
        ["--cluster", CLUSTER, "--node-id", node_id, "--cpu-threads", "1",
         "--memory-budget", budget],
        etcd=f"127.0.0.1:{etcd.client_port}",
        metrics=False,
    )  # fmt: skip


async def _register(etcd: EtcdServer, workflows: Path, objectives: Path) -> None:
    client = await connect(etcd.endpoint)
    try:
        await register_tree(catalog(client, CLUSTER), workflows, objectives)
    finally:
        await client.close()


async def _resident(target: str) -> int:
    table = await routing_table(target, timeout_s=10)
    me = next(m for m in table.members if m.node_id == table.node_id)
    return int(me.resident_bytes)


def run(models: int, megabytes: float, budget: str) -> dict[str, Any]:
    budget_bytes = parse_bytes(budget)
    with tempfile.TemporaryDirectory(prefix="residency-memory-") as tmp:
        root = Path(tmp)
        workflows, objectives = root / "workflows", root / "objectives"
        workflows.mkdir()
        objectives.mkdir()
        names = [f"big_{i:02d}" for i in range(models)]
        for name in names:
            make_big_package(workflows, name, megabytes)
        file_bytes = (workflows / names[0] / "weights.safetensors").stat().st_size
        for name in names:
            (objectives / f"{name}.toml").write_text(f'name = "{name}"\ndefault = "{name}@1"\n')
        with EtcdServer() as etcd:
            # The process's own overhead: a node of the same cluster with an empty catalog.
            bare = _node(etcd, "bare", budget)
            try:
                asyncio.run(wait_ready([bare.target], 120, lambda _: None))
                overhead = rss_bytes(bare.proc.pid)
            finally:
                bare.stop()
            asyncio.run(_register(etcd, workflows, objectives))
            node = _node(etcd, "node-1", budget)
            try:
                asyncio.run(wait_ready([node.target], 300, lambda _: None))
                return asyncio.run(
                    _drive(node, names, file_bytes, budget_bytes, overhead, megabytes)
                )
            finally:
                node.stop()


async def _drive(
    node: NodeProcess,
    names: list[str],
    file_bytes: int,
    budget_bytes: int,
    overhead: int,
    megabytes: float,
) -> dict[str, Any]:
    cold: list[float] = []
    warm: list[float] = []
    max_resident = max_rss = 0
    per_model: list[float] = []
    x = np.ones(8, dtype=np.float32)
    async with Client(node.target, timeout_s=120) as client:
        for _round in range(2):
            for name in names:
                table = await routing_table(node.target, timeout_s=10)
                me = next(m for m in table.members if m.node_id == table.node_id)
                was_resident = f"{name}@1" in me.models
                started = time.perf_counter()
                await client.predict(name, {"x": x}, user_id="u")
                took = time.perf_counter() - started
                (warm if was_resident else cold).append(took)
                resident = await _resident(node.target)
                rss = rss_bytes(node.proc.pid)
                max_resident = max(max_resident, resident)
                max_rss = max(max_rss, rss)
                count = max(1, round(resident / file_bytes))
                per_model.append((rss - overhead) / count / file_bytes)
    return {
        "models": len(names),
        "megabytes": megabytes,
        "file_bytes": file_bytes,
        "budget_bytes": budget_bytes,
        "overhead_bytes": overhead,
        "max_resident_bytes": max_resident,
        "max_rss_bytes": max_rss,
        "rss_per_model_over_file": statistics.median(per_model),
        "cold_s": cold,
        "warm_s": warm,
    }


def report(result: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    gib = 2**30
    table = Table(title="Resident memory under the budget (one cluster node)")
    for column in ("measure", "value"):
        table.add_column(column)
    cold, warm = result["cold_s"], result["warm_s"]
    over = result["max_rss_bytes"] - result["budget_bytes"] - result["overhead_bytes"]

    def latency(values: list[float], digits: int) -> str:
        p50, p99 = percentile(values, 0.5) * 1000, percentile(values, 0.99) * 1000
        return f"{p50:.{digits}f} / {p99:.{digits}f} ms ({len(values)} calls)"

    rows = [
        ("catalog", f"{result['models']} models of {result['file_bytes'] / 1e6:.0f} MB"),
        ("budget", f"{result['budget_bytes'] / gib:.2f} GiB"),
        ("largest resident bytes", f"{result['max_resident_bytes'] / gib:.2f} GiB"),
        ("process overhead (no model)", f"{result['overhead_bytes'] / gib:.2f} GiB"),
        ("largest RSS", f"{result['max_rss_bytes'] / gib:.2f} GiB"),
        ("largest RSS - (budget + overhead)", f"{over / 2**20:+.0f} MiB"),
        ("RSS per resident model / file size", f"{result['rss_per_model_over_file']:.2f}"),
        ("cold calls p50 / p99", latency(cold, 0)),
        ("warm calls p50 / p99", latency(warm, 1)),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--megabytes", type=float, default=200.0)
    parser.add_argument("--budget", default="2G")
    args = parser.parse_args(argv)
    report(run(args.models, args.megabytes, args.budget))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
