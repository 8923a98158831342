"""The serving core of one node: objectives -> model version -> model actor -> answer.

``NodeRuntime`` owns the actor system, the model actors (one per loaded workflow), the
objective configs and the metrics. ``predict`` takes the *raw* request bytes (the
transport does no decoding), resolves the objective with ``router.rules``, validates the
inputs against the chosen model's manifest, asks the model actor within the remaining
deadline and encodes the answer with its provenance. Shadow copies run in the
background, bounded, and never touch the answer. The request's identifiers are bounded
before any work (``node.inputs.check_head``), and a request without an id gets one.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import itertools
import logging
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from google.protobuf.message import DecodeError

from node import tensors
from node._proto.shardline.v1 import inference_pb2 as pb
from node.actors import ActorRef, ActorSystem, AskTimeoutError, RestartPolicy
from node.admission import (
    AdmissionController,
    BatchCostModel,
    ObjectiveLimits,
    per_node,
    should_shed,
)
from node.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    Overloaded,
    RequestError,
    Unavailable,
    clip,
)
from node.inputs import InputDecoder, check_head
from node.mailbox import ActorStoppedError, MailboxFullError
from node.metrics import NodeMetrics
from node.model_actor import Job, JobResult, ModelActor, job_flow
from node.predlog import JsonlFileSink, PredictionLog, PredictionLogConfig, PredictionRecord
from node.tls import TlsFiles
from router.decision import Decision
from router.objectives import ObjectiveConfig
from router.rules import OverrideNotAllowed, RequestContext, evaluate
from workflows.devices import DeviceExecutors
from workflows.loader import LoadedWorkflow, load_package
from workflows.manifest import WorkflowManifest
from workflows.sdk import StaticContext

log = logging.getLogger("shardline.node")

UNKNOWN_OBJECTIVE = "_unknown"
"""The one label value requests for objectives outside the catalog are counted under."""
_REQUEST_ID_TAG = bytes([(5 << 3) | 2])  # PredictRequest.request_id: field 5, length-delimited


_ID_PREFIX = uuid.uuid4().hex[:16]  # this process's, random: ids are unique across nodes
_ID_COUNTER = itertools.count(1)


def with_request_id(raw: bytes) -> tuple[str, bytes]:
    """A fresh request id (32 hex digits: a random per-process prefix and a counter), and
    ``raw`` (an encoded ``PredictRequest`` without one) with it set: a field appended to a
    protobuf message's bytes sets it, so the rest of the request travels untouched."""
    request_id = f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"
    return request_id, b"".join(
        (raw, _REQUEST_ID_TAG, bytes((len(request_id),)), request_id.encode())
    )


