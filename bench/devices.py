"""Benchmark: a model actor's batch throughput on the CPU and, where there is one, a GPU.

    python -m bench.devices [--duration 5] [--concurrency 256]

For every example workflow package, side by side in one run: the model actor (dynamic
batching as its manifest says, forward on the device's worker thread) loaded on the CPU
and on ``cuda:0`` (pinned host memory, batches moved to the device), ``--concurrency``
asks in flight; requests per second, p50/p99 and the ratio GPU/CPU. Without CUDA the GPU
rows say so and only the CPU is measured.
"""

from __future__ import annotations

import argparse
import asyncio

import torch
from rich.console import Console
from rich.table import Table

from bench.serving import measure_actor
from shardline.node.serving.model_actor import Job
from shardline.workflows.batching import BatchPolicy
from shardline.workflows.loader import load_package
from shardline.workflows.sdk import StaticContext
from tests.procs import EXAMPLES


async def measure(duration_s: float, concurrency: int) -> list[tuple[str, str, float, str]]:
    """(package, device, req/s, latency text) per package and device."""
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda:0"))
    rows = []
    for package in sorted(EXAMPLES.glob("*/v*")):
        for device in devices:
            loaded = load_package(package, device=device)
            ctx_fields, inputs = loaded.workflow.example_request()
            b = loaded.manifest.batching
            result = await measure_actor(
                f"{loaded.manifest.model_key} on {device}",
                loaded,
                Job(StaticContext.from_fields(ctx_fields), inputs),
                BatchPolicy(b.max_batch_size, b.max_delay_ms),
                duration_s,
                concurrency,
            )
            latency = f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms"
            rows.append((loaded.manifest.model_key, str(loaded.device), result.rps, latency))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, default=256)
    args = parser.parse_args()
    console = Console()
    if torch.cuda.is_available():
        console.print(f"GPU: {torch.cuda.get_device_name(0)}")
    else:
        console.print("no CUDA device here: CPU rows only (run this where there is a GPU)")
    rows = asyncio.run(measure(args.duration, args.concurrency))
    table = Table(title=f"model actor, {args.concurrency} in flight, {args.duration:g} s each")
    for col in ("model", "device", "req/s", "latency", "GPU / CPU"):
        table.add_column(col)
    cpu_rate = {key: rps for key, device, rps, _ in rows if device == "cpu"}
    for key, device, rps, latency in rows:
        ratio = f"{rps / cpu_rate[key]:.2f}x" if device != "cpu" and cpu_rate.get(key) else ""
        table.add_row(key, device, f"{rps:,.0f}", latency, ratio)
    console.print(table)


if __name__ == "__main__":
    main()
