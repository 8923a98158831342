"""An open-loop gRPC load generator on grpcio's asyncio API (C-core), in its own process.

    python -m bench.grpcio_open_loop --target HOST:PORT --rate 2000 --payloads FILE
        [--duration 15] [--warmup 2] [--deadline 1.0] [--channels 8]
        [--arrivals poisson|uniform] [--seed 0] [--start-at EPOCH_S] [--max-lag 0.1]
        [--method /shardline.v1.Inference/Predict]

Sends ``--rate`` calls per second whatever the server does (a closed loop slows down
with the server and so can never overload it). Arrival times are drawn ahead (Poisson or
evenly spaced); each call carries a deadline of ``--deadline`` seconds counted from its
*scheduled* send time, and its latency is measured from that time too (no coordinated
omission: a client that falls behind shows up as latency, not as a lower rate). An
arrival the client could not send within ``--max-lag`` of its schedule is not sent and
counts as the error ``client-overrun`` (it says the client, not the server, fell behind).
The calls spread over ``--channels`` channels, each its own HTTP/2 connection (a local
subchannel pool, so grpcio does not share one connection among them): a server allows
about 100 concurrent streams per connection, and more would queue in this client. The
client never decodes an answer.

After ``--warmup`` seconds it prints ``{"event": "measuring"}``, after ``--duration``
more ``{"event": "measured"}`` (flushed, so a parent can sample server CPU at the
window's edges), then one JSON line with the calls *scheduled* inside the window:
scheduled, sent, ok, errors by status, the latencies of the successes (ms), the largest
send lag, and this process's CPU seconds over the window. Calls still in flight when the
window closes are awaited (their deadline bounds the wait) and counted.

``run_open_load`` runs this as a subprocess and returns an ``OpenLoopResult`` (the same
record as ``bench.loadgen.run_open_loop``) with the server processes' CPU seconds over
the window (``/proc``) and the client's own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench.grpcio_load import (
    PREDICT,
    REPO,
    cpu_seconds,
    emit,
    read_payloads,
    write_payloads,
)
from bench.loadgen import CLIENT_OVERRUN, OpenLoopResult

__all__ = ["OpenLoad", "generate", "main", "run_open_load"]


async def generate(
    targets: Sequence[str],
    payloads: Sequence[bytes],
    *,
    rate_per_s: float,
    duration_s: float,
    warmup_s: float = 2.0,
    deadline_s: float = 1.0,
    channels: int = 8,
    arrivals: str = "poisson",
    seed: int = 0,
    start_at: float | None = None,
    max_lag_s: float = 0.1,
    method: str = PREDICT,
    ready_timeout_s: float = 60.0,
) -> dict[str, Any]:
    """The open loop; prints the two window events and returns the window's figures."""
    chans = [
        grpc.aio.insecure_channel(
            targets[i % len(targets)], options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for i in range(channels)
    ]
    try:
        for ch in chans:
            await asyncio.wait_for(ch.channel_ready(), ready_timeout_s)
        calls = [ch.unary_unary(method) for ch in chans]
        loop = asyncio.get_running_loop()
        rng = random.Random(seed)
        latencies: list[float] = []
        codes: Counter[str] = Counter()
        first_error: list[str] = []
        counts = {"scheduled": 0, "sent": 0}
        tasks: set[asyncio.Task[None]] = set()
        max_lag = 0.0

        async def one(call: Any, payload: bytes, scheduled_at: float, measured: bool) -> None:
            # The deadline runs from the scheduled send time, as the latency does.
            timeout = deadline_s - (loop.time() - scheduled_at)
            try:
                await call(payload, timeout=timeout)
                code = "OK"
            except grpc.aio.AioRpcError as e:
                code = e.code().name
                if not first_error and code != "RESOURCE_EXHAUSTED":
                    first_error.append(f"{code}: {e.details()}")
            if not measured:
                return
            codes[code] += 1
            if code == "OK":
                latencies.append((loop.time() - scheduled_at) * 1000.0)

        if start_at is not None:  # a common start with other generator processes
            await asyncio.sleep(max(0.0, start_at - time.time()))
        start = loop.time() + 0.01
        measure_from = start + warmup_s
        stop_at = measure_from + duration_s
        interval = 1.0 / rate_per_s
        announced = False
        cpu_start = t_start = 0.0
        t = start
        i = 0
        while True:
            t += rng.expovariate(rate_per_s) if arrivals == "poisson" else interval
            if t >= stop_at:
                break
            now = loop.time()
            if t > now:
                await asyncio.sleep(t - now)
                now = loop.time()
            measured = t >= measure_from
            if measured and not announced:
                announced = True
                emit({"event": "measuring"})
                t_start, cpu_start = time.monotonic(), time.process_time()
            lag = now - t
            if measured:
                counts["scheduled"] += 1
            if lag > max_lag_s:
                if measured:
                    codes[CLIENT_OVERRUN] += 1
                continue
            if measured:
                counts["sent"] += 1
                max_lag = max(max_lag, lag)
            i += 1
            task = loop.create_task(
                one(calls[i % len(calls)], payloads[i % len(payloads)], t, measured)
            )
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if not announced:  # a window too short to schedule anything
            emit({"event": "measuring"})
            t_start, cpu_start = time.monotonic(), time.process_time()
        await asyncio.sleep(max(0.0, stop_at - loop.time()))
        if tasks:  # every one ends by its deadline
            await asyncio.gather(*tasks)
        t_end, cpu_end = time.monotonic(), time.process_time()
        emit({"event": "measured"})
    finally:
        for ch in chans:
            await ch.close()
    ok = codes.pop("OK", 0)
    return {
        "targets": list(targets),
        "rate_per_s": rate_per_s,
        "seconds": duration_s,
        "scheduled": counts["scheduled"],
        "sent": counts["sent"],
        "ok": ok,
        "errors": dict(codes),
        "first_error": first_error[0] if first_error else None,
        "latencies_ms": [round(x, 3) for x in latencies],
        "max_lag_ms": max_lag * 1000.0,
        "client_cpu_s": cpu_end - cpu_start,
        "window_s": t_end - t_start,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--target", action="append", required=True, help="host:port (repeat)")
    parser.add_argument("--rate", type=float, required=True, help="offered calls per second")
    parser.add_argument("--payloads", type=Path, required=True, help="base64 requests, a line each")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--deadline", type=float, default=1.0, help="per call, from its schedule")
    parser.add_argument("--channels", type=int, default=8, help="HTTP/2 connections")
    parser.add_argument("--arrivals", choices=("poisson", "uniform"), default="poisson")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start-at", type=float, default=None, help="wall-clock start (s)")
    parser.add_argument("--max-lag", type=float, default=0.1, help="later than this: not sent")
    parser.add_argument("--method", default=PREDICT, help="full gRPC method path")
    args = parser.parse_args(argv)
    if not (args.rate > 0 and args.duration > 0 and args.warmup >= 0 and args.deadline > 0):
        parser.error("--rate, --duration and --deadline must be > 0, --warmup >= 0")
    if args.channels < 1:
        parser.error("--channels must be >= 1")
    result = asyncio.run(
        generate(
            args.target,
            read_payloads(args.payloads),
            rate_per_s=args.rate,
            duration_s=args.duration,
            warmup_s=args.warmup,
            deadline_s=args.deadline,
            channels=args.channels,
            arrivals=args.arrivals,
            seed=args.seed,
            start_at=args.start_at,
            max_lag_s=args.max_lag,
            method=args.method,
        )
    )
    emit(result)
    return 0


# -- the parent: run it as a subprocess, read server CPU at the window's edges ------------


@dataclass(frozen=True)
class OpenLoad:
    """One open-loop generator run: what the client saw, and CPU over its window."""

    result: OpenLoopResult
    server_cpu_s: float  # of ``server_pids`` over the window
    client_cpu_s: float  # of the generator process over the window
    window_s: float
    first_error: str | None = None

    @property
    def server_cores(self) -> float:
        return self.server_cpu_s / self.window_s if self.window_s > 0 else float("nan")

    @property
    def client_cores(self) -> float:
        return self.client_cpu_s / self.window_s if self.window_s > 0 else float("nan")


def command(
    targets: Sequence[str],
    payloads: Path,
    *,
    rate_per_s: float,
    duration_s: float,
    warmup_s: float = 2.0,
    deadline_s: float = 1.0,
    channels: int = 8,
    seed: int = 0,
    start_at: float | None = None,
    arrivals: str = "poisson",
) -> list[str]:
    """The generator's command line (run it from the repository root)."""
    return [
        sys.executable, "-m", "bench.grpcio_open_loop",
        *(a for t in targets for a in ("--target", t)),
        "--payloads", str(payloads), "--rate", repr(rate_per_s),
        "--duration", repr(duration_s), "--warmup", repr(warmup_s),
        "--deadline", repr(deadline_s), "--channels", str(channels), "--seed", str(seed),
        "--arrivals", arrivals,
        *(["--start-at", repr(start_at)] if start_at is not None else []),
    ]  # fmt: skip


class Generator:
    """One generator process, started now. A thread reads its events as they come,
    sampling the CPU of ``server_pids`` when it announces the window's edges (so several
    generators can run at once); ``wait()`` returns its result."""

    def __init__(self, cmd: Sequence[str], server_pids: Sequence[int], budget_s: float) -> None:
        self.server_pids = list(server_pids)
        self.budget_s = budget_s
        self.proc = subprocess.Popen(
            list(cmd), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self._stderr: list[str] = []
        self._cpu: dict[str, float] = {}
        self._result: dict[str, Any] | None = None
        assert self.proc.stderr is not None
        self._drain = threading.Thread(
            target=self._stderr.extend, args=(self.proc.stderr,), daemon=True
        )
        self._drain.start()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._watchdog = threading.Timer(budget_s, self.proc.kill)
        self._watchdog.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue  # not ours (a library's print)
            if not isinstance(msg, dict):
                continue
            event = msg.get("event")
            if event in ("measuring", "measured"):
                self._cpu[event] = cpu_seconds(self.server_pids)
            elif "scheduled" in msg:
                self._result = msg

    def wait(self, name: str) -> OpenLoad:
        proc = self.proc
        try:
            code = proc.wait()
            self._reader.join(10)
        finally:
            self._watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            self._drain.join(5)
        result, cpu = self._result, self._cpu
        if code != 0 or result is None or len(cpu) != 2:
            tail = "".join(self._stderr[-30:])
            killed = f", killed after {self.budget_s:.0f} s" if code < 0 else ""
            raise RuntimeError(f"grpcio open-loop generator failed (exit {code}{killed}):\n{tail}")
        seconds = float(result["seconds"])
        return OpenLoad(
            result=OpenLoopResult(
                name=name,
                offered_per_s=float(result["rate_per_s"]),
                seconds=seconds,
                scheduled=int(result["scheduled"]),
                sent=int(result["sent"]),
                ok=int(result["ok"]),
                errors={str(k): int(v) for k, v in result["errors"].items()},
                latencies_ms=tuple(float(x) for x in result["latencies_ms"]),
                max_lag_ms=float(result["max_lag_ms"]),
            ),
            server_cpu_s=cpu["measured"] - cpu["measuring"],
            client_cpu_s=float(result["client_cpu_s"]),
            window_s=float(result["window_s"]),
            first_error=result["first_error"],
        )


def run_open_load(
    targets: Sequence[str],
    payloads: Sequence[bytes] | Path,
    *,
    rate_per_s: float,
    duration_s: float,
    name: str = "",
    server_pids: Sequence[int] = (),
    warmup_s: float = 2.0,
    deadline_s: float = 1.0,
    channels: int = 8,
    seed: int = 0,
    startup_timeout_s: float = 120.0,
) -> OpenLoad:
    """Run ``python -m bench.grpcio_open_loop`` against ``targets`` and wait for it."""
    with tempfile.TemporaryDirectory(prefix="grpcio-open-") as tmp:
        if not isinstance(payloads, Path):
            payloads = write_payloads(Path(tmp) / "payloads.b64", payloads)
        cmd = command(
            targets, payloads, rate_per_s=rate_per_s, duration_s=duration_s,
            warmup_s=warmup_s, deadline_s=deadline_s, channels=channels, seed=seed,
        )  # fmt: skip
        budget = startup_timeout_s + warmup_s + duration_s + deadline_s
        return Generator(cmd, server_pids, budget).wait(name)


if __name__ == "__main__":
    raise SystemExit(main())
