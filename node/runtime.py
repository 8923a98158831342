"""The serving core of one node: objectives -> model version -> model actor -> answer.

``NodeRuntime`` owns the actor system, the model actors (one per loaded workflow), the
objective configs and the metrics. ``predict`` takes the *raw* request bytes (the
transport does no decoding), resolves the objective with ``router.rules``, validates the
inputs against the chosen model's manifest, asks the model actor within the remaining
deadline and encodes the answer with its provenance. Shadow copies run in the
background, bounded, and never touch the answer.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from node import tensors
from node._proto.shardline.v1 import inference_pb2 as pb
from node.actors import (
    ActorRef,
    ActorStoppedError,
    ActorSystem,
    AskTimeoutError,
    MailboxFullError,
    RestartPolicy,
)
from node.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    Overloaded,
    RequestError,
    Unavailable,
)
from node.inputs import InputDecoder
from node.metrics import NodeMetrics
from node.model_actor import Job, JobResult, ModelActor
from router.rules import ObjectiveConfig, OverrideNotAllowed, RequestContext, evaluate
from workflows.devices import DeviceExecutors
from workflows.loader import LoadedWorkflow, load_package
from workflows.manifest import WorkflowManifest

log = logging.getLogger("shardline.node")


@dataclass(frozen=True)
class NodeConfig:
    node_id: str = "node-1"
    host: str = "127.0.0.1"
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

    @property
    def manifest(self) -> WorkflowManifest:
        return self.loaded.manifest


class NodeRuntime:
    """Everything one node serves, independent of the transport."""

    def __init__(self, config: NodeConfig, metrics: NodeMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or NodeMetrics()
        self.system = ActorSystem(f"node:{config.node_id}")
        self.executors = DeviceExecutors(cpu_threads=config.cpu_threads)
        self.models: dict[str, LoadedModel] = {}
        self.objectives: Mapping[str, ObjectiveConfig] = {}
        self._shadow_tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------

    async def load_workflow(self, package_dir: Path) -> LoadedModel:
        """Load one workflow package and start its model actor (replaces nothing)."""
        loaded = await asyncio.to_thread(load_package, package_dir)
        key = loaded.manifest.model_key
        if key in self.models:
            raise ValueError(
                f"{key} is already loaded (from {self.models[key].loaded.package_dir})"
            )
        ref: ActorRef[Job] = await self.system.spawn(
            f"model:{key}",
            lambda: ModelActor(loaded, self.executors, observer=self.metrics.observe_batch),
            mailbox_size=loaded.manifest.batching.queue_capacity,
            restart=RestartPolicy(),
        )
        model = LoadedModel(loaded, ref, InputDecoder(loaded.manifest))
        self.models[key] = model
        log.info("loaded %s on %s from %s", key, loaded.device, package_dir)
        return model

    def set_objectives(self, objectives: Mapping[str, ObjectiveConfig]) -> None:
        """Swap the objective configs atomically (one reference assignment)."""
        self.objectives = dict(objectives)

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

    async def stop(self, timeout_s: float = 10.0) -> None:
        await self.system.shutdown(timeout_s=timeout_s)
        for task in list(self._shadow_tasks):
            task.cancel()
        self.executors.shutdown()

    # -- request path ----------------------------------------------------------------------

    async def predict(self, raw: bytes, timeout_s: float | None) -> bytes:
        """Serve one encoded ``PredictRequest``; returns the encoded ``PredictResponse``."""
        started = time.perf_counter()
        request = pb.PredictRequest()
        try:
            request.ParseFromString(raw)
        except DecodeError:
            raise InvalidArgument("request", "not a valid shardline.v1.PredictRequest") from None
        objective = request.objective
        labels = [objective or "-", "-", "-"]
        try:
            response = await self._predict(request, timeout_s, labels, started)
        except RequestError as exc:
            self.metrics.requests.labels(*labels, exc.status.name).inc()
            raise
        self.metrics.requests.labels(*labels, "OK").inc()
        self.metrics.request_seconds.labels(objective).observe(time.perf_counter() - started)
        return response

    async def _predict(
        self, request: Any, timeout_s: float | None, labels: list[str], started: float
    ) -> bytes:
        if not request.objective:
            raise InvalidArgument("objective", "required")
        config = self.objectives.get(request.objective)
        if config is None:
            known = ", ".join(sorted(self.objectives)) or "none"
            raise NotFound(f"unknown objective {request.objective!r}; this node serves: {known}")
        c = request.context
        context = RequestContext(
            user_id=c.user_id,
            country=c.country,
            device=c.device,
            surface=c.surface,
            attributes=dict(c.attributes),
        )
        try:
            decision = evaluate(config, context, request.model_override or None)
        except OverrideNotAllowed as exc:
            raise InvalidArgument("model_override", str(exc)) from None
        labels[1], labels[2] = decision.model_key, decision.cell
        model = self.models.get(decision.model_key)
        if model is None:
            raise Unavailable(
                f"model {decision.model_key} (objective {request.objective}) "
                f"is not loaded on node {self.config.node_id}"
            )
        inputs = model.inputs.decode(request.inputs)
        for key in decision.shadows:
            self._start_shadow(key, context, request.inputs)
        timeout = self.config.default_deadline_s if timeout_s is None else timeout_s
        result = await self._ask(model, Job(context, inputs, request.synthetic), timeout)
        return self._encode(request, decision.model_key, decision.cell, result, started)

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
        self, request: Any, model_key: str, cell: str, result: JobResult, started: float
    ) -> bytes:
        response = pb.PredictResponse()
        for name, value in result.outputs.items():
            tensors.encode_into(response.outputs.add(), name, value)
        p = response.provenance
        p.model_key = model_key
        p.cell = cell
        p.node_id = self.config.node_id
        p.hops = 0
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

    def _start_shadow(self, key: str, context: RequestContext, wire_inputs: Any) -> None:
        counter = self.metrics.shadow_requests
        model = self.models.get(key)
        if model is None:
            counter.labels(key, "not_loaded").inc()
            return
        if len(self._shadow_tasks) >= self.config.max_shadow_in_flight:
            counter.labels(key, "dropped").inc()
            return
        task = asyncio.create_task(self._run_shadow(model, context, wire_inputs))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _run_shadow(self, model: LoadedModel, context: RequestContext, wire: Any) -> None:
        key = model.manifest.model_key
        outcome = "ok"
        try:
            inputs = model.inputs.decode(wire)
            await self._ask(model, Job(context, inputs, True), self.config.shadow_timeout_s)
        except Overloaded:
            outcome = "dropped"
        except RequestError as exc:
            outcome = "error"
            log.info("shadow %s failed: %s", key, exc)
        except Exception:
            outcome = "error"
            log.exception("shadow %s failed", key)
        self.metrics.shadow_requests.labels(key, outcome).inc()

    async def drain_shadows(self) -> None:
        """Wait for the shadow copies now in flight (tests and shutdown)."""
        while self._shadow_tasks:
            await asyncio.gather(*list(self._shadow_tasks), return_exceptions=True)
