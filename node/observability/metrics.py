"""Prometheus metrics of one node, and its HTTP endpoint: /metrics, /healthz, /readyz
(and whatever else the node mounts there: the REST V2 protocol under /v2).

Each node has its own registry (several nodes fit in one process for tests). Names
follow Prometheus conventions (``shardline_…_total``, ``…_seconds``); the standard
``process_*`` (CPU, RSS, open fds), ``python_info`` and ``python_gc_*`` series are there
too. Label values come only from the catalog (objective names, model keys) and from
fixed sets (codes, reasons): a request for an unknown objective is counted under
``objective="_unknown"``, so no client can create a series. ``/healthz`` answers
200 while the process serves; ``/readyz`` answers 200 only when the node's readiness
check passes (cluster: registered, active and its owned workflows warm; standalone:
models loaded), else 503 with the reason — what a load balancer or Kubernetes probes.

The HTTP server runs one thread per connection, at most ``MAX_HTTP_THREADS`` at once (more
wait in the listen backlog), and drops a connection that sends nothing for
``HTTP_IDLE_TIMEOUT_S``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from socketserver import ThreadingMixIn
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
SIZE_BUCKETS = (64, 128, 256, 512, 1024, 1400, 4096, 65536)
# Control-plane propagation (target p99 <= 100 ms): finer around 100 ms than the request ones.
CONTROL_BUCKETS_S = (
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    1.0,
    2.0,
    5.0,
)
LOAD_BUCKETS_S = (0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)

Readiness = Callable[[], tuple[bool, str]]
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

MAX_HTTP_THREADS = 256  # connections served at once on the HTTP port
HTTP_BACKLOG = 128  # connections waiting to be accepted
HTTP_IDLE_TIMEOUT_S = 30.0  # a connection silent this long (reading or writing) is dropped


class _QueueDepths(Collector):
    """Model actors' mailbox depths, read at scrape time."""

    def __init__(self, depths: Callable[[], Iterable[tuple[str, int]]]) -> None:
        self.depths = depths

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "shardline_model_queue_depth", "Requests waiting in a model actor's queue.",
            labels=["model_key"],
        )  # fmt: skip
        for key, depth in self.depths():
            family.add_metric([key], depth)
        yield family


class PredlogCounts(Protocol):
    """What the prediction log counts (``shardline.node.observability.predlog.PredictionLog``)."""

    @property
    def written_total(self) -> int: ...
    @property
    def dropped_total(self) -> int: ...
    @property
    def sink_errors_total(self) -> int: ...
    @property
    def pending(self) -> int: ...


