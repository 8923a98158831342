"""Load generation for benchmarks: closed loop (N in flight) and open loop (fixed rate).

``run_closed_loop`` keeps ``concurrency`` calls outstanding for ``duration_s`` (after a
warm-up) and returns throughput and latency percentiles. Latency is measured per call
with ``perf_counter``; errors are counted, not timed.

``run_open_loop`` sends at a fixed offered rate whatever the server does (a closed loop
slows down with the server and so can never overload it): arrivals are scheduled ahead
(Poisson or evenly spaced), each call is its own task with a client deadline, and the
result counts successes, errors by gRPC status and the latency of the successes measured
from the *scheduled* send time (no coordinated omission: a client that falls behind
shows up as latency, not as a lower rate). Outstanding calls are bounded; an arrival
that finds the bound reached, or that the client could not send within ``max_lag_s`` of
its schedule, is not sent and is counted as the error ``client-overrun``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

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


CLIENT_OVERRUN = "client-overrun"


def error_label(exc: BaseException) -> str:
    """The gRPC status name of an error (``PredictError``/``GRPCError`` carry one), else
    the exception type; a local timeout counts as DEADLINE_EXCEEDED."""
    status = getattr(exc, "status", None)
    name = getattr(status, "name", None)
    if isinstance(name, str):
        return name
    if isinstance(exc, TimeoutError):
        return "DEADLINE_EXCEEDED"
    return type(exc).__name__


@dataclass(frozen=True)
class OpenLoopResult:
    """One open-loop run: what was offered, what was sent, what came back."""

    name: str
    offered_per_s: float
    seconds: float
    scheduled: int
    sent: int
    ok: int
    errors: Mapping[str, int] = field(default_factory=dict)
    latencies_ms: tuple[float, ...] = ()
    max_lag_ms: float = 0.0

    @property
    def goodput(self) -> float:
        """Successful requests per second."""
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def sent_per_s(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def error_rate(self) -> float:
        return self.error_count / self.scheduled if self.scheduled else 0.0

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def p50_ms(self) -> float:
        return self.percentile_ms(50)

    @property
    def p99_ms(self) -> float:
        return self.percentile_ms(99)


async def run_open_loop(
    call: Callable[[], Awaitable[object]],
    rate_per_s: float,
    duration_s: float,
    *,
    name: str = "",
    warmup_s: float = 0.0,
    timeout_s: float | None = 1.0,
    arrivals: Literal["poisson", "uniform"] = "poisson",
    max_outstanding: int = 4096,
    max_lag_s: float = 0.1,
    seed: int = 0,
) -> OpenLoopResult:
    """Offer ``rate_per_s`` calls per second for ``warmup_s + duration_s``; measure the
    calls scheduled in the last ``duration_s`` (their answers are awaited after the end).

    ``call`` should pass the same deadline to its transport (so the server sees it);
    ``timeout_s`` is a guard here too: a call still outstanding after it is cancelled and
    counted as DEADLINE_EXCEEDED. Latency runs from the scheduled send time.
    """
    if rate_per_s <= 0 or duration_s <= 0:
        raise ValueError("rate_per_s and duration_s must be positive")
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    counts = {"scheduled": 0, "sent": 0, "ok": 0}
    tasks: set[asyncio.Task[None]] = set()
    max_lag = 0.0

    async def one(scheduled_at: float, measured: bool) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await call()
        except Exception as exc:
            if measured:
                errors[error_label(exc)] += 1
            return
        if measured:
            counts["ok"] += 1
            latencies.append((loop.time() - scheduled_at) * 1000.0)

    start = loop.time() + 0.01
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s
    interval = 1.0 / rate_per_s
    t = start
    while True:
        t += rng.expovariate(rate_per_s) if arrivals == "poisson" else interval
        if t >= stop_at:
            break
        now = loop.time()
        if t > now:
            await asyncio.sleep(t - now)
            now = loop.time()
        measured = t >= measure_from
        counts["scheduled"] += measured
        lag = now - t
        if lag > max_lag_s or len(tasks) >= max_outstanding:
            if measured:
                errors[CLIENT_OVERRUN] += 1
            continue
        if measured:
            counts["sent"] += 1
            max_lag = max(max_lag, lag)
        task = loop.create_task(one(t, measured))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    return OpenLoopResult(
        name=name,
        offered_per_s=rate_per_s,
        seconds=duration_s,
        scheduled=counts["scheduled"],
        sent=counts["sent"],
        ok=counts["ok"],
        errors=dict(errors),
        latencies_ms=tuple(latencies),
        max_lag_ms=max_lag * 1000.0,
    )
