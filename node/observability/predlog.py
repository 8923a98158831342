"""The prediction log: a sampled record of predictions for training and analysis.

A node decides per request whether to log it (:meth:`PredictionLog.sampled`, a per-objective
rate; deterministic per request id so a forwarded request is sampled the same way on every
hop), builds a :class:`PredictionRecord` only when it is, and hands it to
:meth:`PredictionLog.offer`. ``offer`` never blocks or awaits: it appends to a bounded buffer
and, when the buffer is full, drops the record and counts it. A background task drains the
buffer into a :class:`Sink` in batches (``batch_size`` records or every ``flush_interval_s``).
The log is never on the request's critical path: a slow, stalled or failing sink costs
records (counted in ``dropped_total`` / ``sink_errors_total``), never request latency.

Accounting: every offered record ends up in exactly one of ``written_total``,
``dropped_total`` or ``pending`` (buffered, or in the batch the sink is writing).

:class:`JsonlFileSink` writes rotating JSON Lines files (one record per line) from a worker
thread so that encoding and disk I/O never run on the event loop. ``offer`` must be called
from the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

__all__ = [
    "JsonlFileSink",
    "PredictionLog",
    "PredictionLogConfig",
    "PredictionRecord",
    "Sink",
    "to_jsonable",
]

logger = logging.getLogger("shardline.predlog")

SCHEMA_VERSION = 2  # 2: ``shadow`` (version 1 records read as shadow=False)
_ERROR_LOG_INTERVAL_S = 60.0


def to_jsonable(value: object) -> Any:
    """Convert model outputs to plain JSON values (numpy arrays and scalars become lists and
    numbers, tuples become lists); raise :class:`TypeError` for anything else."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    tolist = getattr(value, "tolist", None)  # numpy arrays / scalars, torch tensors
    if callable(tolist):
        return to_jsonable(tolist())
    raise TypeError(f"cannot log a value of type {type(value).__name__} as JSON")


@dataclass(frozen=True, kw_only=True)
class PredictionRecord:
    """One logged prediction. ``outputs`` are converted to JSON values on construction."""

    request_id: str
    node_id: str
    timestamp_s: float  # unix time of the prediction
    objective: str
    model_key: str  # name@version
    cell: str  # A/B cell, canary or "default"
    user_id: str = ""
    country: str = ""
    device: str = ""
    surface: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)
    outputs: Mapping[str, Any] = field(default_factory=dict)
    timings_ms: Mapping[str, float] = field(default_factory=dict)  # queue, batch, compute, total
    synthetic: bool = False  # True for synthetic traffic (load tests, probes), False for real
    shadow: bool = False  # True for a shadow copy's prediction (computed, never answered)

    def __post_init__(self) -> None:
        if not self.objective:
            raise ValueError("objective must not be empty")
        if not self.model_key:
            raise ValueError("model_key must not be empty")
        if not math.isfinite(self.timestamp_s):
            raise ValueError(f"timestamp_s must be finite, got {self.timestamp_s}")
        object.__setattr__(self, "attributes", {str(k): str(v) for k, v in self.attributes.items()})
        object.__setattr__(self, "outputs", to_jsonable(dict(self.outputs)))
        object.__setattr__(
            self, "timings_ms", {str(k): float(v) for k, v in self.timings_ms.items()}
        )

    def to_json(self) -> str:
        """One compact JSON object (no newline), with a ``schema`` version field."""
        doc = asdict(self)
        doc["schema"] = SCHEMA_VERSION
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> PredictionRecord:
        """Parse a line written by :meth:`to_json`."""
        doc = json.loads(line)
        if not isinstance(doc, dict):
            raise ValueError("a prediction record must be a JSON object")
        doc.pop("schema", None)
        return cls(**doc)


class Sink(Protocol):
    """Where drained records go. ``write`` either stores the whole batch or raises."""

    async def write(self, records: Sequence[PredictionRecord]) -> None: ...

    async def close(self) -> None: ...


