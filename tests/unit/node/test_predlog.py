"""Unit tests for node/observability/predlog.py: sampling, the non-blocking buffer, the drain and
the rotating JSON Lines sink. No sleeps: tests wait on events (with a safety timeout)."""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from shardline.node.observability.predlog import (
    JsonlFileSink,
    PredictionLog,
    PredictionLogConfig,
    PredictionRecord,
)

WAIT_S = 10.0  # safety bound on event waits, never reached when the code works


def record(i: int = 0, *, objective: str = "ranking", synthetic: bool = False) -> PredictionRecord:
    return PredictionRecord(
        request_id=f"req-{i}",
        node_id="node-a",
        timestamp_s=1_700_000_000.0 + i,
        objective=objective,
        model_key="ranker@3",
        cell="treatment",
        user_id=f"user-{i % 7}",
        country="NL",
        device="tv",
        surface="home",
        attributes={"row": "top"},
        outputs={"scores": [0.5, 0.25], "ids": [3, 1]},
        timings_ms={"queue": 1.0, "compute": 2.5},
        synthetic=synthetic,
    )


class MemorySink:
    """Keeps batches; signals each write; can fail the first N writes."""

    def __init__(self, fail_first: int = 0) -> None:
        self.batches: list[list[PredictionRecord]] = []
        self.calls = 0
        self.fail_first = fail_first
        self.wrote = asyncio.Event()
        self.closed = False

    @property
    def records(self) -> list[PredictionRecord]:
        return [r for batch in self.batches for r in batch]

    async def write(self, records: Sequence[PredictionRecord]) -> None:
        self.calls += 1
        self.wrote.set()
        if self.calls <= self.fail_first:
            raise OSError("disk on fire")
        self.batches.append(list(records))

    async def close(self) -> None:
        self.closed = True

    async def wait_calls(self, n: int) -> None:
        async with asyncio.timeout(WAIT_S):
            while self.calls < n:
                self.wrote.clear()
                await self.wrote.wait()


