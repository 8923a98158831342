"""Closed-loop load generation for benchmarks: N requests in flight for a fixed time.

``run_closed_loop`` keeps ``concurrency`` calls outstanding for ``duration_s`` (after a
warm-up) and returns throughput and latency percentiles. Latency is measured per call
with ``perf_counter``; errors are counted, not timed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LoadResult:
    name: str
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


async def run_closed_loop(
    name: str,
    call: Callable[[], Awaitable[object]],
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float = 1.0,
) -> LoadResult:
    latencies: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s

    async def worker() -> None:
        nonlocal errors
        while True:
            t0 = time.perf_counter()
            now = loop.time()
            if now >= stop_at:
                return
            try:
                await call()
            except Exception:
                if now >= measure_from:
                    errors += 1
                continue
            if now >= measure_from:
                latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    lat = np.array(latencies) * 1000.0 if latencies else np.zeros(1)
    return LoadResult(
        name,
        len(latencies),
        errors,
        duration_s,
        float(np.percentile(lat, 50)),
        float(np.percentile(lat, 99)),
    )