class BoundedSet:
    """Remembers at most ``capacity`` recent items (the oldest forgotten first)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, None] = OrderedDict()

    def add(self, item: str) -> bool:
        """Remember ``item``; True when it was not remembered already."""
        items = self._items
        if item in items:
            items.move_to_end(item)
            return False
        items[item] = None
        if len(items) > self.capacity:
            items.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class NodeConfig:
    node_id: str = "node-1"
    host: str = "127.0.0.1"
    advertise_host: str | None = None
    """The address peers and clients dial (default: ``host``; needed when binding 0.0.0.0)."""
    port: int = 7400
    max_message_bytes: int = 4 * 1024 * 1024
    default_deadline_s: float = 10.0
    max_shadow_in_flight: int = 256
    shadow_timeout_s: float = 5.0
    cpu_threads: int | None = None
    metrics_port: int | None = None
    # The event loop thread holds the GIL most of the time; torch worker threads need it
    # back between their small ops. Python's 5 ms default made batches wait on the GIL
    # (bench/serving.py: 1 ms took the node from ~3.8k to ~5.3k req/s in process).
    gil_switch_interval_s: float = 0.001
    # Queue budget: refuse (RESOURCE_EXHAUSTED) rather than queue more than this much work.
    max_queue_wait_s: float = 0.25
    # Prediction log: JSON Lines under this directory (None: off), default sample rate.
    predlog_dir: str | None = None
    predlog_rate: float = 0.01
    # TLS: the node's certificate, key and the cluster CA (None: plaintext).
    tls: TlsFiles | None = None

    def __post_init__(self) -> None:
        if not self.node_id:
            raise ValueError("node_id must not be empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.max_message_bytes < 1024:
            raise ValueError("max_message_bytes must be at least 1024")
        if self.default_deadline_s <= 0:
            raise ValueError("default_deadline_s must be positive")
        if not 0 < self.gil_switch_interval_s <= 0.1:
            raise ValueError("gil_switch_interval_s must be in (0, 0.1]")


@dataclass(frozen=True)
class LoadedModel:
    loaded: LoadedWorkflow
    ref: ActorRef[Job]
    inputs: InputDecoder
    cost: BatchCostModel  # batch time on the device, fitted by the actor; shedding reads it

    @property
    def manifest(self) -> WorkflowManifest:
        return self.loaded.manifest


SHADOW_FLOW = "~shadow"  # shadow copies of every objective share one turn at a model's queue
WARMUP_FLOW = "~warmup"


def context_of(message: Any) -> RequestContext:
    """The rules' context from a request (or request head) message."""
    c = message.context
    return RequestContext(
        user_id=c.user_id,
        country=c.country,
        device=c.device,
        surface=c.surface,
        attributes=dict(c.attributes),
    )


class Router(Protocol):
    """Where a decided request runs: here (standalone) or on an owner (cluster).

    Returns the answer and its path: ``served`` (here), ``forwarded`` (by the first owner
    tried elsewhere) or ``failover`` (by the next owner after a retryable failure).
    """

    async def route(
        self,
        raw: bytes,
        context: RequestContext,
        decision: Decision,
        timeout_s: float,
        started: float,
    ) -> tuple[bytes, str]: ...


