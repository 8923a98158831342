"""Benchmark: what a node costs over the bare transport, and what batching buys.

    python -m bench.serving [--duration 10] [--concurrency 64]

Side by side, in one run on this machine, server and client in separate processes:
  (a) a bare grpclib server answering fixed bytes of the size of a Predict answer,
      called with request bytes of the size of a Predict request;
  (b) ``Predict`` on the shipped ``payment_fraud`` objective of a standalone node: one
      prediction per request, plus a shadow copy for 25 % of users (1.25 per request);
  (c) the same objective with its shadows off (exactly one prediction per request);
and the ratios (b)/(a) and (c)/(a) of their throughput (target >= 0.8); and
  (d) the same bare server on grpcio's asyncio server (C-core HTTP/2) instead of grpclib,
      same client: what a change of the node's transport could buy at most.
Then, in this process, the
``payment_fraud@1`` model actor with dynamic batching vs ``max_batch_size=1`` at the same
concurrency (target >= 3x).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from grpclib.client import Channel, UnaryUnaryMethod
from rich.console import Console
from rich.table import Table

from bench.echo_server import ECHO_PATH
from bench.loadgen import LoadResult, run_closed_loop
from shardline.node.sdk.client import Client, build_request
from shardline.node.sdk.codec import RawBytes, WireCodec
from shardline.node.serving.actors import ActorSystem
from shardline.node.serving.model_actor import Job, ModelActor
from shardline.workflows.batching import BatchPolicy
from shardline.workflows.devices import DeviceExecutors
from shardline.workflows.loader import LoadedWorkflow, load_package
from shardline.workflows.sdk import StaticContext
from tests.procs import EXAMPLES, REPO, NodeProcess

FRAUD = {
    "amount": 912.5,
    "currency": "USD",
    "country_mismatch": True,
    "account_age_days": 3.0,
    "tx_last_24h": 9,
    "card_present": False,
}


def start_echo(reply_bytes: int, *extra: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.echo_server", "0", str(reply_bytes), *extra],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r":(\d+)$", line.strip())
    if not m:
        proc.kill()
        raise RuntimeError(f"echo server did not start: {line!r}")
    return proc, int(m.group(1))


def merge(name: str, rounds: list[LoadResult]) -> LoadResult:
    """The median round (by throughput) stands for the setup."""
    ordered = sorted(rounds, key=lambda r: r.rps)
    mid = ordered[len(ordered) // 2]
    return LoadResult(
        name, mid.requests, sum(r.errors for r in rounds), mid.seconds, mid.p50_ms, mid.p99_ms
    )


def without_shadows(root: Path) -> Path:
    """An objectives dir holding the shipped ``payment_fraud`` objective minus its shadows."""
    path = EXAMPLES / "objectives" / "payment_fraud.toml"
    config = tomllib.loads(path.read_text())
    config.pop("shadows", None)
    (root / "payment_fraud.json").write_text(json.dumps(config))
    return root


async def transport_vs_predict(
    duration_s: float, concurrency: int, rounds: int
) -> list[LoadResult]:
    """The servers stay up; rounds alternate (a), (b), (c), (a), (b), (c)… so background
    load on a shared machine hits all alike; the median round of each is reported."""
    args = ["--cpu-threads", "1"]
    node = NodeProcess.start(workflows=EXAMPLES, metrics=False, args=args)
    tmp = tempfile.TemporaryDirectory(prefix="shardline-bench-")
    plain = NodeProcess.start(
        workflows=EXAMPLES, objectives=without_shadows(Path(tmp.name)), metrics=False, args=args
    )
    echo: subprocess.Popen[str] | None = None
    echo_grpcio: subprocess.Popen[str] | None = None
    try:
        requests = [
            build_request("payment_fraud", FRAUD, user_id=f"user-{i}", country="US")
            for i in range(1000)
        ]
        async with Client(node.target) as client, Client(plain.target) as plain_client:
            reply = await client.predict_raw(requests[0])
            echo, port = start_echo(len(reply))
            channel = Channel("127.0.0.1", port, codec=WireCodec())
            method = UnaryUnaryMethod[Any, Any](channel, ECHO_PATH, RawBytes, RawBytes)
            echo_grpcio, port_grpcio = start_echo(len(reply), "--grpcio")
            channel_grpcio = Channel("127.0.0.1", port_grpcio, codec=WireCodec())
            method_grpcio = UnaryUnaryMethod[Any, Any](
                channel_grpcio, ECHO_PATH, RawBytes, RawBytes
            )
            payload = b"y" * len(requests[0])
            counter = iter(range(10**12))

            async def predict() -> object:
                return await client.predict_raw(requests[next(counter) % len(requests)])

            async def predict_plain() -> object:
                return await plain_client.predict_raw(requests[next(counter) % len(requests)])

            async def echo_call() -> object:
                return await method(payload, timeout=10)

            async def echo_grpcio_call() -> object:
                return await method_grpcio(payload, timeout=10)

            setups = {"a": echo_call, "b": predict, "c": predict_plain, "d": echo_grpcio_call}
            rounds_of: dict[str, list[LoadResult]] = {k: [] for k in setups}
            per_round = duration_s / rounds
            for _ in range(rounds):
                for key, call in setups.items():
                    rounds_of[key].append(
                        await run_closed_loop(
                            key, call, concurrency=concurrency, duration_s=per_round
                        )
                    )
            channel.close()
            channel_grpcio.close()
    finally:
        node.stop()
        plain.stop()
        tmp.cleanup()
        for proc in (echo, echo_grpcio):
            if proc is not None:
                proc.terminate()
                proc.wait()
    return [
        merge(f"(a) bare grpclib, {len(payload)} B in / {len(reply)} B out", rounds_of["a"]),
        merge("(b) Predict payment_fraud (shipped objective)", rounds_of["b"]),
        merge("(c) Predict payment_fraud, shadows off", rounds_of["c"]),
        merge("(d) bare grpcio (grpc.aio server), same bytes", rounds_of["d"]),
    ]


async def measure_actor(
    label: str,
    loaded: LoadedWorkflow,
    job: Job,
    policy: BatchPolicy,
    duration_s: float,
    concurrency: int,
) -> LoadResult:
    system = ActorSystem("bench")
    executors = DeviceExecutors(cpu_threads=1)
    ref = await system.spawn(
        "model", lambda: ModelActor(loaded, executors, policy), mailbox_size=4096
    )

    async def ask() -> object:
        return await ref.ask(job, timeout_s=10)

    try:
        return await run_closed_loop(label, ask, concurrency=concurrency, duration_s=duration_s)
    finally:
        await system.shutdown()
        executors.shutdown()


async def batching_on_vs_off(duration_s: float, concurrency: int) -> list[LoadResult]:
    loaded = load_package(EXAMPLES / "payment_fraud" / "v1")
    ctx_fields, inputs = loaded.workflow.example_request()
    job = Job(StaticContext.from_fields(ctx_fields), inputs)
    b = loaded.manifest.batching
    return [
        await measure_actor(
            f"model actor, batching ({b.max_batch_size}, {b.max_delay_ms} ms)",
            loaded,
            job,
            BatchPolicy(b.max_batch_size, b.max_delay_ms),
            duration_s,
            concurrency,
        ),
        await measure_actor(
            "model actor, max_batch_size=1",
            loaded,
            job,
            BatchPolicy(1, 0.0),
            duration_s,
            concurrency,
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per setup")
    args = parser.parse_args()
    console = Console()
    console.print(f"machine: {Path('/proc/cpuinfo').read_text().count('processor')} CPUs")
    transport = asyncio.run(transport_vs_predict(args.duration, args.concurrency, args.rounds))
    batching = asyncio.run(batching_on_vs_off(args.duration / 2, args.concurrency))
    table = Table(title=f"{args.concurrency} in flight, {args.duration:g} s per setup")
    for col in ("setup", "req/s", "p50 ms", "p99 ms", "errors"):
        table.add_column(col)
    for r in (*transport, *batching):
        table.add_row(r.name, f"{r.rps:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", str(r.errors))
    console.print(table)
    echo, predict, plain, grpcio_echo = transport
    on, off = batching
    console.print(
        f"Predict / bare transport throughput: {predict.rps / echo.rps:.2f} with the shipped "
        f"objective (1.25 predictions per request), {plain.rps / echo.rps:.2f} with its "
        "shadows off (target >= 0.8)"
    )
    console.print(
        f"bare grpcio / bare grpclib throughput: {grpcio_echo.rps / echo.rps:.2f} (what the "
        "node's transport alone could gain from a change to grpcio)"
    )
    console.print(f"batching on / off throughput: {on.rps / off.rps:.2f}x (target >= 3x)")


if __name__ == "__main__":
    main()