class JsonlFileSink:
    """Rotating JSON Lines files ``<dir>/<prefix>-<seq>.jsonl``, written in a worker thread.

    A file is rotated before a line would take it past ``max_bytes`` (a single larger line
    gets a file of its own); at most ``max_files`` files are kept, the oldest deleted first.
    Numbering continues after the highest existing file, so a restart never appends to (or
    overwrites) an earlier file. After a write error the next write starts a new file.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        prefix: str = "predictions",
        max_bytes: int = 64 * 1024 * 1024,
        max_files: int = 16,
    ) -> None:
        if not prefix or os.sep in prefix or (os.altsep and os.altsep in prefix):
            raise ValueError(f"prefix must be a non-empty file name part, got {prefix!r}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        if max_files < 1:
            raise ValueError(f"max_files must be >= 1, got {max_files}")
        self.directory = Path(directory)
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.max_files = max_files
        self._pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)\.jsonl$")
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None
        self._file_bytes = 0
        self._next_seq: int | None = None
        self._closed = False

    async def write(self, records: Sequence[PredictionRecord]) -> None:
        if records:
            await asyncio.to_thread(self._write_sync, list(records))

    async def close(self) -> None:
        await asyncio.to_thread(self._close_sync)

    def files(self) -> list[Path]:
        """The log files currently on disk, oldest first (blocking: call from a thread)."""
        return [path for _, path in self._scan()]

    def _scan(self) -> list[tuple[int, Path]]:
        if not self.directory.is_dir():
            return []
        found = []
        for entry in self.directory.iterdir():
            match = self._pattern.match(entry.name)
            if match:
                found.append((int(match.group(1)), entry))
        return sorted(found)

    def _write_sync(self, records: list[PredictionRecord]) -> None:
        lines = [(record.to_json() + "\n").encode() for record in records]
        with self._lock:
            if self._closed:
                raise RuntimeError("the prediction log sink is closed")
            try:
                for line in lines:
                    if self._file is None or (
                        self._file_bytes > 0 and self._file_bytes + len(line) > self.max_bytes
                    ):
                        self._rotate()
                    assert self._file is not None
                    self._file.write(line)
                    self._file_bytes += len(line)
                assert self._file is not None
                self._file.flush()
            except BaseException:
                self._abandon_file()  # a partial line must not be continued
                raise

    def _rotate(self) -> None:
        self._abandon_file()
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._next_seq is None:
            existing = self._scan()
            self._next_seq = existing[-1][0] + 1 if existing else 0
        while True:
            path = self.directory / f"{self.prefix}-{self._next_seq:08d}.jsonl"
            self._next_seq += 1
            try:
                self._file = path.open("xb")
                break
            except FileExistsError:
                continue
        self._file_bytes = 0
        existing = self._scan()
        for _, old in existing[: max(0, len(existing) - self.max_files)]:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()

    def _abandon_file(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            with contextlib.suppress(OSError):
                file.close()

    def _close_sync(self) -> None:
        with self._lock:
            self._closed = True
            self._abandon_file()


@dataclass(frozen=True)
class PredictionLogConfig:
    """Sampling rates (fractions in 0..1) and the drain's buffering and batching."""

    default_rate: float = 0.01
    rates: Mapping[str, float] = field(default_factory=dict)  # per objective, overrides default
    queue_capacity: int = 10_000  # records buffered before offers are dropped
    batch_size: int = 256  # records per sink write
    flush_interval_s: float = 1.0  # a partial batch is written at least this often
    stop_timeout_s: float = 5.0  # bound on the final flush, and again on the sink's close

    def __post_init__(self) -> None:
        for name, rate in [("default_rate", self.default_rate), *self.rates.items()]:
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"sampling rate for {name!r} must be in [0, 1], got {rate}")
        object.__setattr__(self, "rates", dict(self.rates))
        if self.queue_capacity < 1:
            raise ValueError(f"queue_capacity must be >= 1, got {self.queue_capacity}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.flush_interval_s > 0:
            raise ValueError(f"flush_interval_s must be > 0, got {self.flush_interval_s}")
        if not self.stop_timeout_s > 0:
            raise ValueError(f"stop_timeout_s must be > 0, got {self.stop_timeout_s}")

    def rate_for(self, objective: str) -> float:
        return self.rates.get(objective, self.default_rate)


class PredictionLog:
    """Samples predictions and drains them to a sink in the background, off the request path."""

    def __init__(
        self,
        config: PredictionLogConfig,
        sink: Sink,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._sink = sink
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock  # wall clock, for rate-limiting error logs
        self._buffer: deque[PredictionRecord] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._accepting = True
        self._stopping = False
        self._stopped = False
        self._writing = 0  # records in the batch the sink is writing now
        self._offered_total = 0
        self._written_total = 0
        self._dropped_total = 0
        self._sink_errors_total = 0
        self._last_error_log_s = -math.inf

    def sampled(self, objective: str, request_id: str | None = None) -> bool:
        """Whether to log this prediction. With a request id the answer is a stable hash of
        it (the same on every node and hop); without one it comes from the rng."""
        rate = self.config.rate_for(objective)
        if rate <= 0.0:
            return False
        if rate >= 1.0:
            return True
        if request_id:
            digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
            return int.from_bytes(digest, "big") < rate * 2.0**64
        return self._rng.random() < rate

    def offer(self, record: PredictionRecord) -> bool:
        """Buffer a record for the sink; never blocks. Returns False (and counts the record
        in ``dropped_total``) when the buffer is full or the log is stopping."""
        self._offered_total += 1
        buffer = self._buffer
        if not self._accepting or len(buffer) >= self.config.queue_capacity:
            self._dropped_total += 1
            return False
        buffer.append(record)
        if len(buffer) >= self.config.batch_size:
            self._wake.set()
        return True

    @property
    def offered_total(self) -> int:
        return self._offered_total

    @property
    def written_total(self) -> int:
        return self._written_total

    @property
    def dropped_total(self) -> int:
        return self._dropped_total

    @property
    def sink_errors_total(self) -> int:
        return self._sink_errors_total

    @property
    def pending(self) -> int:
        """Records buffered or being written, not yet counted as written or dropped."""
        return len(self._buffer) + self._writing

    async def start(self) -> None:
        """Start the background drain (idempotent)."""
        if self._stopped or self._stopping:
            raise RuntimeError("a stopped prediction log cannot be restarted")
        self._ensure_task()

    def _ensure_task(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="predlog-drain")
        return self._task

    async def stop(self) -> None:
        """Stop accepting records, flush the buffer (bounded by ``stop_timeout_s``; records
        that do not make it are counted as dropped) and close the sink (bounded again)."""
        if self._stopping:
            return
        self._accepting = False
        self._stopping = True
        self._wake.set()
        task = self._ensure_task()  # never started: drain what was offered before start
        done, _ = await asyncio.wait({task}, timeout=self.config.stop_timeout_s)
        if not done:
            logger.warning(
                "prediction log: sink did not finish within %.1fs, dropping %d records",
                self.config.stop_timeout_s,
                self.pending,
            )
            task.cancel()
            await asyncio.wait({task}, timeout=self.config.stop_timeout_s)
        elif not task.cancelled() and task.exception() is not None:
            logger.error("prediction log drain failed", exc_info=task.exception())
        self._dropped_total += len(self._buffer)
        self._buffer.clear()
        try:
            async with asyncio.timeout(self.config.stop_timeout_s):
                await self._sink.close()
        except TimeoutError:
            logger.warning("prediction log: sink close timed out")
        except Exception:
            logger.exception("prediction log: sink close failed")
        self._stopped = True

    async def _run(self) -> None:
        batch_size = self.config.batch_size
        while True:
            if not self._stopping and len(self._buffer) < batch_size:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.config.flush_interval_s):
                        await self._wake.wait()
            if not self._buffer:
                if self._stopping:
                    return
                continue
            count = min(batch_size, len(self._buffer))
            batch = [self._buffer.popleft() for _ in range(count)]
            await self._write(batch)

    async def _write(self, batch: list[PredictionRecord]) -> None:
        self._writing = len(batch)
        try:
            await self._sink.write(batch)
        except asyncio.CancelledError:
            self._dropped_total += len(batch)
            raise
        except Exception:
            self._sink_errors_total += 1
            self._dropped_total += len(batch)
            now = self._clock()
            if now - self._last_error_log_s >= _ERROR_LOG_INTERVAL_S:
                self._last_error_log_s = now
                logger.exception(
                    "prediction log: sink write failed, dropped %d records "
                    "(%d sink errors so far; logged at most once a minute)",
                    len(batch),
                    self._sink_errors_total,
                )
        else:
            self._written_total += len(batch)
        finally:
            self._writing = 0