class NodeRuntime:
    """Everything one node serves, independent of the transport."""

    def __init__(self, config: NodeConfig, metrics: NodeMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or NodeMetrics()
        self.system = ActorSystem(f"node:{config.node_id}")
        self.executors = DeviceExecutors(cpu_threads=config.cpu_threads)
        self.models: dict[str, LoadedModel] = {}
        self.objectives: Mapping[str, ObjectiveConfig] = {}
        self._shadow_tasks: set[asyncio.Future[None]] = set()
        self.router: Router = LocalRouter(self)
        self.starting = False
        """Cluster mode, until the first catalog snapshot is applied: UNAVAILABLE, not NOT_FOUND."""
        self.in_flight = 0
        """Requests executing on this node's model actors (what gossip reports as load)."""
        self.catalog_manifests: Mapping[str, WorkflowManifest] = {}
        """Cluster mode: every model key's manifest from the catalog (loaded here or not)."""
        self.admission = AdmissionController({}, 0.0)
        self.active_nodes = 1
        self.predlog: PredictionLog | None = None
        self._missing_user_clients = BoundedSet(1024)
        """Clients already warned about requests without a user id (bounded)."""
        self.metrics.watch_queues(
            lambda: [(k, m.ref.mailbox_depth) for k, m in list(self.models.items())]
        )
        self.metrics.watch_prediction_log(lambda: self.predlog)

    # -- lifecycle -------------------------------------------------------------------------

    async def load_workflow(
        self, package_dir: Path, *, expect_key: str | None = None, warm: bool = False
    ) -> LoadedModel:
        """Load one workflow package and start its model actor (replaces nothing).

        With ``warm``, one real batch (the workflow's example request) runs through the
        actor before the model is offered to requests. The time it took (load and warm-up)
        is observed in ``shardline_model_load_seconds``.
        """
        began = time.perf_counter()
        try:
            loaded = await asyncio.to_thread(load_package, package_dir)
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
            lambda: ModelActor(loaded, self.executors, observer=self._observe_batch, cost=cost),
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
        self.metrics.loads.labels(key, "ok").inc()
        self.metrics.load_seconds.labels(key).observe(time.perf_counter() - began)
        log.info("loaded %s on %s from %s", key, loaded.device, package_dir)
        return model

    async def unload_workflow(self, key: str, timeout_s: float = 30.0) -> None:
        """Stop offering ``key``, let its queued and running requests finish, stop its actor."""
        model = self.models.pop(key, None)
        if model is None:
            return
        await self.system.stop(model.ref, drain=True, timeout_s=timeout_s)
        self.metrics.unloads.labels(key).inc()
        log.info("unloaded %s", key)

    def manifest_of(self, model_key: str) -> WorkflowManifest | None:
        model = self.models.get(model_key)
        return model.manifest if model is not None else self.catalog_manifests.get(model_key)

    def missing_models(self) -> dict[str, list[str]]:
        """Objective -> model keys it references that this node has not loaded."""
        missing: dict[str, list[str]] = {}
        for name, cfg in self.objectives.items():
            keys = sorted(k for k in cfg.model_keys() if k not in self.models)
            if keys:
                missing[name] = keys
        return missing

    def tune_process(self) -> None:
        """Once the models are loaded: freeze the GC (everything loaded so far leaves its
        reach: shorter pauses, lower p99) and shorten the GIL switch interval."""
        gc.collect()
        gc.freeze()
        sys.setswitchinterval(self.config.gil_switch_interval_s)

    async def start_prediction_log(self) -> None:
        if self.config.predlog_dir is None:
            return
        sink = JsonlFileSink(Path(self.config.predlog_dir), prefix=self.config.node_id)
        self.predlog = PredictionLog(
            PredictionLogConfig(default_rate=self.config.predlog_rate), sink
        )
        self.set_objectives(self.objectives)  # per-objective rates
        await self.predlog.start()

    async def stop(self, timeout_s: float = 10.0) -> None:
        if self.predlog is not None:
            await self.predlog.stop()
        await self.system.shutdown(timeout_s=timeout_s)
        for task in list(self._shadow_tasks):
            task.cancel()
        self.executors.shutdown()

    # -- request path ----------------------------------------------------------------------

    async def predict(self, raw: bytes, timeout_s: float | None, client: str = "") -> bytes:
        """Serve one encoded ``PredictRequest``; returns the encoded ``PredictResponse``.

        Only the routing fields are decoded here (``PredictRequestHead``) and their
        identifiers bounded before anything else; the router then runs the request
        locally or forwards the original bytes to an owner. A request without a
        ``request_id`` gets one here, appended to those bytes, so the owner, the answer's
        provenance and the prediction log all carry the same id. ``client`` (the peer's
        address) names the caller in log lines.
        """
        started = time.perf_counter()
        head = pb.PredictRequestHead()
        labels = [UNKNOWN_OBJECTIVE, "-", "-", "OK", "-"]
        admitted = False
        objective = ""
        try:
            try:
                head.ParseFromString(raw)
            except DecodeError:
                raise InvalidArgument(
                    "request", "not a valid shardline.v1.PredictRequest"
                ) from None
            check_head(head)
            objective = head.objective
            if objective in self.objectives:  # label values come only from the catalog
                labels[0] = objective
            rejection = self.admission.admit(objective, time.monotonic())
            if rejection is not None:  # first thing: before rules, before any input decoding
                self.metrics.shed.labels(labels[0], rejection.reason).inc()
                labels[3] = "RESOURCE_EXHAUSTED"
                raise Overloaded(self._shed_message(objective, rejection.reason))
            admitted = True
            if not head.request_id:
                head.request_id, raw = with_request_id(raw)
            context, decision = self.resolve(head)
            if not context.user_id and self._splits_by_user(objective):
                self._note_missing_user_id(objective, client)
            labels[1], labels[2] = decision.model_key, decision.cell
            timeout = self.config.default_deadline_s if timeout_s is None else timeout_s
            response, labels[4] = await self.router.route(raw, context, decision, timeout, started)
        except RequestError as exc:
            labels[3] = exc.status.name
            raise
        finally:
            if admitted:
                self.admission.release(objective)
            elapsed = time.perf_counter() - started if admitted else None
            self.metrics.request_done(tuple(labels), elapsed)
        return response

    def objective_label(self, name: str) -> str:
        """``name`` when the catalog has it, else ``UNKNOWN_OBJECTIVE``: what metrics and
        queue flows are keyed by, so no client can create a series or a flow."""
        return name if name in self.objectives else UNKNOWN_OBJECTIVE

    def _splits_by_user(self, objective: str) -> bool:
        """Whether the objective's answer depends on the user id (experiments, a canary or
        shadows bucket users by it: without one every request falls in the same bucket)."""
        c = self.objectives[objective]
        return bool(c.experiments or c.canary is not None or c.shadows)

    def _note_missing_user_id(self, objective: str, client: str) -> None:
        self.metrics.missing_user_id.labels(objective).inc()
        if self._missing_user_clients.add(client):
            log.warning(
                "client %s sent requests to objective %s without context.user_id: its "
                "experiments, canary and shadows bucket users by that id, so all of them "
                "fall in one bucket (counted in shardline_requests_without_user_id_total; "
                "logged once per client)",
                clip(client or "?", 128),
                objective,
            )

    @functools.cache  # noqa: B019 - a handful of (objective, reason) pairs per runtime
    def _shed_message(self, objective: str, reason: str) -> str:
        """Constant per objective and reason, so HTTP/2 header compression reuses it."""
        return f"objective {objective!r} is over its {reason} limit on this node; retry later"

    def set_objectives(self, objectives: Mapping[str, ObjectiveConfig]) -> None:
        """Swap the objective configs atomically; limits and log rates follow them."""
        self.objectives = dict(objectives)
        self._apply_limits()
        if self.predlog is not None:
            rates = {
                n: c.prediction_log_rate
                for n, c in self.objectives.items()
                if c.prediction_log_rate is not None
            }
            self.predlog.config = replace(self.predlog.config, rates=rates)

    def set_active_nodes(self, count: int) -> None:
        """Cluster-wide limits are divided across this many active nodes."""
        if count != self.active_nodes:
            self.active_nodes = max(1, count)
            self._apply_limits()

    def _default_burst(self, config: ObjectiveConfig) -> float | None:
        """Without an explicit burst, an objective may burst a queue budget's worth of its
        rate (not a whole second's), so its first second of a flood cannot fill the queue
        other objectives share."""
        rate = config.limits.rate_per_s if config.limits else None
        if rate is None:
            return None
        return max(1.0, rate * self.config.max_queue_wait_s)

    def _apply_limits(self) -> None:
        limits = {
            name: per_node(
                ObjectiveLimits(
                    c.limits.max_concurrency,
                    c.limits.rate_per_s,
                    c.limits.burst if c.limits.burst is not None else self._default_burst(c),
                ),
                self.active_nodes,
            )
            for name, c in self.objectives.items()
            if c.limits is not None
        }
        self.admission.set_limits(limits, time.monotonic())

    def resolve(self, head: Any) -> tuple[RequestContext, Decision]:
        """Objective config + request context -> model key, cell and shadows (pure rules)."""
        if not head.objective:
            raise InvalidArgument("objective", "required")
        config = self.objectives.get(head.objective)
        if config is None and self.starting:
            raise Unavailable("node is starting (no catalog yet); retry on another node")
        if config is None:
            known = ", ".join(sorted(self.objectives)[:32]) or "none"
            raise NotFound(f"unknown objective {clip(head.objective)}; this node serves: {known}")
        context = context_of(head)
        try:
            decision = evaluate(config, context, head.model_override or None)
        except OverrideNotAllowed as exc:
            raise InvalidArgument("model_override", str(exc)) from None  # bounded by check_head
        return context, decision

    async def execute(
        self,
        raw: bytes,
        model_key: str,
        cell: str,
        *,
        hops: int,
        timeout_s: float,
        started: float,
        context: RequestContext | None = None,
    ) -> bytes:
        """Run a request on the local actor of ``model_key`` (decided by the ingress)."""
        request, result = await self._run(raw, model_key, cell, timeout_s, started, context)
        return self._encode(request, model_key, cell, result, started, hops)

    async def _run(
        self,
        raw: bytes,
        model_key: str,
        cell: str,
        timeout_s: float,
        started: float,
        context: RequestContext | None,
    ) -> tuple[Any, JobResult]:
        """Decode, queue on the model's actor and await the result (logged if sampled)."""
        model = self.models.get(model_key)
        if model is None:
            raise Unavailable(f"model {model_key} is not loaded on node {self.config.node_id}")
        request = pb.PredictRequest()
        try:
            request.ParseFromString(raw)
        except DecodeError:
            raise InvalidArgument("request", "not a valid shardline.v1.PredictRequest") from None
        check_head(request)  # a forwarded request too: Peer.Forward takes any bytes
        shadow = cell == "shadow"
        objective = self.objective_label(request.objective)
        flow = SHADOW_FLOW if shadow else objective
        self._shed_if_late(model, objective, flow, timeout_s)
        inputs = model.inputs.decode(request.inputs)
        job = Job(context or context_of(request), inputs, request.synthetic or shadow, flow)
        self.in_flight += 1
        try:
            result = await self._ask(model, job, timeout_s)
        finally:
            self.in_flight -= 1
        if self.predlog is not None and self.predlog.sampled(request.objective, request.request_id):
            self._log_prediction(request, job, model_key, cell, result, started)
        return request, result

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
        max_batch = model.manifest.batching.max_batch_size
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

    # -- shadows ---------------------------------------------------------------------------

    def start_local_shadow(self, key: str, context: RequestContext, raw: bytes) -> None:
        """Run a shadow copy on the local actor of ``key``: bounded, never awaited."""
        counter = self.metrics.shadow_requests
        if key not in self.models:
            counter.labels(key, "not_loaded").inc()
            return
        if len(self._shadow_tasks) >= self.config.max_shadow_in_flight:
            counter.labels(key, "dropped").inc()
            return
        self.track_shadow(key, self._local_shadow(key, context, raw))

    def track_shadow(self, key: str, work: Awaitable[object]) -> None:
        """Run ``work`` in the background and count its outcome under ``key``."""
        task = asyncio.ensure_future(self._count_shadow(key, work))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    @property
    def shadows_in_flight(self) -> int:
        return len(self._shadow_tasks)

    async def _local_shadow(self, key: str, context: RequestContext, raw: bytes) -> None:
        started = time.perf_counter()
        # No answer to encode: nobody reads a shadow's (its outcome is counted, and its
        # prediction logged when sampled).
        await self._run(raw, key, "shadow", self.config.shadow_timeout_s, started, context)

    async def _count_shadow(self, key: str, work: Awaitable[object]) -> None:
        outcome = "ok"
        try:
            await work
        except Overloaded:
            outcome = "dropped"
        except RequestError as exc:
            outcome = "error"
            log.info("shadow %s failed: %s", key, exc)
        except Exception as exc:
            outcome = "error"
            log.info("shadow %s failed: %s", key, exc)
        self.metrics.shadow_requests.labels(key, outcome).inc()

    async def drain_shadows(self) -> None:
        """Wait for the shadow copies now in flight (tests and shutdown)."""
        while self._shadow_tasks:
            await asyncio.gather(*list(self._shadow_tasks), return_exceptions=True)


class LocalRouter:
    """Standalone: every model is local; shadows run on the local actors."""

    def __init__(self, runtime: NodeRuntime) -> None:
        self.runtime = runtime

    async def route(
        self,
        raw: bytes,
        context: RequestContext,
        decision: Decision,
        timeout_s: float,
        started: float,
    ) -> tuple[bytes, str]:
        for key in decision.shadows:
            self.runtime.start_local_shadow(key, context, raw)
        answer = await self.runtime.execute(
            raw,
            decision.model_key,
            decision.cell,
            hops=0,
            timeout_s=timeout_s,
            started=started,
            context=context,
        )
        return answer, "served"
