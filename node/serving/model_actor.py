"""The model actor: one per loaded workflow, its mailbox is its batch queue.

The actor takes requests off its bounded mailbox, closes a batch by the
``BatchPolicy`` (max size or max delay since the first request was enqueued), drops
requests whose asker gave up or whose deadline has passed, and hands the whole batch
to its device's worker thread: per request ``preprocess``, one batched ``forward``
under ``torch.inference_mode()``, per request ``postprocess``. Under a backlog the next
batch waits on the worker behind the running one (``ModelActor.run``). A bad input fails
only its own request (INVALID_ARGUMENT); a failing ``forward`` fails that batch's
requests (INTERNAL) and the actor goes on with the next batch.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shardline.node.sdk.errors import DeadlineExceeded, Internal, InvalidArgument
from shardline.node.serving.actors import Actor
from shardline.node.serving.admission import BatchCostModel
from shardline.node.serving.mailbox import Envelope, FairMailbox, Mailbox
from shardline.workflows.batching import BatchPolicy
from shardline.workflows.devices import DeviceExecutors
from shardline.workflows.loader import LoadedWorkflow
from shardline.workflows.sdk import ContextLike, InputError

log = logging.getLogger("shardline.model")


def _reason(exc: BaseException | None) -> str:
    """An exception as a client-facing reason, never empty (``NotImplementedError()`` has
    no message; a cancelled batch has no exception)."""
    if exc is None:
        return "cancelled"
    return str(exc) or type(exc).__name__


@dataclass(slots=True)
class Job:
    """One request for a model actor (what goes in an ``Envelope``)."""

    context: ContextLike
    inputs: Mapping[str, Any]
    synthetic: bool = False
    flow: str = ""  # who asks (an objective, shadows, warm-up): the model's queue is fair
    # across flows, so one objective's burst does not queue ahead of another's requests


def job_flow(job: Job) -> str:
    return job.flow


@dataclass(slots=True)
class Timing:
    queue_ms: float = 0.0
    preprocess_ms: float = 0.0
    compute_ms: float = 0.0
    postprocess_ms: float = 0.0
    batch_size: int = 0


@dataclass(slots=True)
class JobResult:
    outputs: dict[str, np.ndarray]
    timing: Timing = field(default_factory=Timing)


@dataclass(slots=True)
class _Slot:
    """Per-request state while its batch runs on the worker thread."""

    job: Job
    timing: Timing
    deadline: float | None = None  # loop.time() clock (time.monotonic)
    features: Any = None
    outcome: JobResult | BaseException | None = None


class _Batch:
    """A batch handed to the device: its requests (changeable under ``lock`` until the
    worker starts it), its completion, and when it is expected to end (loop clock)."""

    __slots__ = ("done", "ends", "envs", "lock", "slots", "started")
    done: asyncio.Future[float]  # set once handed to the device

    def __init__(self, envs: list[Envelope[Job]], slots: list[_Slot], ends: float) -> None:
        self.envs = envs
        self.slots = slots
        self.ends = ends
        self.lock = threading.Lock()
        self.started = False


BatchObserver = Callable[[str, int, float, float], None]
"""Called once per batch: (model key, batch size, queue seconds of the oldest, seconds the
batch took on the device worker)."""

PIPELINE_DEPTH = 2  # batches handed to the device at once: one running, one ready
PIPELINE_MAX_BATCH_S = 0.004  # ...while batches are this quick; slower ones go one at a time
# ...unless a full batch is already queued (a backlog: overload). Then the next batch is
# closed shortly before the running one is expected to end and queued behind it, so the
# device does not wait for a busy event loop between batches. How shortly: this much,
# plus twice how late the loop has been waking the actor lately (an average), at most
# half a batch.
PIPELINE_LEAD_S = 0.001
LAG_WEIGHT = 0.2


class ModelActor(Actor[Job]):
    """Dynamic batching around one ``LoadedWorkflow``."""

    def __init__(
        self,
        loaded: LoadedWorkflow,
        executors: DeviceExecutors,
        policy: BatchPolicy | None = None,
        observer: BatchObserver | None = None,
        cost: BatchCostModel | None = None,
    ) -> None:
        self.loaded = loaded
        self.executors = executors
        batching = loaded.manifest.batching
        self.policy = policy or BatchPolicy(batching.max_batch_size, batching.max_delay_ms)
        self.observer = observer
        # Device time per batch, fitted as batches finish; shared with whoever passes it
        # in (the node sheds by it), and kept across restarts of the actor.
        self.cost = cost if cost is not None else BatchCostModel()
        self.lag_s = 0.0
        """How late the event loop has lately woken this actor (seconds, an average)."""
        self._mailbox: Mailbox[Job] | None = None  # (set by ``run``)

    async def next_batch(self, mailbox: Mailbox[Job]) -> list[Envelope[Job]]:
        """Block for a first request, take whatever is already queued (up to the max size),
        then wait for more only while the policy keeps the batch open."""
        first = await mailbox.get()
        batch = [first]
        limit = self._limit()
        loop = asyncio.get_running_loop()
        while len(batch) < limit:
            env = mailbox.get_nowait()
            if env is None:
                wait = self.policy.wait_s(len(batch), first.enqueued_at, loop.time())
                if wait <= 0:
                    break
                env = await mailbox.get_within(wait)
                if env is None:
                    break
            batch.append(env)
        return batch

    async def run(self, mailbox: Mailbox[Job]) -> None:
        """Batches flow through a two-deep pipeline: while the device runs batch N, the
        actor closes batch N+1 and queues it on the device's worker, so the device never
        waits for the event loop between batches. For a slow model (a batch longer than a
        trip through the loop) that happens only when a full batch is queued, shortly
        before batch N is expected to end (see ``PIPELINE_LEAD_S``): below that, a batch
        closed early would hold its requests back and take none that arrive meanwhile.
        Until the device starts a queued batch, a request of a flow that has none in it
        takes the place of the last request of the flow with the most (which goes back to
        the head of its queue): queueing a batch early never costs another flow a turn.
        Results are delivered as each batch completes. A failing batch fails its own
        requests only."""
        loop = asyncio.get_running_loop()
        running: collections.deque[_Batch] = collections.deque()
        self._mailbox = mailbox
        try:
            while True:
                await self._wait_for_device(mailbox, running)
                batch = await self.next_batch(mailbox)
                now = loop.time()
                live = [env for env in batch if self._live(env, now)]
                if not live:
                    continue
                slots = [self._slot(env, now) for env in live]
                starts = max(now, running[-1].ends) if running else now
                staged = _Batch(live, slots, starts + self.cost.batch_seconds(len(slots)))
                staged.done = asyncio.ensure_future(
                    self.executors.run(self.loaded.device, functools.partial(self._process, staged))
                )
                staged.done.add_done_callback(functools.partial(self._deliver, staged))
                running.append(staged)
        finally:
            if running:  # stopping: let what the device already has finish and answer
                await asyncio.wait({b.done for b in running})

    @staticmethod
    def _live(env: Envelope[Job], now: float) -> bool:
        """Whether a request taken off the queue is still worth running (else answered)."""
        if env.done:
            return False  # the asker timed out or went away
        if env.deadline is not None and now >= env.deadline:
            env.set_exception(DeadlineExceeded("deadline passed while queued"))
            return False
        return True

    @staticmethod
    def _slot(env: Envelope[Job], now: float) -> _Slot:
        return _Slot(env.message, Timing(queue_ms=(now - env.enqueued_at) * 1000.0), env.deadline)

    async def _wait_for_device(
        self, mailbox: Mailbox[Job], running: collections.deque[_Batch]
    ) -> None:
        """Return when the next batch should be closed: the device has fewer than
        ``PIPELINE_DEPTH`` batches and, for a slow model, is free, or a full batch is
        queued and the running batch is about to end. While a queued batch waits for the
        device, arrivals of flows it lacks are swapped in (``_swap_in``)."""
        loop = asyncio.get_running_loop()
        while running:
            head = running[0]
            if head.done.done():
                running.popleft()
                continue
            if len(running) >= PIPELINE_DEPTH:
                await self._until_started(mailbox, head, running[-1])
                continue
            if self._quick():
                return
            target = head.ends - self._lead_s()
            delay = target - loop.time()
            if delay > 0:
                await asyncio.wait({head.done}, timeout=delay)
                if head.done.done():
                    continue
                late = max(0.0, loop.time() - target)
                self.lag_s += LAG_WEIGHT * (late - self.lag_s)
            if mailbox.qsize() >= self._limit():
                return  # a backlog: queue a full batch behind the running one
            await asyncio.wait({head.done})

    async def _until_started(self, mailbox: Mailbox[Job], head: _Batch, queued: _Batch) -> None:
        """Wait for ``head`` to finish; meanwhile, each arrival may swap into ``queued``."""
        self._swap_in(mailbox, queued)
        while not head.done.done() and not queued.started:
            arrival = mailbox.arrival()
            try:
                waits: set[asyncio.Future[Any]] = {head.done, arrival}
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                mailbox.forget_arrival(arrival)
            if mailbox.closed:
                break
            self._swap_in(mailbox, queued)
        if not head.done.done():
            await asyncio.wait({head.done})

    def _swap_in(self, mailbox: Mailbox[Job], staged: _Batch) -> None:
        """For each flow with requests queued and none in ``staged`` (not yet started on
        the device), its next request replaces the last one of the flow with the most in
        ``staged`` (if it has two or more), which goes back to the head of its queue."""
        waiting = [f for f, n in mailbox.flows().items() if n]
        if not waiting:
            return
        loop = asyncio.get_running_loop()
        with staged.lock:
            if staged.started:
                return
            counts: collections.Counter[Hashable] = collections.Counter(
                env.message.flow for env in staged.envs
            )
            for flow in waiting:
                if counts[flow]:
                    continue
                biggest, most = counts.most_common(1)[0]
                if most < 2:
                    return
                env = mailbox.get_from(flow)
                if env is None or not self._live(env, loop.time()):
                    continue
                i = max(k for k, e in enumerate(staged.envs) if e.message.flow == biggest)
                mailbox.put_back(staged.envs[i])
                staged.envs[i] = env
                staged.slots[i] = self._slot(env, loop.time())
                counts[biggest] -= 1
                counts[flow] += 1

    def _lead_s(self) -> float:
        """How long before the running batch's expected end the next one is closed."""
        half = self.cost.batch_seconds(self._limit()) / 2.0
        return min(half, PIPELINE_LEAD_S + 2.0 * self.lag_s)

    def _quick(self) -> bool:
        """Whether a full batch is expected to take under ``PIPELINE_MAX_BATCH_S`` (or
        nothing is known yet)."""
        return self.cost.batch_seconds(self._limit()) < PIPELINE_MAX_BATCH_S

    def _limit(self) -> int:
        """The batch size to close: the policy's, or, while several flows share the model
        (served lately: ``FairMailbox.active_flows``), less where batching does not pay
        (``BatchCostModel.batch_limit``): a request of one flow then waits behind short
        batches of another's. A flow alone gets full batches (throughput first: nobody
        else waits behind them). Published as ``cost.closing`` for the node's shedding."""
        full = self.policy.max_batch_size
        mailbox = self._mailbox
        if isinstance(mailbox, FairMailbox) and mailbox.active_flows() < 2:
            limit = full
        else:
            limit = self.cost.batch_limit(full)
        self.cost.closing = limit
        return limit

    def _deliver(self, staged: _Batch, done: asyncio.Future[float]) -> None:
        """Runs on the loop when a batch finished on the device."""
        live, slots = staged.envs, staged.slots
        if done.cancelled() or done.exception() is not None:
            exc = done.exception() if not done.cancelled() else None
            log.error("%s: batch failed: %s", self.loaded.manifest.model_key, exc)
            err = Internal(f"{self.loaded.manifest.model_key}: forward failed: {_reason(exc)}")
            for env in live:
                env.set_exception(err)
            return
        self.cost.observe(len(slots), done.result())
        if self.observer is not None:
            self.observer(
                self.loaded.manifest.model_key,
                len(slots),
                max(s.timing.queue_ms for s in slots) / 1000.0,
                done.result(),
            )
        for env, slot in zip(live, slots, strict=True):
            if isinstance(slot.outcome, BaseException):
                env.set_exception(slot.outcome)
            else:
                env.set_result(slot.outcome)

    def _process(self, staged: _Batch) -> float:
        """Runs on the device worker thread, under ``torch.inference_mode()``; returns the
        seconds the batch took there (the model's real service time, without loop delays).
        From here on the batch's requests are fixed (no more swaps)."""
        with staged.lock:
            staged.started = True
        started = time.perf_counter()
        self._run_batch(staged.slots)
        return time.perf_counter() - started

    def _run_batch(self, slots: list[_Slot]) -> None:
        wf = self.loaded.workflow
        good: list[_Slot] = []
        for slot in slots:
            if slot.deadline is not None and time.monotonic() >= slot.deadline:
                slot.outcome = DeadlineExceeded("deadline passed while queued on the device")
                continue  # shed before any work: the asker has given up
            t0 = time.perf_counter()
            try:
                slot.features = wf.preprocess(slot.job.context, slot.job.inputs)
                good.append(slot)
            except InputError as exc:
                slot.outcome = InvalidArgument(f"inputs.{exc.field}", exc.message)
            except Exception as exc:
                log.exception("%s: preprocess failed", self.loaded.manifest.model_key)
                key = self.loaded.manifest.model_key
                slot.outcome = Internal(f"{key}: preprocess: {_reason(exc)}")
            slot.timing.preprocess_ms = (time.perf_counter() - t0) * 1000.0
        if not good:
            return
        t0 = time.perf_counter()
        raws = wf.forward([s.features for s in good])
        compute_ms = (time.perf_counter() - t0) * 1000.0
        if len(raws) != len(good):
            raise RuntimeError(f"forward returned {len(raws)} results for {len(good)} requests")
        for slot, raw in zip(good, raws, strict=True):
            slot.timing.compute_ms = compute_ms
            slot.timing.batch_size = len(good)
            t0 = time.perf_counter()
            try:
                outputs = wf.postprocess(slot.job.context, slot.job.inputs, raw)
                slot.outcome = JobResult(outputs, slot.timing)
            except InputError as exc:
                slot.outcome = InvalidArgument(f"inputs.{exc.field}", exc.message)
            except Exception as exc:
                log.exception("%s: postprocess failed", self.loaded.manifest.model_key)
                key = self.loaded.manifest.model_key
                slot.outcome = Internal(f"{key}: postprocess: {_reason(exc)}")
            slot.timing.postprocess_ms = (time.perf_counter() - t0) * 1000.0
            slot.features = None
