"""The model actor under a backlog (overload): a slow model's next full batch waits on the
device behind the running one, so the device does not idle while the event loop is busy."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shardline.node.serving.actors import ActorSystem
from shardline.node.serving.admission import BatchCostModel
from shardline.node.serving.mailbox import Envelope, FairMailbox
from shardline.node.serving.model_actor import PIPELINE_DEPTH, Job, ModelActor, job_flow
from shardline.workflows.batching import BatchPolicy
from shardline.workflows.devices import DeviceExecutors
from shardline.workflows.loader import LoadedWorkflow
from shardline.workflows.manifest import WorkflowManifest
from shardline.workflows.sdk import StaticContext
from tests.unit.node.test_model_actor import MANIFEST, Doubler, job


class Recorder(Doubler):
    """Records each batch's inputs."""

    def __init__(self, manifest: WorkflowManifest) -> None:
        super().__init__(manifest)
        self.seen: list[list[float]] = []

    def forward(self, batch: list[Any]) -> list[Any]:
        out = super().forward(batch)
        self.seen.append(list(batch))
        return out


def flow_job(x: float, flow: str) -> Job:
    return Job(StaticContext(user_id="u"), {"x": np.float32(x)}, flow=flow)


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


async def test_a_flow_missing_from_the_queued_batch_swaps_in_before_it_starts() -> None:
    """Objective a floods a slow model (batches of 4); its next full batch is queued on
    the device while one runs. Then b asks: before the device starts the queued batch,
    b's request takes the place of a's last one there (which goes back to the head of
    a's queue), so b waits for the running batch only, not for one more of a's."""
    system = ActorSystem("test")
    ex = DeviceExecutors()
    wf = Recorder(WorkflowManifest.from_dict(MANIFEST))
    try:
        loaded = LoadedWorkflow(wf.manifest, wf, Path("."), torch.device("cpu"))
        ref = await system.spawn(
            "model",
            lambda: ModelActor(loaded, ex, BatchPolicy(4, 0.0)),
            mailbox_size=64,
            fair_by=job_flow,
        )
        wf.delay_s = 0.05
        await ref.ask(flow_job(0, "a"))  # a batch takes ~50 ms: not quick
        wf.gate = threading.Event()
        wf.in_forward.clear()
        loop = asyncio.get_running_loop()
        running = asyncio.ensure_future(ref.ask(flow_job(1, "a")))
        await loop.run_in_executor(None, wf.in_forward.wait, 10)
        flood = [asyncio.ensure_future(ref.ask(flow_job(100 + i, "a"))) for i in range(8)]
        device = ex._executors["cpu"]
        deadline = loop.time() + 10
        # No event tells when the worker's queue grows: poll it, bounded.
        while device._work_queue.qsize() < 1 and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        assert device._work_queue.qsize() == 1  # a's next full batch waits on the device
        steady = asyncio.ensure_future(ref.ask(flow_job(999, "b")))
        await asyncio.sleep(0.05)  # let the actor see b's request (nothing to wait on)
        wf.gate.set()
        await asyncio.wait_for(asyncio.gather(running, steady, *flood), 20)
        assert wf.seen[2:] == [[100, 101, 102, 999], [103, 104, 105, 106], [107]]
    finally:
        if wf.gate is not None:
            wf.gate.set()
        await system.shutdown(timeout_s=5)
        ex.shutdown()


async def test_fair_mailbox_takes_a_flow_out_of_turn_and_puts_back_at_its_head() -> None:
    mb: FairMailbox[tuple[str, int]] = FairMailbox(4, lambda m: m[0], name="m")
    loop = asyncio.get_running_loop()
    for m in (("a", 1), ("a", 2), ("b", 1), ("a", 3)):
        mb.put_nowait(Envelope(m, enqueued_at=loop.time()))
    assert mb.flows() == {"a": 3, "b": 1}
    b = mb.get_from("b")
    assert b is not None and b.message == ("b", 1)
    assert mb.get_from("b") is None
    a1 = mb.get_nowait()
    assert a1 is not None and a1.message == ("a", 1)
    mb.put_nowait(Envelope(("c", 1), enqueued_at=loop.time()))
    mb.put_back(a1)  # full (4 queued) and still accepted: it was counted when put
    assert mb.qsize() == 4
    assert [mb.get_nowait().message for _ in range(4)] == [  # type: ignore[union-attr]
        ("a", 1), ("c", 1), ("a", 2), ("a", 3),
    ]  # fmt: skip
    arrival = mb.arrival()
    assert not arrival.done()
    mb.put_nowait(Envelope(("b", 2), enqueued_at=loop.time()))
    assert arrival.done()


