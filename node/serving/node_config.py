"""A node's settings (``NodeConfig``): what the ingress, the executor and the server read.

Its own module so that every part of the request path can read it without importing the
``shardline.node.serving.runtime`` facade that wires them together.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from shardline.membership.loaded import MAX_RECORD_BYTES
from shardline.node.sdk.tls import TlsFiles
from shardline.node.serving.inputs import DEFAULT_HEAD_LIMITS, HeadLimits
from shardline.router.hot_copies import HotPolicy

DEFAULT_MAX_RESIDENT_MODELS = 4096
# A loaded-set record lists each resident key (at most 128 characters) with its bytes: this
# many always fit one record (``shardline.membership.loaded.MAX_RECORD_BYTES``).
MAX_RESIDENT_MODELS_LIMIT = MAX_RECORD_BYTES // 160
DEFAULT_BUDGET_SHARE = 0.5
DEFAULT_DEVICE_BUDGET_SHARE = 0.9  # of each GPU's memory (the rest: activations, CUDA context)


def machine_memory_bytes() -> int:
    """The memory this process may use: the cgroup's limit when there is one, else the
    machine's (``MemTotal``)."""
    total = 0
    with contextlib.suppress(OSError, ValueError, StopIteration), open("/proc/meminfo") as f:
        total = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal"))
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            text = Path(path).read_text().strip()
            if text != "max" and 0 < int(text) < (total or 2**62):
                total = int(text)
    return total or 8 * 2**30


CGROUP = Path("/sys/fs/cgroup")


