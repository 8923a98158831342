"""The ingress: the first hop of a request on the node a client called.

``Ingress.predict`` takes the *raw* request bytes (the transport does no decoding) and
decides, without touching the inputs: it decodes only the routing fields
(``PredictRequestHead``) and bounds their identifiers
(``shardline.node.serving.inputs.check_head``), admits the request under its objective's limits
(``shardline.node.serving.admission``: a refusal is RESOURCE_EXHAUSTED before any other work), gives
a request without an id one, and resolves the objective with ``shardline.router.rules.evaluate``
into a ``Decision`` (model key, cell, shadows). Then it hands the decided request to its router
(``shardline.node.serving.local_router`` standalone,
``shardline.node.cluster.routing.ClusterRouter`` in a cluster), which runs it on the executor here
or forwards it to a peer, and counts the outcome.

The path goes one way: ingress → router → executor here or a peer there → answer. The
router never calls back into the ingress; nothing here knows where a model runs.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Protocol

from google.protobuf.message import DecodeError

from shardline.node._proto.shardline.v1 import inference_pb2 as pb
from shardline.node.observability.metrics import NodeMetrics
from shardline.node.sdk.errors import (
    InvalidArgument,
    NotFound,
    Overloaded,
    RequestError,
    Unavailable,
    clip,
)
from shardline.node.serving.admission import AdmissionController, ObjectiveLimits, per_node
from shardline.node.serving.inputs import check_head
from shardline.node.serving.node_config import NodeConfig
from shardline.node.serving.request_head import UNKNOWN_OBJECTIVE, context_of
from shardline.router.decision import Decision
from shardline.router.objectives import ObjectiveConfig
from shardline.router.rules import OverrideNotAllowed, RequestContext, evaluate

log = logging.getLogger("shardline.node")

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


class Ingress:
    """Decode the head, admit, decide; hand the decided request to the router."""

    def __init__(self, config: NodeConfig, metrics: NodeMetrics, router: Router) -> None:
        self.config = config
        self.metrics = metrics
        self.router = router
        self.objectives: Mapping[str, ObjectiveConfig] = {}
        self.starting = False
        """Cluster mode, until the first catalog snapshot is applied: UNAVAILABLE, not NOT_FOUND."""
        self.admission = AdmissionController({}, 0.0)
        self.active_nodes = 1
        self._missing_user_clients = BoundedSet(1024)
        """Clients already warned about requests without a user id (bounded)."""

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
            check_head(head, self.config.head_limits)
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

    @functools.cache  # noqa: B019 - a handful of (objective, reason) pairs per ingress
    def _shed_message(self, objective: str, reason: str) -> str:
        """Constant per objective and reason, so HTTP/2 header compression reuses it."""
        return f"objective {objective!r} is over its {reason} limit on this node; retry later"

    # -- objectives and limits -------------------------------------------------------------

    def set_objectives(self, objectives: Mapping[str, ObjectiveConfig]) -> None:
        """Swap the objective configs atomically; the admission limits follow them."""
        self.objectives = dict(objectives)
        self._apply_limits()

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
