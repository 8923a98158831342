"""A node's per-device model memory (``Residence`` with device budgets), end to end on the
CPU: real packages, a real executor and model actors, the CPU standing in for one GPU
(``device_budgets={"cpu": ...}``; a GPU node gets ``cuda:0``... from ``NodeConfig``). The
choice between several devices is ``router.residency.choose_device`` (unit-tested there)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardline.node.cluster.catalog_ops import workflow_doc
from shardline.node.cluster.residence import Residence
from shardline.node.serving.runtime import NodeConfig, NodeRuntime
from shardline.router.residency import NoRoom
from tests.scale_packages import make_tiny_packages, tiny_name


async def test_models_on_a_device_are_evicted_under_its_own_budget(tmp_path: Path) -> None:
    on_device = make_tiny_packages(tmp_path / "gpu", 3, kb=64, device="auto")
    on_cpu = make_tiny_packages(tmp_path / "cpu", 1, kb=64, prefix="cpuonly")
    docs = {f"{p.name}@1": workflow_doc(p)[1] for p in [*on_device, *on_cpu]}
    paths = {f"{p.name}@1": p for p in [*on_device, *on_cpu]}
    size = docs[f"{tiny_name(0)}@1"]["footprint_bytes"]
    runtime = NodeRuntime(NodeConfig(node_id="n1"))
    pinned: set[str] = set()
    residence = Residence(
        runtime.executor,
        1 << 30,  # host memory is plenty: the device's budget is the one that binds
        100,
        path_of=paths.__getitem__,
        doc_of=docs.get,
        pinned=lambda: pinned,
        device_budgets={"cpu": 2 * size + size // 2},  # room for two
    )
    a, b, c = (f"{tiny_name(i)}@1" for i in range(3))
    cpu_only = f"{tiny_name(0, 'cpuonly')}@1"
    try:
        await residence.load(a)
        await residence.load(b)
        residence.touch(a)  # b is now the least recently used on the device
        await residence.load(c)
        await residence.load(cpu_only)  # manifest device = "cpu": no device memory
        assert set(runtime.executor.models) == {a, c, cpu_only}
        assert residence.device_of == {a: "cpu", c: "cpu"}
        device = residence.devices["cpu"]
        assert set(device.resident) == {a, c} and device.evictions == 1
        assert set(residence.lru.resident) == {a, c, cpu_only}  # b left the host LRU too
        gauge = runtime.executor.metrics.device_resident_bytes.labels("cpu")
        assert gauge._value.get() == device.resident_bytes == 2 * size
        # Every model on the device pinned: a new one has no room there, with the numbers.
        pinned.update({a, c})
        with pytest.raises(NoRoom) as refused:
            await residence.load(b)
        assert "no device can hold model" in str(refused.value)
        assert not refused.value.permanent
        assert b not in runtime.executor.models
        await residence.unload(a)  # no longer owned: frees the device (not an eviction)
        assert a not in device and device.evictions == 1
        await residence.load(b)
        assert residence.device_of == {b: "cpu", c: "cpu"}
        # A model loaded outside ``load`` (a preload) is counted on its device when adopted.
        await residence.unload(c)
        await runtime.executor.load_workflow(paths[c], expect_key=c, device="cpu")
        residence.adopt(c)
        assert residence.device_of == {b: "cpu", c: "cpu"} and c in device
    finally:
        await runtime.stop()


@pytest.mark.gpu
async def test_a_gpu_node_places_models_on_its_gpus_under_their_budgets(tmp_path: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    budgets = NodeConfig(node_id="n1").device_budgets()
    assert set(budgets) == {f"cuda:{i}" for i in range(torch.cuda.device_count())}
    total = torch.cuda.get_device_properties(0).total_memory
    assert budgets["cuda:0"] == int(total * 0.9)
    packages = make_tiny_packages(tmp_path, 2, kb=64, device="auto")
    docs = {f"{p.name}@1": workflow_doc(p)[1] for p in packages}
    paths = {f"{p.name}@1": p for p in packages}
    runtime = NodeRuntime(NodeConfig(node_id="n1"))
    residence = Residence(
        runtime.executor, 1 << 30, 100, path_of=paths.__getitem__, doc_of=docs.get,
        pinned=frozenset, device_budgets=budgets,
    )  # fmt: skip
    try:
        for key in docs:
            await residence.load(key)
            loaded = runtime.executor.models[key].loaded
            assert str(loaded.device) == residence.device_of[key]
            assert loaded.device.type == "cuda"
        used = sum(lru.resident_bytes for lru in residence.devices.values())
        assert used == sum(d["footprint_bytes"] for d in docs.values())
    finally:
        await runtime.stop()