class _PredictionLog(Collector):
    """The prediction log's counters, read at scrape time (absent while the log is off)."""

    def __init__(self, log: Callable[[], PredlogCounts | None]) -> None:
        self.log = log

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        log = self.log()
        if log is None:
            return
        records = CounterMetricFamily(
            "shardline_prediction_log_records",
            "Sampled predictions by outcome: written to the sink, or dropped (buffer full, "
            "sink failed or too slow at shutdown).",
            labels=["outcome"],
        )
        records.add_metric(["written"], log.written_total)
        records.add_metric(["dropped"], log.dropped_total)
        yield records
        yield CounterMetricFamily(
            "shardline_prediction_log_sink_errors",
            "Sink writes that failed (each drops its whole batch).",
            value=log.sink_errors_total,
        )
        yield GaugeMetricFamily(
            "shardline_prediction_log_pending",
            "Sampled predictions buffered or being written.",
            value=log.pending,
        )


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        # The standard process_* (CPU, RSS, open fds, start time), python_info and python_gc_*
        # series. The collectors read the process's state at scrape time, so the default
        # instances serve every node's registry (several nodes share a process in tests).
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        self._request_children: dict[tuple[str, ...], tuple[Any, Any]] = {}

        def counter(name: str, doc: str, labels: list[str]) -> Counter:
            return Counter(name, doc, labels, registry=r)

        def histogram(name: str, doc: str, labels: list[str], buckets: Any) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=r)

        # Requests.
        self.requests = counter(
            "shardline_requests_total",
            "Predict and V2 ModelInfer requests by objective, model key, cell, gRPC status "
            "code and path "
            "(served here, forwarded to an owner, or served after a failover).",
            ["objective", "model_key", "cell", "code", "path"],
        )
        self.request_seconds = histogram(
            "shardline_request_seconds",
            "Predict latency at the ingress, by objective, model key, cell, code and path.",
            ["objective", "model_key", "cell", "code", "path"],
            LATENCY_BUCKETS_S,
        )
        self.in_flight = Gauge(
            "shardline_requests_in_flight", "gRPC requests this node is handling now.",
            registry=r,
        )  # fmt: skip
        self.shed = counter(
            "shardline_shed_total",
            "Requests refused before doing their work, by objective and reason "
            "(rate, concurrency, queue, deadline).",
            ["objective", "reason"],
        )
        self.shadow_requests = counter(
            "shardline_shadow_requests_total",
            "Shadow copies, by target model key and outcome (ok, error, dropped, not_loaded).",
            ["model_key", "outcome"],
        )
        self.forwards = counter(
            "shardline_forwards_total", "Requests forwarded to a peer, by peer and outcome.",
            ["peer", "outcome"],
        )  # fmt: skip
        self.missing_user_id = counter(
            "shardline_requests_without_user_id_total",
            "Requests without context.user_id to an objective whose experiments, canary or "
            "shadows bucket users by it (all of them fall in one bucket), by objective.",
            ["objective"],
        )
        self.failovers = counter(
            "shardline_failovers_total",
            "Requests retried on the next owner after a retryable failure, by model key.",
            ["model_key"],
        )
        # Model actors.
        self.batch_size = histogram(
            "shardline_batch_size", "Requests per batch run by a model actor.",
            ["model_key"], BATCH_BUCKETS,
        )  # fmt: skip
        self.queue_wait_seconds = histogram(
            "shardline_queue_wait_seconds",
            "Time the oldest request of a batch waited in the model actor's queue.",
            ["model_key"], LATENCY_BUCKETS_S,
        )  # fmt: skip
        self.compute_seconds = histogram(
            "shardline_batch_compute_seconds",
            "Time to run one batch (preprocess, forward, postprocess) on the device worker.",
            ["model_key"], LATENCY_BUCKETS_S,
        )  # fmt: skip
        self.loads = counter(
            "shardline_model_loads_total", "Workflow loads by model key and outcome.",
            ["model_key", "outcome"],
        )  # fmt: skip
        self.unloads = counter(
            "shardline_model_unloads_total", "Workflows unloaded, by model key.", ["model_key"]
        )
        self.load_seconds = histogram(
            "shardline_model_load_seconds", "Time to load and warm a workflow.",
            ["model_key"], LOAD_BUCKETS_S,
        )  # fmt: skip
        # Residency: lazy loads and the LRU under the memory budget.
        self.cold_loads = counter(
            "shardline_cold_loads_total",
            "Loads a request waited for (the model was placed here but not resident), by "
            "outcome (ok, error, no_room).",
            ["outcome"],
        )
        self.cold_wait_seconds = histogram(
            "shardline_cold_wait_seconds",
            "How long a request waited for its model to load (cold start), by outcome.",
            ["outcome"], LOAD_BUCKETS_S,
        )  # fmt: skip
        self.evictions = counter(
            "shardline_model_evictions_total",
            "Resident models unloaded to make room (least recently used first).",
            [],
        )
        self.hot_copy_changes = counter(
            "shardline_hot_copy_changes_total",
            "Extra copies of a hot model asked for (up) or dropped once cold (down) by this "
            "node, for the models it decides for.",
            ["direction"],
        )
        self.resident_bytes = Gauge(
            "shardline_resident_model_bytes", "Bytes of the models resident on this node.",
            registry=r,
        )  # fmt: skip
        self.resident_models = Gauge(
            "shardline_resident_models", "Models resident on this node.", registry=r
        )
        self.memory_budget_bytes = Gauge(
            "shardline_memory_budget_bytes",
            "This node's model memory budget (--memory-budget).",
            registry=r,
        )
        # One series per GPU of the node (a handful): device memory under its budget.
        self.device_resident_bytes = Gauge(
            "shardline_device_resident_model_bytes",
            "Device memory of the models resident on each GPU of this node.",
            ["device"], registry=r,
        )  # fmt: skip
        self.device_budget_bytes = Gauge(
            "shardline_device_memory_budget_bytes",
            "Each GPU's model memory budget (--device-memory-budget).",
            ["device"], registry=r,
        )  # fmt: skip
        # Membership and control plane.
        self.gossip_packets = counter(
            "shardline_gossip_packets_total",
            "Gossip datagrams by direction (sent, received, rejected).",
            ["direction"],
        )
        self.gossip_packet_bytes = histogram(
            "shardline_gossip_packet_bytes", "Size of gossip datagrams.", ["direction"],
            SIZE_BUCKETS,
        )  # fmt: skip
        self.gossip_probes = counter(
            "shardline_gossip_probes_total", "Gossip messages sent, by kind (ping, ack, …).",
            ["kind"],
        )  # fmt: skip
        self.member_transitions = counter(
            "shardline_member_transitions_total",
            "Membership changes seen by gossip, by new state (suspect = suspicion, "
            "dead = confirmation, alive = refutation or join, left).",
            ["state"],
        )
        self.catalog_revision = Gauge(
            "shardline_catalog_revision", "etcd revision of the roster and catalog applied.",
            registry=r,
        )  # fmt: skip
        self.watch_lag_seconds = histogram(
            "shardline_catalog_apply_lag_seconds",
            "From an objective change's write time to this node applying it.",
            [], CONTROL_BUCKETS_S,
        )  # fmt: skip
        self.loaded_lag_seconds = histogram(
            "shardline_loaded_set_apply_lag_seconds",
            "From another node publishing a change of its loaded set (a load, an eviction) "
            "to this node applying it.",
            [], CONTROL_BUCKETS_S,
        )  # fmt: skip
        self.ring_changes = counter(
            "shardline_ring_changes_total", "Times the ring's membership changed.", []
        )
        self.keys_moved = counter(
            "shardline_ring_keys_moved_total",
            "Model keys whose owner set changed when the ring changed.",
            [],
        )

    def request_done(self, labels: tuple[str, ...], seconds: float | None) -> None:
        """Count a request (and observe its latency unless None), with the label children
        cached: ``labels()`` validates and locks on every call, which shows on the hot path."""
        children = self._request_children.get(labels)
        if children is None:
            children = (self.requests.labels(*labels), self.request_seconds.labels(*labels))
            self._request_children[labels] = children
        children[0].inc()
        if seconds is not None:
            children[1].observe(seconds)

    def observe_batch(self, model_key: str, size: int, queue_s: float, compute_s: float) -> None:
        self.batch_size.labels(model_key).observe(size)
        self.queue_wait_seconds.labels(model_key).observe(queue_s)
        self.compute_seconds.labels(model_key).observe(compute_s)

    def watch_queues(self, depths: Callable[[], Iterable[tuple[str, int]]]) -> None:
        self.registry.register(_QueueDepths(depths))

    def watch_prediction_log(self, log: Callable[[], PredlogCounts | None]) -> None:
        self.registry.register(_PredictionLog(log))

    def serve_http(
        self,
        host: str,
        port: int,
        ready: Readiness | None = None,
        mounts: Mapping[str, WsgiApp] | None = None,
        max_connections: int | None = None,
    ) -> int:
        """Serve /metrics, /healthz and /readyz on a background thread; returns the port.
        ``mounts`` maps a path prefix (``"/v2"``) to the WSGI application that answers it
        and every path under it; ``max_connections`` connections are served at once
        (default ``MAX_HTTP_THREADS``; the kernel's backlog holds the rest)."""
        app = _app(self.registry, ready, dict(mounts or {}))
        server = make_server(host, port, app, _Server, _QuietHandler)
        if max_connections is not None:
            server._slots = threading.BoundedSemaphore(max_connections)
        threading.Thread(target=server.serve_forever, daemon=True, name="metrics-http").start()
        return int(server.server_address[1])


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per connection, at most ``MAX_HTTP_THREADS`` at once: the accepting
    thread waits for a free slot (the kernel's backlog holds the rest)."""

    daemon_threads = True
    request_queue_size = HTTP_BACKLOG

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots = threading.BoundedSemaphore(MAX_HTTP_THREADS)
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        self._slots.acquire()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _QuietHandler(WSGIRequestHandler):
    timeout = HTTP_IDLE_TIMEOUT_S
    # HTTP/1.1 requests: answer "Expect: 100-continue" (curl sends it before a large body)
    # at once. Each connection still serves one request (the answer says HTTP/1.0).
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds would flood the log."""


def _app(
    registry: CollectorRegistry, ready: Readiness | None, mounts: Mapping[str, WsgiApp]
) -> Callable[..., Iterable[bytes]]:
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        for prefix, mounted in mounts.items():
            if path == prefix or path.startswith(prefix + "/"):
                return mounted(environ, start_response)
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path == "/readyz":
            ok, why = ready() if ready is not None else (True, "ready")
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "text/plain")])  # fmt: skip
            return [f"{why}\n".encode()]
        result: Iterable[bytes] = metrics(environ, start_response)
        return result

    return app