class PerItem(Doubler):
    """A model whose batch time is all per request (``per_item_s`` each): batching it
    saves nothing."""

    per_item_s = 0.02

    def forward(self, batch: list[Any]) -> list[Any]:
        time.sleep(self.per_item_s * len(batch))
        return super().forward(batch)


async def _fit_on_varied_sizes(ref: Any, make: Any) -> None:
    """Bursts of 1..4 requests: batches of varied sizes for the cost model to fit on."""
    for round_ in range(12):
        await asyncio.gather(*(ref.ask(make(i)) for i in range(1 + round_ % 4)))


async def test_a_model_that_batching_does_not_pay_for_runs_small_batches_under_a_backlog() -> None:
    """Once the actor has seen batches of different sizes take time in proportion to
    their size, it closes batches of one even with a backlog (a request then waits behind
    single requests, not whole batches); a model whose time is a fixed cost per batch
    keeps full batches (the test above)."""
    system = ActorSystem("test")
    ex = DeviceExecutors()
    wf = PerItem(WorkflowManifest.from_dict(MANIFEST))
    try:
        loaded = LoadedWorkflow(wf.manifest, wf, Path("."), torch.device("cpu"))
        actor = ModelActor(loaded, ex, BatchPolicy(4, 0.0))
        ref = await system.spawn("model", lambda: actor, mailbox_size=256)
        await _fit_on_varied_sizes(ref, job)
        assert actor.cost.samples >= BatchCostModel.BATCH_LIMIT_SAMPLES
        assert actor._limit() == 1
        wf.batches.clear()
        await asyncio.wait_for(asyncio.gather(*(ref.ask(job(i)) for i in range(24))), 20)
        assert wf.batches == [1] * 24
    finally:
        await system.shutdown(timeout_s=5)
        ex.shutdown()


async def test_short_batches_while_flows_share_the_model_full_ones_for_a_flow_alone() -> None:
    """With the node's fair mailbox: one flow alone with a backlog gets full batches (no one
    else waits behind them); while two flows are served, the same per-request model runs
    batches of one, so neither waits behind a long batch of the other."""
    system = ActorSystem("test")
    ex = DeviceExecutors()
    wf = PerItem(WorkflowManifest.from_dict(MANIFEST))
    try:
        loaded = LoadedWorkflow(wf.manifest, wf, Path("."), torch.device("cpu"))
        actor = ModelActor(loaded, ex, BatchPolicy(4, 0.0))
        ref = await system.spawn("model", lambda: actor, mailbox_size=256, fair_by=job_flow)
        await _fit_on_varied_sizes(ref, lambda i: flow_job(i, "a"))  # one flow
        assert actor.cost.batch_limit(4) == 1
        wf.batches.clear()
        await asyncio.wait_for(asyncio.gather(*(ref.ask(flow_job(i, "a")) for i in range(16))), 20)
        assert wf.batches == [4, 4, 4, 4]  # "a" alone
        wf.batches.clear()
        both = [flow_job(i, "ab"[i % 2]) for i in range(16)]
        await asyncio.wait_for(asyncio.gather(*(ref.ask(j) for j in both)), 20)
        # "b" counts as sharing once it has been served: after the first batch, ones
        first = wf.batches[0]
        assert wf.batches[1:] == [1] * (16 - first)
    finally:
        await system.shutdown(timeout_s=5)
        ex.shutdown()
