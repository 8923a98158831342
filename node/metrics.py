"""Prometheus metrics of one node (its own registry, so several nodes fit in one process).

Names follow Prometheus conventions (``shardline_…_total``, ``…_seconds``). The HTTP
endpoint is optional (``--metrics-port``); tests read the registry or scrape it.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "shardline_requests_total",
            "Predict requests answered, by objective, model key, cell and gRPC status code.",
            ["objective", "model_key", "cell", "code"],
            registry=r,
        )
        self.in_flight = Gauge(
            "shardline_requests_in_flight",
            "gRPC requests this node is handling right now.",
            registry=r,
        )
        self.request_seconds = Histogram(
            "shardline_request_seconds",
            "Predict latency on the serving node, by objective.",
            ["objective"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.shadow_requests = Counter(
            "shardline_shadow_requests_total",
            "Shadow copies, by target model key and outcome (ok, error, dropped, not_loaded).",
            ["model_key", "outcome"],
            registry=r,
        )
        self.batch_size = Histogram(
            "shardline_batch_size",
            "Requests per batch run by a model actor.",
            ["model_key"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "shardline_queue_wait_seconds",
            "Time the oldest request of a batch waited in the model actor's queue.",
            ["model_key"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.compute_seconds = Histogram(
            "shardline_batch_compute_seconds",
            "Time to run one batch (preprocess, forward, postprocess) on the device worker.",
            ["model_key"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )

    def observe_batch(self, model_key: str, size: int, queue_s: float, compute_s: float) -> None:
        self.batch_size.labels(model_key).observe(size)
        self.queue_wait_seconds.labels(model_key).observe(queue_s)
        self.compute_seconds.labels(model_key).observe(compute_s)

    def serve_http(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on a background thread; returns the bound port (``port=0``: any)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_address[1])
