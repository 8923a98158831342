"""A closed-loop gRPC load generator on grpcio's asyncio API (C-core), in its own process.

    python -m bench.grpcio_load --target HOST:PORT [--target ...] [--concurrency 64]
        [--duration 15] [--warmup 3] [--method /shardline.v1.Inference/Predict]
        [--payloads FILE] [--timeout 5] [--metadata KEY=VALUE ...]

``--concurrency`` calls stay in flight (spread over one channel per ``--target``), each
sending the next of the pre-encoded request messages in ``--payloads`` (one base64 line
per message; by default ``payment_fraud`` PredictRequests over users whose decision is
``payment_fraud@1`` with no shadow copy, so every request does the same model work). The
client never decodes an answer: it measures the server and the wire, not a client library.

After ``--warmup`` seconds it prints ``{"event": "measuring"}``, after ``--duration``
more ``{"event": "measured"}`` (both flushed at that moment, so a parent can sample
server CPU at the window's edges), then one JSON line with what completed inside the
window: requests (OK), errors by status code, req/s, p50/p99 ms, and the client's own CPU
per request. Calls still in flight when the window closes finish but are not counted.

``run_load`` runs this as a subprocess and reads the given server processes' CPU time
(``/proc/<pid>/stat``: utime + stime) exactly at the window's edges: server CPU ms per
request over the same requests that were counted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

PREDICT = "/shardline.v1.Inference/Predict"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
REPO = Path(__file__).resolve().parent.parent


# -- the load generator (child process) -----------------------------------------------------


def write_payloads(path: Path, payloads: Iterable[bytes]) -> Path:
    """One base64 line per encoded request message (what ``--payloads`` reads)."""
    path.write_text("".join(base64.b64encode(p).decode() + "\n" for p in payloads))
    return path


def read_payloads(path: Path) -> list[bytes]:
    out = [base64.b64decode(line) for line in path.read_text().split() if line]
    if not out:
        raise ValueError(f"{path}: no payloads (one base64-encoded request per line)")
    return out


def fraud_payloads(users: int = 256) -> list[bytes]:
    """``payment_fraud`` PredictRequests over ``users`` users whose decision is
    ``payment_fraud@1`` without a shadow copy (the same work per request)."""
    from bench.cluster_routing import plain_users
    from bench.drain_clients import FRAUD
    from shardline.node.sdk.client import build_request

    return [build_request("payment_fraud", FRAUD, user_id=u) for u in plain_users(users)]


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def generate(
    targets: Sequence[str],
    payloads: Sequence[bytes],
    *,
    method: str = PREDICT,
    concurrency: int = 64,
    duration_s: float = 15.0,
    warmup_s: float = 3.0,
    timeout_s: float = 5.0,
    metadata: Sequence[tuple[str, str]] = (),
    ready_timeout_s: float = 60.0,
) -> dict[str, Any]:
    """The closed loop; prints the two window events and returns the window's figures."""
    channels = [grpc.aio.insecure_channel(t) for t in targets]
    try:
        for ch in channels:
            await asyncio.wait_for(ch.channel_ready(), ready_timeout_s)
        calls = [ch.unary_unary(method) for ch in channels]  # bytes in, bytes out
        latencies: list[float] = []
        codes: Counter[str] = Counter()
        outside: Counter[str] = Counter()
        first_error: list[str] = []
        counting = False
        stop = asyncio.Event()
        md = tuple(metadata) or None

        async def worker(k: int) -> None:
            call = calls[k % len(calls)]
            i = k
            while not stop.is_set():
                payload = payloads[i % len(payloads)]
                i += concurrency
                t0 = time.perf_counter()
                try:
                    await call(payload, timeout=timeout_s, metadata=md)
                    code = "OK"
                except grpc.aio.AioRpcError as e:
                    code = e.code().name
                    if not first_error:
                        first_error.append(f"{code}: {e.details()}")
                if not counting:
                    outside[code] += 1
                    continue
                codes[code] += 1
                if code == "OK":
                    latencies.append(time.perf_counter() - t0)

        workers = [asyncio.create_task(worker(k)) for k in range(concurrency)]
        await asyncio.sleep(warmup_s)
        counting = True
        emit({"event": "measuring"})
        t_start, cpu_start = time.monotonic(), time.process_time()
        await asyncio.sleep(duration_s)
        counting = False
        t_end, cpu_end = time.monotonic(), time.process_time()
        emit({"event": "measured"})
        stop.set()
        await asyncio.gather(*workers)
    finally:
        for ch in channels:
            await ch.close()
    seconds = t_end - t_start
    ok = codes.pop("OK", 0)
    lat = np.array(latencies) * 1000.0 if latencies else np.zeros(1)
    outside.pop("OK", None)
    return {
        "targets": list(targets),
        "method": method,
        "concurrency": concurrency,
        "requests": ok,
        "errors": dict(codes),
        "errors_outside_window": dict(outside),
        "first_error": first_error[0] if first_error else None,
        "seconds": seconds,
        "rps": ok / seconds if seconds > 0 else 0.0,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "client_cpu_ms_per_request": (cpu_end - cpu_start) * 1000.0 / ok if ok else None,
    }


