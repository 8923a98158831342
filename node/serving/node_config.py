"""A node's settings (``NodeConfig``): what the ingress, the executor and the server read.

Its own module so that every part of the request path can read it without importing the
``shardline.node.serving.runtime`` facade that wires them together.
"""

from __future__ import annotations

from dataclasses import dataclass

from shardline.node.sdk.tls import TlsFiles
from shardline.node.serving.inputs import DEFAULT_HEAD_LIMITS, HeadLimits


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
    # Longest identifiers and most attributes a request's head may carry.
    head_limits: HeadLimits = DEFAULT_HEAD_LIMITS

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
