"""The model actor: batches by the policy, fails only bad requests, honours deadlines."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from shardline.node.sdk.errors import DeadlineExceeded, Internal, InvalidArgument
from shardline.node.serving.actors import ActorRef, ActorSystem, AskTimeoutError
from shardline.node.serving.mailbox import Envelope
from shardline.node.serving.model_actor import Job, JobResult, ModelActor
from shardline.workflows.batching import BatchPolicy
from shardline.workflows.devices import DeviceExecutors
from shardline.workflows.loader import LoadedWorkflow
from shardline.workflows.manifest import WorkflowManifest
from shardline.workflows.sdk import InputError, StaticContext, Workflow

MANIFEST = {
    "name": "doubler",
    "version": "1",
    "entrypoint": "workflow.py:Doubler",
    "weights": {"path": "w.safetensors", "sha256": "0" * 64},
    "batching": {"max_batch_size": 8, "max_delay_ms": 1000.0, "queue_capacity": 64},
    "inputs": [{"name": "x", "dtype": "float32", "shape": []}],
    "outputs": [{"name": "y", "dtype": "float32", "shape": []}],
}


class Doubler(Workflow):
    """Records batch sizes; ``gate`` (when set) blocks forward until released."""

    def __init__(self, manifest: WorkflowManifest) -> None:
        super().__init__(manifest, {}, Path("."), torch.device("cpu"))
        self.batches: list[int] = []
        self.gate: threading.Event | None = None
        self.in_forward = threading.Event()
        self.fail_forward = False
        self.delay_s = 0.0

    def preprocess(self, context: Any, inputs: Any) -> float:
        x = float(inputs["x"])
        if x < 0:
            raise InputError("x", "must be >= 0")
        return x

    def forward(self, batch: list[Any]) -> list[Any]:
        assert torch.is_inference_mode_enabled()
        assert threading.current_thread() is not threading.main_thread()
        self.in_forward.set()
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.delay_s)  # a slow device
        if self.fail_forward:
            raise RuntimeError("boom")
        self.batches.append(len(batch))
        return (torch.tensor(batch) * 2).tolist()

    def postprocess(self, context: Any, inputs: Any, raw: Any) -> dict[str, np.ndarray]:
        return {"y": np.float32(raw)}


@pytest.fixture
async def setup() -> AsyncIterator[tuple[ActorSystem, Doubler, DeviceExecutors]]:
    system = ActorSystem("test")
    executors = DeviceExecutors()
    wf = Doubler(WorkflowManifest.from_dict(MANIFEST))
    yield system, wf, executors
    if wf.gate is not None:
        wf.gate.set()
    await system.shutdown(timeout_s=5)
    executors.shutdown()


async def spawn(
    system: ActorSystem, wf: Doubler, ex: DeviceExecutors, policy: BatchPolicy
) -> ActorRef[Job]:
    loaded = LoadedWorkflow(wf.manifest, wf, Path("."), torch.device("cpu"))
    return await system.spawn(
        "model",
        lambda: ModelActor(loaded, ex, policy),
        mailbox_size=wf.manifest.batching.queue_capacity,
    )


def job(x: float) -> Job:
    return Job(StaticContext(user_id="u"), {"x": np.float32(x)})


async def test_batch_closes_at_max_size_without_waiting_for_the_delay(setup: Any) -> None:
    system, wf, ex = setup
    ref = await spawn(system, wf, ex, BatchPolicy(4, 1000.0))
    results = await asyncio.wait_for(
        asyncio.gather(*(ref.ask(job(i)) for i in range(8))), timeout=10
    )
    assert [float(r.outputs["y"]) for r in results] == [2.0 * i for i in range(8)]
    assert wf.batches == [4, 4]
    assert all(r.timing.batch_size == 4 for r in results)
    assert all(r.timing.queue_ms < 500 for r in results)  # nobody sat out the 1 s delay


async def test_backlog_is_batched_while_the_device_is_busy(setup: Any) -> None:
    system, wf, ex = setup
    wf.gate = threading.Event()
    ref = await spawn(system, wf, ex, BatchPolicy(8, 0.0))
    first = asyncio.ensure_future(ref.ask(job(1)))
    await asyncio.get_running_loop().run_in_executor(None, wf.in_forward.wait, 10)
    rest = [asyncio.ensure_future(ref.ask(job(i))) for i in range(5)]
    await asyncio.sleep(0)  # let the asks enqueue
    wf.gate.set()
    await asyncio.gather(first, *rest)
    assert wf.batches == [1, 5]


async def test_next_batch_is_queued_on_the_device_while_one_runs(setup: Any) -> None:
    system, wf, ex = setup
    wf.gate = threading.Event()
    ref = await spawn(system, wf, ex, BatchPolicy(2, 0.0))
    first = [asyncio.ensure_future(ref.ask(job(i))) for i in range(2)]
    await asyncio.get_running_loop().run_in_executor(None, wf.in_forward.wait, 10)
    second = [asyncio.ensure_future(ref.ask(job(i))) for i in range(2, 4)]
    third = [asyncio.ensure_future(ref.ask(job(i))) for i in range(4, 6)]
    for _ in range(5):
        await asyncio.sleep(0)  # let the actor close the next batches
    device = ex._executors["cpu"]  # the single worker of the CPU device
    assert device._work_queue.qsize() == 1  # batch 2 already waits on the device
    wf.gate.set()
    await asyncio.gather(*first, *second, *third)
    assert wf.batches == [2, 2, 2]


async def test_a_slow_model_takes_its_next_batch_when_the_device_frees_up(setup: Any) -> None:
    """Once a batch is known to take longer than a loop trip (here 10 ms), requests that
    arrive while one runs are not closed into a batch of their own at once: they all go
    in the next batch, taken when the device is free (pipelined, they would be [1, 2])."""
    system, wf, ex = setup
    wf.delay_s = 0.01
    ref = await spawn(system, wf, ex, BatchPolicy(8, 0.0))
    await ref.ask(job(0))  # the actor learns how long a batch takes
    wf.gate = threading.Event()
    wf.in_forward.clear()
    running = asyncio.ensure_future(ref.ask(job(1)))
    await asyncio.get_running_loop().run_in_executor(None, wf.in_forward.wait, 10)
    trickle = []
    for i in range(3):
        trickle.append(asyncio.ensure_future(ref.ask(job(i))))
        for _ in range(5):
            await asyncio.sleep(0)  # the actor takes each as it arrives
    wf.gate.set()
    await asyncio.gather(running, *trickle)
    assert wf.batches == [1, 1, 3]


async def test_bad_input_fails_only_its_own_request(setup: Any) -> None:
    system, wf, ex = setup
    ref = await spawn(system, wf, ex, BatchPolicy(3, 1000.0))
    good1, bad, good2 = await asyncio.gather(
        ref.ask(job(1)), ref.ask(job(-1)), ref.ask(job(3)), return_exceptions=True
    )
    assert isinstance(good1, JobResult) and isinstance(good2, JobResult)
    assert isinstance(bad, InvalidArgument)
    assert str(bad) == "inputs.x: must be >= 0"
    assert wf.batches == [2]


async def test_expired_requests_are_shed_before_compute(setup: Any) -> None:
    system, wf, ex = setup
    wf.gate = threading.Event()
    ref = await spawn(system, wf, ex, BatchPolicy(8, 0.0))
    blocker = asyncio.ensure_future(ref.ask(job(1)))
    await asyncio.get_running_loop().run_in_executor(None, wf.in_forward.wait, 10)
    with pytest.raises(AskTimeoutError):
        await ref.ask(job(2), timeout_s=0.01)  # expires while the device is busy
    late = asyncio.ensure_future(ref.ask(job(3), timeout_s=10))
    wf.gate.set()
    await blocker
    assert float((await late).outputs["y"]) == 6.0
    assert wf.batches == [1, 1]  # the expired request never reached forward


async def test_deadline_passed_in_queue_answers_deadline_exceeded(setup: Any) -> None:
    system, wf, ex = setup
    ref = await spawn(system, wf, ex, BatchPolicy(8, 0.0))
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[object] = loop.create_future()
    env = Envelope(job(5), enqueued_at=loop.time(), deadline=loop.time() - 1, reply=reply)
    ref._cell.mailbox.put_nowait(env)  # an ask whose deadline is already gone
    with pytest.raises(DeadlineExceeded):
        await reply


async def test_forward_failure_fails_its_batch_and_the_actor_goes_on(setup: Any) -> None:
    system, wf, ex = setup
    ref = await spawn(system, wf, ex, BatchPolicy(1, 0.0))
    wf.fail_forward = True
    with pytest.raises(Internal, match="forward failed: boom"):
        await ref.ask(job(1))
    wf.fail_forward = False
    assert float((await ref.ask(job(2), timeout_s=10)).outputs["y"]) == 4.0
    assert ref.restarts == 0
