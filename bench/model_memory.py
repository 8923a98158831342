"""Benchmark: resident memory a node spends per loaded model, against the weights' file size.

    python -m bench.model_memory [--models 4] [--megabytes 100]

Generates ``--models`` workflow packages of ``--megabytes`` MB of weights each (one big
linear layer, under a temp dir; nothing committed), then starts two real standalone nodes
side by side: one serving a single tiny generated package (the baseline: interpreter,
torch, gRPC) and one serving all the big ones. RSS is read from ``/proc/PID/status`` after
one request to every model (weights are mapped from their file; a request reads them all).
Prints RSS per loaded model and its ratio to the file size (1.0 = the weights are held
once; before the fix a model cost ~2x).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from shardline.node.sdk.client import Client
from tests.big_packages import make_big_package
from tests.procs import NodeProcess


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        return next(int(ln.split()[1]) * 1024 for ln in status if ln.startswith("VmRSS:"))


def node_rss(workflows: Path, names: list[str]) -> int:
    """RSS of a standalone node serving ``workflows`` after one request to each model (a
    request reads every weight page, so mapped weights count as resident)."""
    objectives = workflows / "objectives"
    objectives.mkdir()
    for name in names:
        (objectives / f"{name}.toml").write_text(f'name = "{name}"\ndefault = "{name}@1"\n')
    node = NodeProcess.start(
        ["--cpu-threads", "1"], workflows=workflows, objectives=objectives, metrics=False
    )
    try:

        async def touch() -> None:
            async with Client(node.target) as client:
                for name in names:
                    await client.predict(name, {"x": np.ones(8, dtype=np.float32)}, user_id="u")

        asyncio.run(touch())
        return rss_bytes(node.proc.pid)
    finally:
        node.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.model_memory")
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--megabytes", type=float, default=100.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        base_dir, big_dir = Path(tmp) / "base", Path(tmp) / "big"
        make_big_package(base_dir, "tiny", 0.01)
        sizes = []
        for i in range(args.models):
            pkg = make_big_package(big_dir, f"big{i}", args.megabytes)
            sizes.append((pkg / "weights.safetensors").stat().st_size)
        base = node_rss(base_dir, ["tiny"])
        loaded = node_rss(big_dir, [f"big{i}" for i in range(args.models)])
    per_model = (loaded - base) / args.models
    file_size = sum(sizes) / len(sizes)
    table = Table(title=f"RSS per loaded model ({args.models} models on one node)")
    for col in ("node", "models", "RSS MB", "per model MB", "file MB", "per model / file"):
        table.add_column(col, justify="right")
    table.add_row("baseline", "1 tiny", f"{base / 1e6:.0f}", "", "", "")
    table.add_row(
        "loaded",
        str(args.models),
        f"{loaded / 1e6:.0f}",
        f"{per_model / 1e6:.1f}",
        f"{file_size / 1e6:.1f}",
        f"{per_model / file_size:.2f}",
    )
    Console().print(table)


if __name__ == "__main__":
    main()
