"""Benchmark: what the server spends per request, against the transport floor.

    python -m bench.server_cost [--duration 6] [--warmup 2] [--concurrency 64] [--rounds 3]
        [--setups echo,standalone,cluster,smart]

Every load comes from another process: grpcio's asyncio client (C-core, ``bench.grpcio_load``)
for the servers, and shardline's own Python SDK (``sdk`` mode of this module) for the smart
client against direct-to-owner. Side by side, in alternating rounds (the median round by
throughput stands for each), ``payment_fraud`` requests over users whose decision is
``payment_fraud@1`` with no shadow copy:

  echo grpclib      a bare grpclib server answering fixed bytes of a Predict answer's size
  echo grpc.aio     the same on grpcio's asyncio server (C-core HTTP/2)
  echo node stack   the same bare grpclib server on a node's transport: uvloop, coalesced
                    writes, ``sdk.http2.LeanH2Connection`` instead of h2
  standalone        one node, Predict
  hops=0            3-node cluster, the client calls an owner of payment_fraud@1
  hops=1            3-node cluster, the client calls the node that owns none (it forwards)
  smart / direct    the Python SDK: SmartClient (routes to an owner itself) vs Client
                    pointed at an owner, at 64 in flight and at 1
  client            one node, pre-encoded requests, answers not decoded: the client's own
                    CPU per request on grpcio vs on the SDK's transport (grpclib)

Columns: req/s, p50/p99 (client side), server CPU ms per request summed over every server
process (``/proc/<pid>/stat``, sampled at the measured window's edges), and for hops=1 the
ingress process's own CPU per request. Ratios printed under the table are the issue's
targets: ingress CPU per forwarded request ÷ grpclib echo (≤ 1.25), hops=1 ÷ standalone
throughput (≥ 0.75), standalone Predict CPU ÷ grpclib echo (≤ 1.3), smart ÷ direct
throughput at 64 in flight (≥ 0.95) and p50 at 1 in flight (≤ 1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.echo_server import ECHO_PATH
from bench.grpcio_load import LoadRun, cpu_seconds, fraud_payloads, run_load
from bench.perf_analyzer import cluster, standalone
from bench.serving import start_echo

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Row:
    name: str
    run: LoadRun
    ingress_cpu_ms: float | None = None


def _median(runs: list[Row]) -> Row:
    return sorted(runs, key=lambda r: r.run.rps)[len(runs) // 2]


# -- the SDK load (child process) ----------------------------------------------------------


async def _sdk_load(
    mode: str, targets: list[str], concurrency: int, duration_s: float, warmup_s: float
) -> dict[str, Any]:
    from bench.cluster_routing import plain_users
    from bench.drain_clients import FRAUD
    from shardline.node.sdk.client import Client, SmartClient

    users = plain_users(256)
    client: Any = SmartClient(targets) if mode == "smart" else Client(targets[0])
    payloads = fraud_payloads() if mode == "raw" else []
    if mode == "smart":
        await client.refresh()
    latencies: list[float] = []
    errors = 0
    stop_at = time.monotonic() + warmup_s + duration_s
    start_at = time.monotonic() + warmup_s

    async def worker(w: int) -> None:
        nonlocal errors
        i = w
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            try:
                if payloads:  # the transport alone: pre-encoded requests, answers not decoded
                    await client.predict_raw(payloads[i % len(payloads)])
                else:
                    await client.predict("payment_fraud", FRAUD, user_id=users[i % len(users)])
            except Exception:
                errors += 1
            else:
                if t0 >= start_mark[0]:
                    latencies.append(time.perf_counter() - t0)
            i += concurrency

    start_mark = [float("inf")]

    own_cpu = [0.0, 0.0]

    async def marks() -> None:
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        start_mark[0] = time.perf_counter()
        own_cpu[0] = time.process_time()
        print(json.dumps({"event": "measuring"}), flush=True)
        await asyncio.sleep(duration_s)
        own_cpu[1] = time.process_time()
        print(json.dumps({"event": "measured"}), flush=True)

    await asyncio.gather(marks(), *(worker(w) for w in range(concurrency)))
    client.close()
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n,
        "errors": errors,
        "rps": n / duration_s,
        "p50_ms": 1000 * latencies[n // 2] if n else float("nan"),
        "p99_ms": 1000 * latencies[min(n - 1, int(n * 0.99))] if n else float("nan"),
        "client_cpu_ms_per_request": 1000 * (own_cpu[1] - own_cpu[0]) / n if n else None,
    }


def run_sdk(
    mode: str,
    targets: list[str],
    pids: Sequence[int],
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
) -> LoadRun:
    cmd = [sys.executable, "-m", "bench.server_cost", "sdk", "--mode", mode,
           "--concurrency", str(concurrency), "--duration", str(duration_s),
           "--warmup", str(warmup_s), *targets]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    watchdog = threading.Timer(120 + warmup_s + duration_s, proc.kill)
    watchdog.start()
    cpu: dict[str, float] = {}
    result: dict[str, Any] = {}
    try:
        for line in proc.stdout:
            msg = json.loads(line)
            if msg.get("event") in ("measuring", "measured"):
                cpu[msg["event"]] = cpu_seconds(pids)
            elif "requests" in msg:
                result = msg
        proc.wait()
    finally:
        watchdog.cancel()
    if not result or len(cpu) != 2:
        raise RuntimeError(f"sdk load ({mode}) failed with exit code {proc.returncode}")
    errors = {"error": result["errors"]} if result["errors"] else {}
    return LoadRun(
        result["requests"], errors, duration_s, result["rps"], result["p50_ms"],
        result["p99_ms"], cpu["measured"] - cpu["measuring"],
        result["client_cpu_ms_per_request"],
    )  # fmt: skip


# -- the bench -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["sdk"]:
        sdk = argparse.ArgumentParser(prog="bench.server_cost sdk")
        sdk.add_argument("--mode", choices=["smart", "direct", "raw"], required=True)
        sdk.add_argument("--concurrency", type=int, default=64)
        sdk.add_argument("--duration", type=float, default=6.0)
        sdk.add_argument("--warmup", type=float, default=2.0)
        sdk.add_argument("targets", nargs="+")
        a = sdk.parse_args(args_in[1:])
        out = asyncio.run(_sdk_load(a.mode, a.targets, a.concurrency, a.duration, a.warmup))
        print(json.dumps(out), flush=True)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--setups", default="echo,standalone,cluster,smart,client")
    parser.add_argument(
        "--node-args", default="",
        help="extra `shardline serve` arguments for every node, e.g. "
        "'--event-loop asyncio --no-coalesce-writes --peer-transport grpc' (the state "
        "before those changes)",
    )  # fmt: skip
    args = parser.parse_args(args_in)
    setups = set(args.setups.split(","))
    node_args = args.node_args.split()
    console = Console(width=max(Console().width, 140))  # one line per setup, even in a log
    payloads = fraud_payloads()
    kw = {"concurrency": args.concurrency, "duration_s": args.duration, "warmup_s": args.warmup}
    rows: dict[str, list[Row]] = {}

    def grpcio(name: str, target: str, pids: list[int], method: str | None = None,
               ingress: int | None = None) -> None:  # fmt: skip
        run = run_load(
            [target], server_pids=pids, payloads=payloads,
            part_pids=[ingress] if ingress is not None else (),
            **({"method": method} if method else {}), **kw,  # type: ignore[arg-type]
        )  # fmt: skip
        rows.setdefault(name, []).append(Row(name, run, run.part_cpu_ms_per_request))

    procs: list[subprocess.Popen[str]] = []
    try:
        if "echo" in setups:
            reply = 120  # bytes: about a payment_fraud Predict answer
            echo, port = start_echo(reply)
            echo_aio, port_aio = start_echo(reply, "--grpcio")
            echo_node, port_node = start_echo(reply, "--node-stack")
            procs += [echo, echo_aio, echo_node]
            for _ in range(args.rounds):
                grpcio("echo grpclib", f"127.0.0.1:{port}", [echo.pid], ECHO_PATH)
                grpcio("echo grpc.aio", f"127.0.0.1:{port_aio}", [echo_aio.pid], ECHO_PATH)
                grpcio("echo node stack", f"127.0.0.1:{port_node}", [echo_node.pid], ECHO_PATH)
        if "standalone" in setups or "client" in setups:
            with standalone(node_args) as (node,):
                for _ in range(args.rounds):
                    if "standalone" in setups:
                        grpcio("standalone", node.target, node.server_pids)
                    if "client" in setups:  # the client's own CPU: grpcio vs the SDK's grpclib
                        grpcio("client: grpcio (raw)", node.target, node.server_pids)
                        name = "client: SDK on grpclib (raw)"
                        r = run_sdk("raw", [node.target], node.server_pids,
                                    concurrency=args.concurrency, duration_s=args.duration,
                                    warmup_s=args.warmup)  # fmt: skip
                        rows.setdefault(name, []).append(Row(name, r))
        if "cluster" in setups or "smart" in setups:
            with cluster(node_args) as (owner, other):
                pids = owner.server_pids
                ingress_pid = pid_of(other.target, pids)
                for _ in range(args.rounds):
                    if "cluster" in setups:
                        grpcio("hops=0", owner.target, pids)
                        grpcio("hops=1", other.target, pids, ingress=ingress_pid)
                    if "smart" in setups:
                        for c in (args.concurrency, 1):
                            for mode, targets in (("direct", [owner.target]),
                                                  ("smart", [other.target])):  # fmt: skip
                                name = f"{mode} (SDK, {c} in flight)"
                                r = run_sdk(
                                    mode, targets, pids, concurrency=c,
                                    duration_s=args.duration, warmup_s=args.warmup,
                                )  # fmt: skip
                                rows.setdefault(name, []).append(Row(name, r))
    finally:
        for p in procs:
            p.kill()
            p.wait()
    console.print(report(rows, args))
    return 0


def pid_of(target: str, pids: list[int]) -> int:
    """The server process listening on ``target``'s port (its sockets' inodes, matched
    against the listening sockets in /proc/<pid>/net/tcp*)."""
    port = target.rpartition(":")[2]
    for pid in pids:
        if _listens(pid, int(port)):
            return pid
    raise RuntimeError(f"no server process listens on {target}")


def _listens(pid: int, port: int) -> bool:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            link = str(fd.readlink())
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            parts = line.split()
            local, state, inode = parts[1], parts[3], parts[9]
            if state == "0A" and int(local.rpartition(":")[2], 16) == port and inode in inodes:
                return True
    return False


def report(rows: dict[str, list[Row]], args: argparse.Namespace) -> Table:
    table = Table(
        title=f"Server CPU per request ({args.concurrency} in flight unless named, "
        f"{args.duration:g} s measured, median of {args.rounds} alternating rounds"
        + (f"; nodes: {args.node_args}" if args.node_args else "")
        + ")"
    )
    for col in ("setup", "req/s", "p50 ms", "p99 ms", "errors", "server CPU ms/req",
                "ingress CPU ms/req", "client CPU ms/req"):  # fmt: skip
        table.add_column(col, justify="left" if col == "setup" else "right")
    med = {name: _median(runs) for name, runs in rows.items()}
    for name, row in med.items():
        r = row.run
        table.add_row(
            name, f"{r.rps:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", str(r.error_count),
            f"{r.server_cpu_ms_per_request:.3f}",
            "" if row.ingress_cpu_ms is None else f"{row.ingress_cpu_ms:.3f}",
            "" if r.client_cpu_ms_per_request is None else f"{r.client_cpu_ms_per_request:.3f}",
        )  # fmt: skip
    lines = []

    def cpu(name: str) -> float | None:
        return med[name].run.server_cpu_ms_per_request if name in med else None

    echo = cpu("echo grpclib")
    if echo and "hops=1" in med and med["hops=1"].ingress_cpu_ms is not None:
        lines.append(f"ingress CPU per forwarded request / grpclib echo: "
                     f"{med['hops=1'].ingress_cpu_ms / echo:.2f} (target <= 1.25)")  # fmt: skip
    if "hops=1" in med and "standalone" in med:
        ratio = med["hops=1"].run.rps / med["standalone"].run.rps
        lines.append(f"hops=1 / standalone throughput: {ratio:.2f} (target >= 0.75)")
    if echo and "standalone" in med:
        standalone_cpu = med["standalone"].run.server_cpu_ms_per_request
        lines.append(f"standalone Predict CPU / grpclib echo: {standalone_cpu / echo:.2f} "
                     "(target <= 1.3)")  # fmt: skip
    stack = cpu("echo node stack")
    if stack and "standalone" in med:  # what shardline adds on its own transport
        standalone_cpu = med["standalone"].run.server_cpu_ms_per_request
        ingress = med["hops=1"].ingress_cpu_ms if "hops=1" in med else None
        lines.append(
            "on the node's own transport (echo node stack): "
            f"standalone {standalone_cpu / stack:.2f}x"
            + (f", ingress per forward {ingress / stack:.2f}x" if ingress else "")
        )
    c = args.concurrency
    smart, direct = med.get(f"smart (SDK, {c} in flight)"), med.get(f"direct (SDK, {c} in flight)")
    if smart and direct:
        lines.append(f"smart / direct throughput at {c} in flight: "
                     f"{smart.run.rps / direct.run.rps:.2f} (target >= 0.95)")  # fmt: skip
    s1, d1 = med.get("smart (SDK, 1 in flight)"), med.get("direct (SDK, 1 in flight)")
    if s1 and d1:
        lines.append(f"smart / direct p50 at 1 in flight: "
                     f"{s1.run.p50_ms / d1.run.p50_ms:.2f} (target <= 1)")  # fmt: skip
    table.caption = "\n".join(lines)
    return table


if __name__ == "__main__":
    raise SystemExit(main())
