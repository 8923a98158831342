"""The model actor under a backlog (overload): a slow model's next full batch waits on the
device behind the running one, so the device does not idle while the event loop is busy."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import torch

from shardline.node.serving.actors import ActorSystem
from shardline.node.serving.model_actor import PIPELINE_DEPTH, ModelActor
from shardline.workflows.batching import BatchPolicy
from shardline.workflows.devices import DeviceExecutors
from shardline.workflows.loader import LoadedWorkflow
from tests.unit.node.test_model_actor import MANIFEST, Doubler, WorkflowManifest, job


async def test_a_slow_models_full_backlog_is_queued_behind_the_running_batch() -> None:
    """A batch known to take 50 ms runs (gated, so it overruns its estimate); 16 requests
    queue behind it (two full batches of 4). The actor closes the next full batch before
    the running one ends and hands it to the device's worker, which starts it without a
    trip through the event loop; the device holds at most ``PIPELINE_DEPTH`` batches."""
    system = ActorSystem("test")
    ex = DeviceExecutors()
    wf = Doubler(WorkflowManifest.from_dict(MANIFEST))
    try:
        loaded = LoadedWorkflow(wf.manifest, wf, Path("."), torch.device("cpu"))
        actor = ModelActor(loaded, ex, BatchPolicy(4, 0.0))
        ref = await system.spawn("model", lambda: actor, mailbox_size=64)
        wf.delay_s = 0.05
        await ref.ask(job(0))  # the actor learns that a batch takes ~50 ms: not quick
        assert not actor._quick()
        wf.gate = threading.Event()
        wf.in_forward.clear()
        loop = asyncio.get_running_loop()
        running = asyncio.ensure_future(ref.ask(job(1)))
        await loop.run_in_executor(None, wf.in_forward.wait, 10)
        backlog = [asyncio.ensure_future(ref.ask(job(i))) for i in range(16)]
        device = ex._executors["cpu"]  # the single worker of the CPU device
        deadline = loop.time() + 10
        # No event tells when the worker's queue grows: poll it, bounded.
        while device._work_queue.qsize() < PIPELINE_DEPTH - 1 and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)  # past the running batch's expected end
        assert device._work_queue.qsize() == PIPELINE_DEPTH - 1  # a full batch waits
        await asyncio.sleep(0.1)
        assert device._work_queue.qsize() == PIPELINE_DEPTH - 1  # and no more than that
        wf.gate.set()
        await asyncio.wait_for(asyncio.gather(running, *backlog), 20)
        assert wf.batches == [1, 1, 4, 4, 4, 4]
    finally:
        if wf.gate is not None:
            wf.gate.set()
        await system.shutdown(timeout_s=5)
        ex.shutdown()


async def test_a_slow_model_below_a_full_batch_still_waits_for_the_device() -> None:
    """Fewer queued than a batch: nothing is closed early (later arrivals may join)."""
    system = ActorSystem("test")
    ex = DeviceExecutors()
    wf = Doubler(WorkflowManifest.from_dict(MANIFEST))
    try:
        loaded = LoadedWorkflow(wf.manifest, wf, Path("."), torch.device("cpu"))
        ref = await system.spawn(
            "model", lambda: ModelActor(loaded, ex, BatchPolicy(4, 0.0)), mailbox_size=64
        )
        wf.delay_s = 0.02
        await ref.ask(job(0))
        wf.gate = threading.Event()
        wf.in_forward.clear()
        loop = asyncio.get_running_loop()
        running = asyncio.ensure_future(ref.ask(job(1)))
        await loop.run_in_executor(None, wf.in_forward.wait, 10)
        few: list[Any] = [asyncio.ensure_future(ref.ask(job(i))) for i in range(3)]
        await asyncio.sleep(0.1)  # well past the running batch's expected end
        assert ex._executors["cpu"]._work_queue.qsize() == 0
        few.append(asyncio.ensure_future(ref.ask(job(3))))
        await asyncio.sleep(0)
        wf.gate.set()
        await asyncio.wait_for(asyncio.gather(running, *few), 20)
        assert wf.batches[1:] == [1, 4]
    finally:
        if wf.gate is not None:
            wf.gate.set()
        await system.shutdown(timeout_s=5)
        ex.shutdown()
