"""The executor: the models loaded on this node, and the work a request routed here gets.

``Executor`` owns the actor system, the device worker threads and one model actor per
loaded workflow (``load_workflow`` / ``unload_workflow``). ``execute`` serves a request
whose model key and cell were already decided: it decodes the full ``PredictRequest`` and
bounds its identifiers (a forwarded one too: ``Peer.Forward`` takes any bytes), refuses it
before queueing when the queue ahead cannot be served in time (``_shed_if_late``), decodes
the inputs against the model's manifest, asks the model actor within the remaining
deadline, logs the prediction when sampled, and encodes the answer with its provenance.
``run_shadow`` does the same for a shadow copy, without an answer.

It knows nothing of routing or of the objectives' rules: it is told what to run. Of the
objectives it knows only the catalog's names (``request_head.objective_label`` bounds
metric labels and queue flows by them) and the prediction log's per-objective sample rates.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from google.protobuf.message import DecodeError

from shardline.membership.loaded import LoadedSet
from shardline.node._proto.shardline.v1 import inference_pb2 as pb
from shardline.node._proto_oip import grpc_service_pb2 as v2
from shardline.node.observability.metrics import NodeMetrics
from shardline.node.observability.predlog import (
    JsonlFileSink,
    PredictionLog,
    PredictionLogConfig,
    PredictionRecord,
)
from shardline.node.sdk import tensors
from shardline.node.sdk.errors import DeadlineExceeded, InvalidArgument, Overloaded, Unavailable
from shardline.node.serving.actors import ActorRef, ActorSystem, AskTimeoutError, RestartPolicy
from shardline.node.serving.admission import BatchCostModel, should_shed
from shardline.node.serving.inputs import InputDecoder, check_head
from shardline.node.serving.mailbox import ActorStoppedError, MailboxFullError
from shardline.node.serving.model_actor import Job, JobResult, ModelActor, job_flow
from shardline.node.serving.node_config import NodeConfig
from shardline.node.serving.oip_tensors import encode_response
from shardline.node.serving.request_head import context_of, objective_label
from shardline.workflows.devices import DeviceExecutors
from shardline.workflows.loader import LoadedWorkflow, load_package
from shardline.workflows.manifest import WorkflowManifest
from shardline.workflows.sdk import ContextLike, StaticContext

log = logging.getLogger("shardline.node")

QUEUE_EWMA_WEIGHT = 0.2
SHADOW_FLOW = "~shadow"  # shadow copies of every objective share one turn at a model's queue
WARMUP_FLOW = "~warmup"


@dataclass(frozen=True)
class LoadedModel:
    loaded: LoadedWorkflow
    ref: ActorRef[Job]
    inputs: InputDecoder
    cost: BatchCostModel  # batch time on the device, fitted by the actor; shedding reads it

    @property
    def manifest(self) -> WorkflowManifest:
        return self.loaded.manifest


class Executor:
    """The model actors of one node and the work of a request routed to them."""

    def __init__(self, config: NodeConfig, metrics: NodeMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.system = ActorSystem(f"node:{config.node_id}")
        self.devices = DeviceExecutors(cpu_threads=config.torch_cpu_threads)
        self.models: dict[str, LoadedModel] = {}
        self.in_flight = 0
        """Requests executing on this node's model actors (what gossip reports as load)."""
        self.queue_ms: dict[str, float] = {}
        """Model key -> recent queue time of its batches (ms, exponential average)."""
        self.busy: dict[str, int] = {}
        """Model key -> its requests in flight here (a busy model is never evicted)."""
        self.loaded_version = 0
        """Bumped whenever ``models`` or ``loading`` changes (the loaded set's version)."""
        self.loading: set[str] = set()
        self.settled = False
        """Placement has nothing more to load at once (what is not resident stays lazy)."""
        self.loads_total = 0
        self.evictions_total = 0
        self._watchers: list[Callable[[], None]] = []
        self.objective_names: frozenset[str] = frozenset()
        """The catalog's objective names: the only values an objective label may take."""
        self.predlog: PredictionLog | None = None
        self._log_rates: dict[str, float] = {}
        metrics.watch_queues(
            lambda: [(k, m.ref.mailbox_depth) for k, m in list(self.models.items())]
        )
        metrics.watch_prediction_log(lambda: self.predlog)

    # -- models ----------------------------------------------------------------------------

    async def load_workflow(
        self,
        package_dir: Path,
        *,
        expect_key: str | None = None,
        warm: bool = False,
        device: str | None = None,
    ) -> LoadedModel:
        """Load one workflow package and start its model actor (replaces nothing).

        With ``warm``, one real batch (the workflow's example request) runs through the
        actor before the model is offered to requests. The time it took (load and warm-up)
        is observed in ``shardline_model_load_seconds``. ``device`` (``cuda:1``...): the
        device a manifest with ``device = "auto"`` or ``"cuda"`` runs on (None: the first
        GPU, else the CPU); a manifest's ``"cpu"`` stays on the CPU.
        """
        began = time.perf_counter()
        where = torch.device(device) if device is not None else None
        try:
            loaded = await asyncio.to_thread(load_package, package_dir, where)
        except Exception:
            self.metrics.loads.labels(expect_key or str(package_dir.name), "error").inc()
            raise
        key = loaded.manifest.model_key
        if expect_key is not None and key != expect_key:
            raise ValueError(f"{package_dir} holds {key}, not {expect_key}")
        if key in self.models:
            raise ValueError(
                f"{key} is already loaded (from {self.models[key].loaded.package_dir})"
            )
        cost = BatchCostModel()
        ref: ActorRef[Job] = await self.system.spawn(
            f"model:{key}",
            lambda: ModelActor(loaded, self.devices, observer=self._observe_batch, cost=cost),
            mailbox_size=loaded.manifest.batching.queue_capacity,
            restart=RestartPolicy(),
            fair_by=job_flow,
        )
        model = LoadedModel(loaded, ref, InputDecoder(loaded.manifest), cost)
        if warm:
            try:
                fields, inputs = loaded.workflow.example_request()
                job = Job(StaticContext.from_fields(fields), inputs, True, WARMUP_FLOW)
                await self._ask(model, job, self.config.default_deadline_s)
            except BaseException:
                await self.system.stop(ref, drain=False)
                self.metrics.loads.labels(key, "error").inc()
                raise
        self.models[key] = model
        self.loads_total += 1
        self.changed()
        self.metrics.loads.labels(key, "ok").inc()
        self.metrics.load_seconds.labels(key).observe(time.perf_counter() - began)
        log.info("loaded %s on %s from %s", key, loaded.device, package_dir)
        return model

    async def unload_workflow(self, key: str, timeout_s: float = 30.0) -> None:
        """Stop offering ``key``, let its queued and running requests finish, stop its actor."""
        model = self.models.pop(key, None)
        if model is None:
            return
        self.queue_ms.pop(key, None)
        self.changed()
        await self.system.stop(model.ref, drain=True, timeout_s=timeout_s)
        self.metrics.unloads.labels(key).inc()
        log.info("unloaded %s", key)

    def footprint(self, key: str) -> int:
        """Bytes a resident model takes (measured at load; 0 when not resident)."""
        model = self.models.get(key)
        return model.loaded.footprint_bytes if model is not None else 0

    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever the loaded set changes (keep it quick)."""
        self._watchers.append(callback)

    def changed(self) -> None:
        """The loaded set changed: a new version, and the watchers are told."""
        self.loaded_version += 1
        for callback in list(self._watchers):
            try:
                callback()
            except Exception:
                log.exception("loaded-set watcher failed")

    def loaded_set(self, node_id: str, budget_bytes: int = 0) -> LoadedSet:
        """What this node holds, as published in etcd (``shardline.membership.loaded``)."""
        return LoadedSet(
            node_id=node_id,
            version=self.loaded_version,
            models={key: m.loaded.footprint_bytes for key, m in self.models.items()},
            loading=frozenset(self.loading),
            loads=self.loads_total,
            evictions=self.evictions_total,
            budget_bytes=budget_bytes,
            settled=self.settled,
        )

    # -- objectives' names and log rates -----------------------------------------------------

    def set_objectives(self, names: Iterable[str], log_rates: Mapping[str, float]) -> None:
        """The catalog's objective names (labels) and per-objective prediction log rates."""
        self.objective_names = frozenset(names)
        self._log_rates = dict(log_rates)
        if self.predlog is not None:
            self.predlog.config = replace(self.predlog.config, rates=self._log_rates)

    # -- lifecycle -------------------------------------------------------------------------

    async def start_prediction_log(self) -> None:
        if self.config.predlog_dir is None:
            return
        sink = JsonlFileSink(Path(self.config.predlog_dir), prefix=self.config.node_id)
        self.predlog = PredictionLog(
            PredictionLogConfig(default_rate=self.config.predlog_rate, rates=self._log_rates),
            sink,
        )
        await self.predlog.start()

    async def stop_actors(self, timeout_s: float = 10.0) -> None:
        """Flush the prediction log and stop the model actors (their queues drained)."""
        if self.predlog is not None:
            await self.predlog.stop()
        await self.system.shutdown(timeout_s=timeout_s)

    def close(self) -> None:
        """Stop the device worker threads (after ``stop_actors``)."""
        self.devices.shutdown()

    # -- a request routed here -------------------------------------------------------------

    async def execute(
        self,
        raw: bytes,
        model_key: str,
        cell: str,
        *,
        hops: int,
        timeout_s: float,
        started: float,
        context: ContextLike | None = None,
    ) -> bytes:
        """Run a request on the local actor of ``model_key``; the encoded ``PredictResponse``.

        ``context`` is the one the ingress read from the head (None for a forwarded request:
        read from the request here); ``hops`` and ``started`` go into the provenance."""
        request, result, oip = await self._run(raw, model_key, cell, timeout_s, started, context)
        if oip is not None:
            return self._encode_oip(request, oip, model_key, cell, result, started, hops)
        return self._encode(request, model_key, cell, result, started, hops)

    async def run_shadow(self, raw: bytes, model_key: str, context: ContextLike) -> None:
        """Run a shadow copy on the local actor of ``model_key`` within the shadow timeout.

        No answer to encode: nobody reads a shadow's (its outcome is counted by the caller,
        and its prediction logged when sampled)."""
        started = time.perf_counter()
        await self._run(raw, model_key, "shadow", self.config.shadow_timeout_s, started, context)

    async def _run(
        self,
        raw: bytes,
        model_key: str,
        cell: str,
        timeout_s: float,
        started: float,
        context: ContextLike | None,
    ) -> tuple[Any, JobResult, tuple[Any, bool] | None]:
        """Decode, queue on the model's actor and await the result (logged if sampled);
        for an Open Inference Protocol request, also its ``ModelInferRequest`` and whether
        its inputs came as a batch of one."""
        model = self.models.get(model_key)
        if model is None:
            raise Unavailable(f"model {model_key} is not loaded on node {self.config.node_id}")
        request = pb.PredictRequest()
        try:
            request.ParseFromString(raw)
        except DecodeError:
            raise InvalidArgument("request", "not a valid shardline.v1.PredictRequest") from None
        if context is None:  # forwarded: Peer.Forward takes any bytes (the ingress checked ours)
            check_head(request, self.config.head_limits)
        shadow = cell == "shadow"
        objective = objective_label(request.objective, self.objective_names)
        flow = SHADOW_FLOW if shadow else objective
        self._shed_if_late(model, objective, flow, timeout_s)
        oip: tuple[Any, bool] | None = None
        if request.oip_request:
            oip_request = v2.ModelInferRequest()
            try:
                oip_request.ParseFromString(request.oip_request)
            except DecodeError:
                raise InvalidArgument(
                    "request", "not a valid inference.ModelInferRequest"
                ) from None
            inputs, batched = model.inputs.decode_oip(oip_request)
            oip = (oip_request, batched)
        else:
            inputs = model.inputs.decode(request.inputs)
        job = Job(context or context_of(request), inputs, request.synthetic or shadow, flow)
        self.in_flight += 1
        busy = self.busy
        busy[model_key] = busy.get(model_key, 0) + 1
        try:
            result = await self._ask(model, job, timeout_s)
        finally:
            self.in_flight -= 1
            left = busy[model_key] - 1
            if left:
                busy[model_key] = left
            else:
                del busy[model_key]
        if self.predlog is not None and self.predlog.sampled(request.objective, request.request_id):
            self._log_prediction(request, job, model_key, cell, result, started)
        return request, result, oip

    def _shed_if_late(
        self, model: LoadedModel, objective: str, flow: str, timeout_s: float
    ) -> None:
        """Refuse before queueing when the queue ahead cannot be served in time: the
        expected wait (the full batches queued ahead of this flow's next request) is over the
        queue budget, or that wait plus the request's own batch (the leftover requests ahead
        and itself, as the batch will really close) would overrun the request's deadline.
        The estimate never counts work the request will not wait for, so a request that can
        meet its deadline is not shed. The queue is fair across flows, so another
        objective's backlog counts only as far as it would be served before this request."""
        key = model.manifest.model_key
        cost = model.cost
        if not cost.samples:
            return
        if model.ref.mailbox_depth == 0 and timeout_s > 1.0:
            return  # nothing queued ahead and time to spare: the common, unloaded case
        depth = model.ref.depth_ahead(flow)
        max_batch = cost.closing or model.manifest.batching.max_batch_size
        wait = cost.wait_seconds(depth, max_batch)
        own = cost.own_batch_seconds(depth, max_batch)
        if should_shed(timeout_s, wait, own):
            self.metrics.shed.labels(objective, "deadline").inc()
            raise DeadlineExceeded(
                f"{key}: {depth} requests queued (~{wait * 1000:.0f} ms) cannot be served "
                f"within the {timeout_s * 1000:.0f} ms left; shed before doing the work"
            )
        if wait > self.config.max_queue_wait_s and depth >= max_batch:
            self.metrics.shed.labels(objective, "queue").inc()
            raise Overloaded(
                f"{key}: overloaded ({depth} requests queued, ~{wait * 1000:.0f} ms of work); "
                "retry later"
            )

    def _observe_batch(self, key: str, size: int, queue_s: float, compute_s: float) -> None:
        self.metrics.observe_batch(key, size, queue_s, compute_s)
        # Recent queue time per model (what hot copies react to): an exponential average.
        last = self.queue_ms.get(key)
        ms = queue_s * 1000.0
        self.queue_ms[key] = ms if last is None else last + QUEUE_EWMA_WEIGHT * (ms - last)

    def _log_prediction(
        self, request: Any, job: Job, key: str, cell: str, result: JobResult, started: float
    ) -> None:
        assert self.predlog is not None
        t = result.timing
        try:
            record = PredictionRecord(
                request_id=request.request_id,
                node_id=self.config.node_id,
                timestamp_s=time.time(),
                objective=request.objective,
                model_key=key,
                cell=cell,
                user_id=job.context.user_id,
                country=job.context.country,
                device=job.context.device,
                surface=job.context.surface,
                attributes=dict(request.context.attributes),
                outputs=result.outputs,
                timings_ms={
                    "queue": t.queue_ms, "preprocess": t.preprocess_ms, "compute": t.compute_ms,
                    "postprocess": t.postprocess_ms, "batch_size": float(t.batch_size),
                    "total": (time.perf_counter() - started) * 1000.0,
                },
                synthetic=request.synthetic,
                shadow=cell == "shadow",
            )  # fmt: skip
        except (TypeError, ValueError) as exc:
            log.debug("prediction not logged: %s", exc)
            return
        self.predlog.offer(record)

    async def _ask(self, model: LoadedModel, job: Job, timeout_s: float) -> JobResult:
        key = model.manifest.model_key
        if timeout_s <= 0:
            raise DeadlineExceeded(f"{key}: deadline already passed")
        try:
            result = await model.ref.ask(job, timeout_s=timeout_s)
        except MailboxFullError:
            cap = model.manifest.batching.queue_capacity
            raise Overloaded(f"{key}: model queue is full ({cap} requests); retry later") from None
        except AskTimeoutError:
            raise DeadlineExceeded(f"{key}: no answer within the deadline") from None
        except ActorStoppedError as exc:
            raise Unavailable(f"{key}: model actor is not running: {exc}") from None
        assert isinstance(result, JobResult)
        return result

    def _encode(
        self,
        request: Any,
        model_key: str,
        cell: str,
        result: JobResult,
        started: float,
        hops: int,
    ) -> bytes:
        response = pb.PredictResponse()
        for name, value in result.outputs.items():
            tensors.encode_into(response.outputs.add(), name, value)
        p = response.provenance
        p.model_key = model_key
        p.cell = cell
        p.node_id = self.config.node_id
        p.hops = hops
        p.request_id = request.request_id
        t, timing = p.timing, result.timing
        t.queue_ms = timing.queue_ms
        t.preprocess_ms = timing.preprocess_ms
        t.compute_ms = timing.compute_ms
        t.postprocess_ms = timing.postprocess_ms
        t.batch_size = timing.batch_size
        t.total_ms = (time.perf_counter() - started) * 1000.0
        return response.SerializeToString()  # type: ignore[no-any-return]

    def _encode_oip(
        self,
        request: Any,
        oip: tuple[Any, bool],
        model_key: str,
        cell: str,
        result: JobResult,
        started: float,
        hops: int,
    ) -> bytes:
        """The answer of an Open Inference Protocol request: a ``ModelInferResponse``."""
        timing = result.timing
        oip_request, batched = oip
        provenance: dict[str, str | int | float] = {
            "model_key": model_key,
            "cell": cell,
            "node_id": self.config.node_id,
            "hops": hops,
            "request_id": request.request_id,
            "queue_ms": timing.queue_ms,
            "preprocess_ms": timing.preprocess_ms,
            "compute_ms": timing.compute_ms,
            "postprocess_ms": timing.postprocess_ms,
            "batch_size": timing.batch_size,
            "total_ms": (time.perf_counter() - started) * 1000.0,
        }
        return encode_response(oip_request, batched, result.outputs, provenance)