class StalledSink:
    """A sink whose write blocks forever (until released)."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.closed = False

    async def write(self, records: Sequence[PredictionRecord]) -> None:
        self.entered.set()
        await self.release.wait()

    async def close(self) -> None:
        self.closed = True


# -- records --------------------------------------------------------------------------------


def test_record_json_round_trip_and_numpy_outputs() -> None:
    rec = PredictionRecord(
        request_id="r1",
        node_id="n1",
        timestamp_s=12.5,
        objective="payment_fraud",
        model_key="fraud@7",
        cell="default",
        outputs={"score": np.array([0.75], dtype=np.float32), "label": np.int64(1)},
        synthetic=True,
    )
    doc = json.loads(rec.to_json())
    assert doc["outputs"] == {"score": [0.75], "label": 1}
    assert doc["synthetic"] is True and doc["shadow"] is False and doc["schema"] == 2
    assert "\n" not in rec.to_json()
    assert PredictionRecord.from_json(rec.to_json()) == rec
    assert PredictionRecord.from_json(record(3).to_json()) == record(3)
    old = {k: v for k, v in doc.items() if k != "shadow"} | {"schema": 1}  # a version 1 line
    assert PredictionRecord.from_json(json.dumps(old)) == rec


def test_record_validation() -> None:
    with pytest.raises(ValueError, match="objective"):
        PredictionRecord(
            request_id="r", node_id="n", timestamp_s=0.0, objective="", model_key="m@1", cell=""
        )
    with pytest.raises(TypeError, match="object"):
        PredictionRecord(
            request_id="r",
            node_id="n",
            timestamp_s=0.0,
            objective="o",
            model_key="m@1",
            cell="",
            outputs={"x": object()},
        )


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="'a'"):
        PredictionLogConfig(rates={"a": 1.5})
    with pytest.raises(ValueError, match="default_rate"):
        PredictionLogConfig(default_rate=-0.1)
    with pytest.raises(ValueError, match="queue_capacity"):
        PredictionLogConfig(queue_capacity=0)
    with pytest.raises(ValueError, match="flush_interval_s"):
        PredictionLogConfig(flush_interval_s=0.0)


# -- sampling -------------------------------------------------------------------------------


def within_sigmas(hits: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(hits - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_sampling_matches_rate_by_request_id_and_by_rng() -> None:
    log = PredictionLog(PredictionLogConfig(default_rate=0.05), MemorySink(), random.Random(7))
    n = 20_000
    by_id = sum(log.sampled("ranking", f"req-{i}") for i in range(n))
    by_rng = sum(log.sampled("ranking") for _ in range(n))
    assert within_sigmas(by_id, n, 0.05)
    assert within_sigmas(by_rng, n, 0.05)


def test_per_objective_rates_override_the_default() -> None:
    config = PredictionLogConfig(default_rate=0.01, rates={"fraud": 0.5, "off": 0.0, "all": 1.0})
    log = PredictionLog(config, MemorySink(), random.Random(1))
    n = 20_000
    ids = [f"r{i}" for i in range(n)]
    assert within_sigmas(sum(log.sampled("fraud", r) for r in ids), n, 0.5)
    assert within_sigmas(sum(log.sampled("other", r) for r in ids), n, 0.01)
    assert not any(log.sampled("off", r) for r in ids)
    assert all(log.sampled("all", r) for r in ids)


def test_sampling_is_deterministic_per_request_id() -> None:
    config = PredictionLogConfig(default_rate=0.3)
    a = PredictionLog(config, MemorySink(), random.Random(1))
    b = PredictionLog(config, MemorySink(), random.Random(2))  # another node, another rng
    ids = [f"req-{i}" for i in range(2_000)]
    assert [a.sampled("x", r) for r in ids] == [b.sampled("x", r) for r in ids]


# -- drain ----------------------------------------------------------------------------------


async def test_records_parse_back_from_files_with_traffic_flag(tmp_path: Path) -> None:
    sink = JsonlFileSink(tmp_path, prefix="node-a")
    log = PredictionLog(PredictionLogConfig(default_rate=1.0, batch_size=4), sink)
    await log.start()
    offered = [record(i, synthetic=i % 3 == 0) for i in range(10)]
    assert all(log.offer(r) for r in offered)
    await log.stop()
    assert log.written_total == 10 and log.dropped_total == 0 and log.pending == 0
    lines = [
        line for path in sink.files() for line in path.read_text().splitlines() if line.strip()
    ]
    parsed = [PredictionRecord.from_json(line) for line in lines]
    assert parsed == offered
    assert [json.loads(line)["synthetic"] for line in lines] == [i % 3 == 0 for i in range(10)]


async def test_batches_close_at_batch_size_and_stop_flushes_the_rest() -> None:
    sink = MemorySink()
    log = PredictionLog(PredictionLogConfig(batch_size=5, flush_interval_s=3600.0), sink)
    await log.start()
    for i in range(12):
        log.offer(record(i))
    await sink.wait_calls(2)
    assert [len(b) for b in sink.batches] == [5, 5]
    await log.stop()  # the last 2 are far from a batch and the interval: stop flushes them
    assert [len(b) for b in sink.batches] == [5, 5, 2]
    assert [r.request_id for r in sink.records] == [f"req-{i}" for i in range(12)]
    assert sink.closed and log.written_total == 12
    assert not log.offer(record(99))  # stopped: dropped and counted
    assert log.dropped_total == 1


async def test_flush_interval_writes_a_partial_batch() -> None:
    sink = MemorySink()
    log = PredictionLog(PredictionLogConfig(batch_size=1000, flush_interval_s=0.01), sink)
    await log.start()
    log.offer(record(1))
    await sink.wait_calls(1)
    assert [r.request_id for r in sink.records] == ["req-1"]
    await log.stop()


async def test_stop_without_start_flushes_what_was_offered() -> None:
    sink = MemorySink()
    log = PredictionLog(PredictionLogConfig(batch_size=3), sink)
    for i in range(7):
        log.offer(record(i))
    await log.stop()
    assert log.written_total == 7 and len(sink.records) == 7


async def test_stalled_sink_never_slows_offer() -> None:
    sink = StalledSink()
    config = PredictionLogConfig(queue_capacity=1_000, batch_size=100, stop_timeout_s=0.05)
    log = PredictionLog(config, sink)
    await log.start()
    for i in range(100):
        log.offer(record(i))
    async with asyncio.timeout(WAIT_S):
        await sink.entered.wait()  # the drain holds a batch of 100 and is stuck in write
    rec = record(1)
    n = 50_000
    started = time.perf_counter()
    accepted = sum(log.offer(rec) for _ in range(n))
    elapsed = time.perf_counter() - started
    assert accepted == config.queue_capacity  # the buffer filled once, then every offer dropped
    assert log.dropped_total == n - config.queue_capacity
    assert log.pending == config.queue_capacity + 100  # bounded: buffer plus the stuck batch
    assert elapsed < 2.0  # ~50k appends/drops; a blocking offer would never get here
    assert not asyncio.iscoroutinefunction(log.offer)
    await log.stop()  # bounded by stop_timeout_s although the sink never returns
    assert log.written_total == 0
    assert log.dropped_total == n + 100  # everything that never reached the sink
    assert log.pending == 0 and sink.closed


async def test_failing_sink_is_counted_and_the_log_keeps_working() -> None:
    sink = MemorySink(fail_first=1)
    log = PredictionLog(PredictionLogConfig(batch_size=4, flush_interval_s=3600.0), sink)
    await log.start()
    for i in range(4):
        log.offer(record(i))
    await sink.wait_calls(1)
    for i in range(4, 8):
        log.offer(record(i))
    await sink.wait_calls(2)
    assert log.sink_errors_total == 1
    assert log.dropped_total == 4
    assert log.written_total == 4
    assert [r.request_id for r in sink.records] == [f"req-{i}" for i in range(4, 8)]
    await log.stop()
    assert log.offered_total == log.written_total + log.dropped_total


async def test_start_after_stop_is_refused() -> None:
    log = PredictionLog(PredictionLogConfig(), MemorySink())
    await log.start()
    await log.start()  # idempotent
    await log.stop()
    await log.stop()  # idempotent
    with pytest.raises(RuntimeError, match="restarted"):
        await log.start()


# -- file sink ------------------------------------------------------------------------------


async def test_rotation_keeps_at_most_max_files(tmp_path: Path) -> None:
    line_bytes = len(record(0).to_json()) + 1
    sink = JsonlFileSink(tmp_path, prefix="p", max_bytes=3 * line_bytes + 10, max_files=3)
    for start in range(0, 36, 4):
        await sink.write([record(i) for i in range(start, start + 4)])
        files = sink.files()
        assert len(files) <= 3
        assert all(f.stat().st_size <= sink.max_bytes for f in files)
    kept = [
        PredictionRecord.from_json(line).request_id
        for f in sink.files()
        for line in f.read_text().splitlines()
    ]
    assert kept == [f"req-{i}" for i in range(36 - len(kept), 36)]  # the newest, in order
    assert len(kept) == 9  # 3 files x 3 lines (36 records filled 12 files)
    await sink.close()
    with pytest.raises(RuntimeError, match="closed"):
        await sink.write([record(0)])

    reopened = JsonlFileSink(tmp_path, prefix="p", max_bytes=sink.max_bytes, max_files=3)
    last_before = sink.files()[-1].name
    await reopened.write([record(100)])
    assert reopened.files()[-1].name > last_before  # numbering continues, nothing overwritten
    assert PredictionRecord.from_json(reopened.files()[-1].read_text()) == record(100)
    await reopened.close()


async def test_oversized_record_gets_a_file_of_its_own(tmp_path: Path) -> None:
    sink = JsonlFileSink(tmp_path, max_bytes=10, max_files=5)
    await sink.write([record(1), record(2)])
    assert len(sink.files()) == 2
    await sink.close()


def test_file_sink_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="prefix"):
        JsonlFileSink(tmp_path, prefix="a/b")
    with pytest.raises(ValueError, match="max_files"):
        JsonlFileSink(tmp_path, max_files=0)