def usable_cores(cgroup: Path = CGROUP) -> int:
    """The CPUs this process may use: its affinity mask, capped by the cgroup's CPU quota
    (a container limited to 2 CPUs on a 64-core host has 2, where ``os.cpu_count()`` and
    torch's own default see 64)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = period = ""
    with contextlib.suppress(OSError, ValueError):  # cgroup v2: "quota period"
        quota, period = (cgroup / "cpu.max").read_text().split()
    if not quota:
        with contextlib.suppress(OSError):  # cgroup v1
            quota = (cgroup / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (cgroup / "cpu" / "cpu.cfs_period_us").read_text().strip()
    with contextlib.suppress(ValueError):
        if quota not in ("", "max", "-1") and int(period) > 0:
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    return max(1, cores)


def default_cpu_threads() -> int:
    """Torch intra-op threads of a node's CPU worker when ``--cpu-threads`` is not given:
    every usable core but one, which the event loop needs (it does most of a small model's
    per-request work: decoding, routing, HTTP/2); at least 1. bench/torch_threads.py."""
    return max(1, usable_cores() - 1)


def default_memory_budget() -> int:
    """Half of ``machine_memory_bytes``: room for the process, requests and the page cache."""
    return int(machine_memory_bytes() * DEFAULT_BUDGET_SHARE)


def gpu_memory() -> dict[str, int]:
    """Each CUDA device of this process (``cuda:0``...) -> its total memory; {} without
    CUDA (torch is imported only here: the CLI reads this module without it)."""
    import torch

    if not torch.cuda.is_available():
        return {}
    return {
        f"cuda:{i}": int(torch.cuda.get_device_properties(i).total_memory)
        for i in range(torch.cuda.device_count())
    }


def parse_bytes(text: str) -> int:
    """``"2G"``, ``"512M"``, ``"1.5GiB"``, ``"100000"`` -> bytes (binary units); ValueError."""
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    raw = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = raw, ""
    if raw and raw[-1] in units:
        number, unit = raw[:-1], raw[-1]
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (e.g. 2G, 512M, 1048576)") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"a size must be > 0, got {text!r}")
    return int(value * units[unit])


def parse_hot_policy(text: str) -> HotPolicy:
    """``"up_after_s=1,max_copies=2"`` -> a ``HotPolicy`` (defaults for the rest); ValueError
    naming the field for an unknown field or a bad value."""
    known = {f.name: f.type for f in fields(HotPolicy)}
    values: dict[str, float | int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or name not in known:
            raise ValueError(f"--hot-policy: {item!r} is not FIELD=VALUE with FIELD one of "
                             f"{', '.join(known)}")  # fmt: skip
        try:
            values[name] = int(raw) if name == "max_copies" else float(raw)
        except ValueError:
            raise ValueError(f"--hot-policy: {name} must be a number, got {raw!r}") from None
    try:
        return HotPolicy(**values)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ValueError(f"--hot-policy: {exc}") from None


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
    # Send the HTTP/2 frames written in one turn of the event loop in one socket write
    # (node/serving/coalesce.py); off only to measure what it saves.
    coalesce_writes: bool = True
    # HTTP/2 under grpclib: "lean" (node/sdk/http2.py, the default) or "h2" (h2's state
    # machine, as stock grpclib; kept to compare and to fall back on).
    http2: str = "lean"
    # Forwards a peer may have in flight on one peer-link connection (beyond:
    # RESOURCE_EXHAUSTED, which the forwarding node fails over on).
    peer_link_max_streams: int = 1024
    # Connections the HTTP port (metrics, health, REST V2) serves at once; more wait.
    http_max_connections: int = 256
    # Queue budget: refuse (RESOURCE_EXHAUSTED) rather than queue more than this much work.
    max_queue_wait_s: float = 0.25
    # Prediction log: JSON Lines under this directory (None: off), default sample rate.
    predlog_dir: str | None = None
    predlog_rate: float = 0.01
    # TLS: the node's certificate, key and the cluster CA (None: plaintext).
    tls: TlsFiles | None = None
    # Longest identifiers and most attributes a request's head may carry.
    head_limits: HeadLimits = DEFAULT_HEAD_LIMITS
    # Model memory: the budget resident models may take (None: half the machine's memory,
    # ``default_memory_budget``) and the most models resident at once.
    memory_budget_bytes: int | None = None
    max_resident_models: int = DEFAULT_MAX_RESIDENT_MODELS
    # Per GPU: the device memory its resident models may take (None: 90 % of each GPU's).
    device_memory_budget_bytes: int | None = None
    # Hot copies: when a model this node decides for gains or loses an extra copy.
    hot_policy: HotPolicy = field(default_factory=HotPolicy)

    @property
    def torch_cpu_threads(self) -> int:
        """The intra-op threads in force: ``cpu_threads``, or ``default_cpu_threads``."""
        return self.cpu_threads if self.cpu_threads is not None else default_cpu_threads()

    @property
    def memory_budget(self) -> int:
        """The budget in force: the configured one, or the machine's default."""
        if self.memory_budget_bytes is not None:
            return self.memory_budget_bytes
        return default_memory_budget()

    def device_budgets(self) -> dict[str, int]:
        """Each GPU of this node -> its model memory budget ({} without CUDA)."""
        return {
            name: self.device_memory_budget_bytes
            if self.device_memory_budget_bytes is not None
            else int(total * DEFAULT_DEVICE_BUDGET_SHARE)
            for name, total in gpu_memory().items()
        }

    def __post_init__(self) -> None:
        for name in ("peer_link_max_streams", "http_max_connections"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"cpu_threads must be >= 1, got {self.cpu_threads}")
        if self.memory_budget_bytes is not None and self.memory_budget_bytes < 1:
            raise ValueError(f"memory budget must be > 0 bytes, got {self.memory_budget_bytes}")
        device = self.device_memory_budget_bytes
        if device is not None and device < 1:
            raise ValueError(f"device memory budget must be > 0 bytes, got {device}")
        if not 1 <= self.max_resident_models <= MAX_RESIDENT_MODELS_LIMIT:
            raise ValueError(
                f"max resident models must be in 1..{MAX_RESIDENT_MODELS_LIMIT} (the node's "
                f"loaded-set record in etcd must fit {MAX_RECORD_BYTES} bytes), got "
                f"{self.max_resident_models}"
            )
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