def _metadata(items: Sequence[str]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--metadata {item!r}: expected KEY=VALUE")
        out.append((key.lower(), value))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--target", action="append", required=True, help="host:port (repeat)")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--method", default=PREDICT, help="full gRPC method path")
    parser.add_argument("--payloads", type=Path, help="base64 request messages, one a line")
    parser.add_argument("--timeout", type=float, default=5.0, help="deadline per call (s)")
    parser.add_argument("--metadata", action="append", default=[], help="KEY=VALUE (repeat)")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("--concurrency >= 1, --duration > 0 and --warmup >= 0 are required")
    payloads = read_payloads(args.payloads) if args.payloads else fraud_payloads()
    result = asyncio.run(
        generate(
            args.target,
            payloads,
            method=args.method,
            concurrency=args.concurrency,
            duration_s=args.duration,
            warmup_s=args.warmup,
            timeout_s=args.timeout,
            metadata=_metadata(args.metadata),
        )
    )
    emit(result)
    return 0


# -- the parent: run it as a subprocess, read server CPU at the window's edges ------------


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of every process in ``pids`` (all its threads), in seconds."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            raise RuntimeError(f"server process {pid} is gone") from None
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class LoadRun:
    """One load generator run; ``server_cpu_s`` spent by ``server_pids`` in the window."""

    requests: int
    errors: dict[str, int]
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    server_cpu_s: float
    client_cpu_ms_per_request: float | None
    first_error: str | None = None
    errors_outside_window: dict[str, int] = field(default_factory=dict)
    part_cpu_s: float | None = None  # of ``part_pids`` (one of the servers, e.g. the ingress)

    @property
    def part_cpu_ms_per_request(self) -> float | None:
        if self.part_cpu_s is None or not self.requests:
            return None
        return self.part_cpu_s * 1000.0 / self.requests

    @property
    def server_cpu_ms_per_request(self) -> float:
        return self.server_cpu_s * 1000.0 / self.requests if self.requests else float("nan")

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def run_load(
    targets: Sequence[str],
    *,
    server_pids: Sequence[int] = (),
    payloads: Sequence[bytes] | Path | None = None,
    method: str = PREDICT,
    concurrency: int = 64,
    duration_s: float = 15.0,
    warmup_s: float = 3.0,
    timeout_s: float = 5.0,
    metadata: Sequence[tuple[str, str]] = (),
    startup_timeout_s: float = 120.0,
    part_pids: Sequence[int] = (),
) -> LoadRun:
    """Run ``python -m bench.grpcio_load`` against ``targets``; sample the CPU time of
    ``server_pids`` (and apart, of ``part_pids``) when it announces the measured window's
    start and end."""
    with tempfile.TemporaryDirectory(prefix="grpcio-load-") as tmp:
        cmd = [
            sys.executable, "-m", "bench.grpcio_load",
            *(a for t in targets for a in ("--target", t)),
            "--method", method, "--concurrency", str(concurrency),
            "--duration", str(duration_s), "--warmup", str(warmup_s),
            "--timeout", str(timeout_s),
            *(a for k, v in metadata for a in ("--metadata", f"{k}={v}")),
        ]  # fmt: skip
        if isinstance(payloads, Path):
            cmd += ["--payloads", str(payloads)]
        elif payloads is not None:
            cmd += ["--payloads", str(write_payloads(Path(tmp) / "payloads.b64", payloads))]
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stderr is not None
        stderr: list[str] = []
        drain = threading.Thread(target=stderr.extend, args=(proc.stderr,), daemon=True)
        drain.start()
        budget = startup_timeout_s + warmup_s + duration_s + timeout_s
        watchdog = threading.Timer(budget, proc.kill)
        watchdog.start()
        cpu: dict[str, float] = {}
        result: dict[str, Any] | None = None
        try:
            for line in proc.stdout:
                try:
                    msg = json.loads(line)
                except json.JSONDecodeError:
                    continue  # not ours (a library's print)
                event = msg.get("event") if isinstance(msg, dict) else None
                if event in ("measuring", "measured"):
                    cpu[event] = cpu_seconds(server_pids)
                    if part_pids:
                        cpu[f"part-{event}"] = cpu_seconds(part_pids)
                elif isinstance(msg, dict) and "requests" in msg:
                    result = msg
            code = proc.wait()
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            drain.join(5)
        if code != 0 or result is None or len(cpu) != (4 if part_pids else 2):
            tail = "".join(stderr[-30:])
            raise RuntimeError(
                f"grpcio load generator failed (exit status {code}"
                f"{', killed after ' + format(budget, '.0f') + ' s' if code < 0 else ''}):\n"
                f"{tail}"
            )
    return LoadRun(
        requests=int(result["requests"]),
        errors={str(k): int(v) for k, v in result["errors"].items()},
        seconds=float(result["seconds"]),
        rps=float(result["rps"]),
        p50_ms=float(result["p50_ms"]),
        p99_ms=float(result["p99_ms"]),
        server_cpu_s=cpu["measured"] - cpu["measuring"],
        client_cpu_ms_per_request=result["client_cpu_ms_per_request"],
        first_error=result["first_error"],
        errors_outside_window={str(k): int(v) for k, v in result["errors_outside_window"].items()},
        part_cpu_s=cpu["part-measured"] - cpu["part-measuring"] if part_pids else None,
    )


if __name__ == "__main__":
    raise SystemExit(main())
