"""Benchmark: goodput and latency of one node, CPU-bound, offered 1x, 2x, 5x and 10x its
capacity by a grpcio client in its own process.

    python -m bench.overload [--step-s 8] [--rounds 3] [--rows 1024] [--eager]

The hard case: the model does real CPU work and the node saturates its cores. One
standalone node process (``--cpu-threads 1``: one torch thread, the other core left to
the event loop and the client) serves a generated ``bench@1`` workflow through the
objective ``bench`` (no admission limits: the node's queue budget,
``NodeConfig.max_queue_wait_s``, and deadline shedding do the work). The model scores
``--rows`` candidates per request with a 4-layer MLP (256 wide), as TorchScript (one
call from Python per batch; ``--eager`` runs it op by op, taking the GIL back after
each): a batch of 8 takes ~55 ms of one core, ~7 ms of CPU per request, some 25x the
transport's ~0.3 ms, so the model, not the transport, bounds the capacity, and 10x the
capacity (~1 400 requests/s) is a rate one grpcio client process sends on time.

The load comes from grpcio (C-core) generator processes (``bench.grpcio_load`` and
``bench.grpcio_open_loop``), so the client is not the bottleneck and its CPU is apart
from the node's. Capacity is measured with a closed loop (three batches' worth in flight,
so every batch closes full, well inside the queue budget); then an open loop (Poisson
arrivals, 1 s deadline counted from each request's scheduled send time, latency from
that time too) offers 1x, 2x, 5x and 10x that capacity for ``--step-s`` seconds each
after 2 s of warm-up, all four in turn ``--rounds`` times (a shared machine's changing
load then falls on every step alike), each step's rounds merged. Printed per step:
offered, sent, goodput (successful requests/s), p50/p99/max of the successes, errors by
gRPC status; what the node did: its shed counters by reason, mean batch size, how busy
the model was (its worker's time in batches), the CPU of the node and of the client over
the measured windows, the CPU of every other process on the (shared) machine; and the
node's CPU per answered request and per refusal (the refusals' CPU estimated against the
1x step).
Targets: goodput at 10x >= 80 % of goodput at 1x; every answer within the 1 s deadline.

``bench.isolation`` reuses the package, node, load and table helpers defined here.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import tempfile
import textwrap
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from safetensors.torch import save_file

from bench.grpcio_load import LoadRun, run_load, write_payloads
from bench.grpcio_open_loop import OpenLoad, run_open_load
from bench.loadgen import CLIENT_OVERRUN, OpenLoopResult
from shardline.node.sdk.client import build_request
from shardline.workflows.loader import sha256_file
from tests.procs import NodeProcess

MODEL = "bench@1"
DEADLINE_S = 1.0
CHANNELS = 8
WARMUP_S = 2.0
STEPS = (1.0, 2.0, 5.0, 10.0)
STATUSES = ("RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", CLIENT_OVERRUN)

BENCH_WORKFLOW = '''
"""Benchmark workflow: a CPU-bound ranker (real torch work, batched).

Each request scores ``rows`` fixed candidates (scaled by its input ``x``) with an MLP and
answers the best score: a batch of n requests is one (n * rows) x hidden matrix through
the network, so the work grows with the batch, as a ranking model's does. With
``script = true`` the network runs as TorchScript (one call from Python per batch, the
GIL released throughout), else eagerly (the GIL taken back after every op).
"""
import numpy as np
import torch

from shardline.workflows.sdk import Workflow, get_float, load_module, mlp


class Ranker(torch.nn.Module):
    def __init__(self, net, candidates):
        super().__init__()
        self.net = net
        self.candidates = candidates  # rows x hidden

    def forward(self, scale: torch.Tensor) -> torch.Tensor:
        rows = self.candidates.shape[0]
        hidden = self.candidates.shape[1]
        x = (self.candidates.unsqueeze(0) * scale.view(-1, 1, 1)).reshape(-1, hidden)
        return self.net(x).view(scale.shape[0], rows).max(dim=1).values


class Bench(Workflow):
    def __init__(self, manifest, weights, package_dir, device):
        super().__init__(manifest, weights, package_dir, device)
        hidden = int(self.params["hidden"])
        layers = int(self.params["layers"])
        with torch.device("meta"):
            net = mlp([hidden] * (layers + 1) + [1])
        net = load_module(net, weights, "net.", device)
        ranker = Ranker(net, weights["candidates"].to(device)).eval()
        self.ranker = torch.jit.script(ranker) if self.params["script"] else ranker

    def preprocess(self, context, inputs):
        return get_float(inputs, "x", -1e6, 1e6)

    def forward(self, batch):
        scale = torch.tensor(batch, dtype=torch.float32, device=self.device)
        return self.ranker(scale).tolist()

    def postprocess(self, context, inputs, raw):
        return {"y": np.float32(raw)}

    def example_request(self):
        return {"user_id": "u"}, {"x": np.float32(1.0)}
'''


@dataclass(frozen=True)
class ModelSpec:
    """The CPU-bound model and its batching policy."""

    rows: int = 1024  # candidates scored per request
    hidden: int = 256
    layers: int = 4
    max_batch_size: int = 8
    max_delay_ms: float = 2.0
    queue_capacity: int = 1024
    cpu_threads: int = 1  # the node's torch threads (--cpu-threads)
    script: bool = True  # TorchScript (one GIL release per batch) or eager

    def describe(self) -> str:
        return (
            f"MLP {self.layers} x {self.hidden} over {self.rows} candidates per request, "
            f"max_batch_size {self.max_batch_size}, max_delay_ms {self.max_delay_ms:g}, "
            f"{self.cpu_threads} torch thread(s), {'TorchScript' if self.script else 'eager'}"
        )


def make_bench_package(root: Path, spec: ModelSpec) -> Path:
    pkg = root / "bench"
    pkg.mkdir(parents=True)
    (pkg / "workflow.py").write_text(BENCH_WORKFLOW)
    gen = torch.Generator().manual_seed(0)
    sizes = [spec.hidden] * (spec.layers + 1) + [1]
    weights: dict[str, torch.Tensor] = {
        "candidates": torch.randn(spec.rows, spec.hidden, generator=gen)
    }
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        k = 2 * i  # mlp(): Linear, ReLU, Linear, ... (the ReLUs hold no weights)
        weights[f"net.{k}.weight"] = torch.randn(n_out, n_in, generator=gen) / n_in**0.5
        weights[f"net.{k}.bias"] = torch.zeros(n_out)
    save_file(weights, str(pkg / "weights.safetensors"))
    digest = sha256_file(pkg / "weights.safetensors")
    (pkg / "workflow.toml").write_text(
        textwrap.dedent(
            f"""
            name = "bench"
            version = "1"
            entrypoint = "workflow.py:Bench"
            device = "cpu"
            [weights]
            path = "weights.safetensors"
            sha256 = "{digest}"
            [batching]
            max_batch_size = {spec.max_batch_size}
            max_delay_ms = {spec.max_delay_ms}
            queue_capacity = {spec.queue_capacity}
            [[inputs]]
            name = "x"
            dtype = "float32"
            shape = []
            [[outputs]]
            name = "y"
            dtype = "float32"
            shape = []
            [params]
            hidden = {spec.hidden}
            layers = {spec.layers}
            script = {str(spec.script).lower()}
            """
        )
    )
    return pkg


def write_objectives(root: Path, limits: Mapping[str, Mapping[str, float] | None]) -> Path:
    """One objective config per name, all routing to ``bench@1``, with optional limits."""
    objectives = root / "objectives"
    objectives.mkdir(parents=True)
    for name, lim in limits.items():
        text = f'name = "{name}"\ndefault = "{MODEL}"\n'
        if lim:
            text += "[limits]\n" + "".join(f"{k} = {v}\n" for k, v in lim.items())
        (objectives / f"{name}.toml").write_text(text)
    return objectives


@dataclass
class BenchNode:
    """A running bench node and, per objective, a file of encoded requests for it."""

    node: NodeProcess
    payloads: dict[str, Path]

    @property
    def target(self) -> str:
        return self.node.target

    @property
    def pid(self) -> int:
        return self.node.proc.pid


@contextmanager
def bench_node(
    spec: ModelSpec, limits: Mapping[str, Mapping[str, float] | None]
) -> Iterator[BenchNode]:
    """A standalone node over a temp dir holding the bench package and objectives."""
    with tempfile.TemporaryDirectory(prefix="shardline-bench-") as tmp:
        root = Path(tmp)
        make_bench_package(root / "workflows", spec)
        objectives = write_objectives(root, limits)
        payloads = {
            name: write_payloads(
                root / f"{name}.b64",
                (build_request(name, {"x": np.float32(i)}, user_id=f"user-{i}") for i in range(64)),
            )
            for name in limits
        }
        node = NodeProcess.start(
            workflows=root / "workflows",
            objectives=objectives,
            args=["--cpu-threads", str(spec.cpu_threads)],
        )
        try:
            yield BenchNode(node, payloads)
        finally:
            node.stop()


def measure_capacity(
    node: BenchNode,
    objective: str,
    spec: ModelSpec,
    duration_s: float = 8.0,
    warmup_s: float = WARMUP_S,
) -> LoadRun:
    """Requests/s at saturation: a grpcio closed loop with three batches' worth in flight
    (one running, two queued, so every batch closes full at once), well inside the queue
    budget so nothing is shed. Its ``rps`` is the capacity; errors are reported."""
    return run_load(
        [node.target], server_pids=[node.pid], payloads=node.payloads[objective],
        concurrency=3 * spec.max_batch_size, duration_s=duration_s, warmup_s=warmup_s,
        timeout_s=DEADLINE_S,
    )  # fmt: skip


def capacity_line(r: LoadRun, spec: ModelSpec) -> str:
    errors = f", {r.error_count} errors ({r.first_error})" if r.errors else ""
    return (
        f"measured capacity (grpcio closed loop, {3 * spec.max_batch_size} in flight): "
        f"{r.rps:.0f} req/s, p50 {r.p50_ms:.0f} ms, p99 {r.p99_ms:.0f} ms, "
        f"node CPU {r.server_cpu_ms_per_request:.2f} ms/req{errors}"
    )


_SAMPLE = re.compile(r"^(?P<name>shardline_\w+)(?:\{(?P<labels>[^}]*)\})?\s+(?P<v>\S+)$", re.M)
_REASON = re.compile(r'reason="([^"]*)"')
_BATCH_SERIES = {
    "shardline_batch_size_count": "batches",
    "shardline_batch_size_sum": "items",
    "shardline_batch_compute_seconds_sum": "batch_s",
}


def node_counters(node: NodeProcess) -> dict[str, float]:
    """From the node's /metrics: ``shed:<reason>`` (``shardline_shed_total`` summed over
    objectives), and ``batches``, ``items``, ``batch_s`` (batch size and compute
    histograms, summed over models)."""
    out: dict[str, float] = {}
    for m in _SAMPLE.finditer(node.metrics_text()):
        name = m["name"]
        if name == "shardline_shed_total":
            reason = _REASON.search(m["labels"] or "")
            key = f"shed:{reason.group(1) if reason else '?'}"
        elif name in _BATCH_SERIES:
            key = _BATCH_SERIES[name]
        else:
            continue
        out[key] = out.get(key, 0.0) + float(m["v"])
    return out


def machine_busy_s() -> float:
    """CPU seconds all processes on this machine have used (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def runqueue_wait_s(pid: int) -> float:
    """Seconds the threads of ``pid`` have spent runnable but waiting for a CPU (a busy
    shared machine delays the node even when the node itself has CPU to spare)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


@dataclass(frozen=True)
class Usage:
    """What the node and the machine did over a span (warm-up included; the CPU of the
    node and of the client over the measured window are in the ``OpenLoad``s)."""

    machine_cpu: float  # cores, every process on the machine
    node_wait: float  # cores' worth of node threads runnable but waiting for a CPU
    shed: Mapping[str, float]  # node's shed counter by reason
    batches: float
    mean_batch: float
    model_busy: float  # share of the span the model's worker spent in batches
    batch_ms: float  # mean batch time on the model's worker


class Meter:
    """Measures a span: ``start()``, then ``stop()`` returns its ``Usage``."""

    def __init__(self, node: BenchNode) -> None:
        self.node = node
        self._t: tuple[float, ...] = ()
        self._c: dict[str, float] = {}

    def start(self) -> None:
        self._t = (time.monotonic(), runqueue_wait_s(self.node.pid), machine_busy_s())
        self._c = node_counters(self.node.node)

    def stop(self) -> Usage:
        t0, w0, m0 = self._t
        wall = max(1e-9, time.monotonic() - t0)
        now = node_counters(self.node.node)
        d = {k: v - self._c.get(k, 0.0) for k, v in now.items()}
        batches, items, batch_s = d.get("batches", 0.0), d.get("items", 0.0), d.get("batch_s", 0.0)
        return Usage(
            machine_cpu=(machine_busy_s() - m0) / wall,
            node_wait=(runqueue_wait_s(self.node.pid) - w0) / wall,
            shed={k[5:]: v for k, v in d.items() if k.startswith("shed:") and v > 0},
            batches=batches,
            mean_batch=items / batches if batches else 0.0,
            model_busy=batch_s / wall,
            batch_ms=1000.0 * batch_s / batches if batches else 0.0,
        )


@dataclass(frozen=True)
class Step:
    """One load step (or one objective's load in a phase) and the node over it."""

    label: str
    load: OpenLoad
    usage: Usage

    @property
    def result(self) -> OpenLoopResult:
        return self.load.result


def merge_steps(label: str, steps: list[Step]) -> Step:
    """One step from the same step's rounds: counts, errors and latencies pooled, the
    time summed (goodput is the mean over the rounds), CPU and node figures averaged."""
    rs = [s.result for s in steps]
    errors: dict[str, int] = {}
    for r in rs:
        for k, v in r.errors.items():
            errors[k] = errors.get(k, 0) + v
    result = OpenLoopResult(
        name=label,
        offered_per_s=sum(r.offered_per_s for r in rs) / len(rs),
        seconds=sum(r.seconds for r in rs),
        scheduled=sum(r.scheduled for r in rs),
        sent=sum(r.sent for r in rs),
        ok=sum(r.ok for r in rs),
        errors=errors,
        latencies_ms=tuple(x for r in rs for x in r.latencies_ms),
        max_lag_ms=max(r.max_lag_ms for r in rs),
    )
    loads = [s.load for s in steps]
    load = OpenLoad(
        result=result,
        server_cpu_s=sum(ld.server_cpu_s for ld in loads),
        client_cpu_s=sum(ld.client_cpu_s for ld in loads),
        window_s=sum(ld.window_s for ld in loads),
        first_error=next((ld.first_error for ld in loads if ld.first_error), None),
    )
    us = [s.usage for s in steps]
    n = len(us)
    shed: dict[str, float] = {}
    for u in us:
        for reason, count in u.shed.items():
            shed[reason] = shed.get(reason, 0.0) + count
    batches = sum(u.batches for u in us)
    usage = Usage(
        machine_cpu=sum(u.machine_cpu for u in us) / n,
        node_wait=sum(u.node_wait for u in us) / n,
        shed=shed,
        batches=batches,
        mean_batch=sum(u.mean_batch * u.batches for u in us) / batches if batches else 0.0,
        model_busy=sum(u.model_busy for u in us) / n,
        batch_ms=sum(u.batch_ms * u.batches for u in us) / batches if batches else 0.0,
    )
    return Step(label, load, usage)


def open_step(
    label: str,
    node: BenchNode,
    objective: str,
    rate_per_s: float,
    duration_s: float,
    seed: int,
    warmup_s: float = WARMUP_S,
) -> Step:
    meter = Meter(node)
    meter.start()
    load = run_open_load(
        [node.target], node.payloads[objective], rate_per_s=rate_per_s, duration_s=duration_s,
        name=label, server_pids=[node.pid], warmup_s=warmup_s, deadline_s=DEADLINE_S,
        channels=CHANNELS, seed=seed,
    )  # fmt: skip
    return Step(label, load, meter.stop())


def fmt_errors(errors: Mapping[str, int]) -> list[str]:
    """Counts for each of ``STATUSES``, then the rest summed as 'other'."""
    other = sum(v for k, v in errors.items() if k not in STATUSES)
    return [str(errors.get(s, 0)) for s in STATUSES] + [str(other)]


def fmt_shed(shed: Mapping[str, float]) -> str:
    return " ".join(f"{k}:{v:.0f}" for k, v in sorted(shed.items())) or "-"


def step_table(title: str, steps: list[Step]) -> Table:
    """What the client saw, one row per step. Errors by gRPC status: RES_EXH(AUSTED),
    DL_EXC = DEADLINE_EXCEEDED, overrun = not sent by the client (CLIENT_OVERRUN), other;
    'max ms' is the slowest success (latency from the scheduled send time), 'lag ms' the
    latest the client sent anything behind its schedule."""
    table = Table(title=title)
    for col in (
        "load", "offered/s", "sent/s", "goodput/s", "p50 ms", "p99 ms", "max ms", "RES_EXH",
        "DL_EXC", "overrun", "other", "lag ms",
    ):  # fmt: skip
        table.add_column(col, justify="right")
    for s in steps:
        r = s.result
        worst = max(r.latencies_ms) if r.latencies_ms else float("nan")
        table.add_row(
            s.label, f"{r.offered_per_s:.0f}", f"{r.sent_per_s:.0f}", f"{r.goodput:.0f}",
            f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}", f"{worst:.0f}", *fmt_errors(r.errors),
            f"{r.max_lag_ms:.0f}",
        )  # fmt: skip
    return table


def usage_table(title: str, steps: list[Step]) -> Table:
    """What the node did, one row per step. 'node shed': the node's shed counter by reason
    (warm-up included); 'batch': mean batch size; 'model': share of the time the model's
    worker was running batches, 'batch ms' a batch's mean time there; CPU columns in cores
    over the measured window: the node, the client, every other process on the machine
    (warm-up included); 'node wait': the node's threads runnable but off-CPU."""
    table = Table(title=title)
    for col in (
        "load", "node shed", "batch", "model", "batch ms", "node CPU", "node wait",
        "client CPU", "others CPU",
    ):  # fmt: skip
        table.add_column(col, justify="right")
    for s in steps:
        u, ld = s.usage, s.load
        others = max(0.0, u.machine_cpu - ld.server_cores - ld.client_cores)
        table.add_row(
            s.label, fmt_shed(u.shed), f"{u.mean_batch:.1f}", f"{u.model_busy:.0%}",
            f"{u.batch_ms:.1f}", f"{ld.server_cores:.2f}", f"{u.node_wait:.2f}",
            f"{ld.client_cores:.2f}", f"{others:.2f}",
        )  # fmt: skip
    return table


def cost_table(steps: list[Step]) -> Table:
    """The node's CPU per request: per answer, and per refusal (what the node spent beyond
    the answers, at the 1x step's CPU per answer, divided by the refused requests)."""
    table = Table(title="the node's CPU per request (ms)")
    for col in ("load", "answered", "refused", "CPU/answer (1x)", "CPU/refusal (est.)"):
        table.add_column(col, justify="right")
    base = steps[0].load
    per_ok = base.server_cpu_s / base.result.ok if base.result.ok else float("nan")
    for s in steps:
        r = s.result
        refused = sum(v for k, v in r.errors.items() if k != CLIENT_OVERRUN)
        extra = s.load.server_cpu_s - r.ok * per_ok
        per_refusal = f"{1000.0 * extra / refused:.2f}" if refused >= 100 else "-"
        table.add_row(s.label, str(r.ok), str(refused), f"{1000.0 * per_ok:.2f}", per_refusal)
    return table


def run(
    spec: ModelSpec,
    step_s: float,
    *,
    steps: tuple[float, ...] = STEPS,
    rounds: int = 1,
    capacity_s: float = 8.0,
    warmup_s: float = WARMUP_S,
) -> tuple[LoadRun, list[Step], list[float]]:
    """Measure the capacity, then offer each of ``steps`` times it for ``step_s``, all
    the steps in turn ``rounds`` times (so a shared machine's changing load falls on
    every step alike); each step's rounds are merged (``merge_steps``). Also returns each
    round's goodput at the last step over the first."""
    with bench_node(spec, {"bench": None}) as node:
        cap = measure_capacity(node, "bench", spec, capacity_s, warmup_s)
        per_round = [
            [
                open_step(f"{x:g}x", node, "bench", x * cap.rps, step_s, k * 10 + i, warmup_s)
                for i, x in enumerate(steps)
            ]
            for k in range(rounds)
        ]
    merged = [merge_steps(f"{x:g}x", [r[i] for r in per_round]) for i, x in enumerate(steps)]
    ratios = [
        r[-1].result.goodput / r[0].result.goodput if r[0].result.goodput else float("nan")
        for r in per_round
    ]
    return cap, merged, ratios


def add_model_args(parser: argparse.ArgumentParser) -> None:
    d = ModelSpec()
    parser.add_argument("--rows", type=int, default=d.rows, help="candidates per request")
    parser.add_argument("--max-batch", type=int, default=d.max_batch_size, help="batch size")
    parser.add_argument(
        "--cpu-threads", type=int, default=d.cpu_threads, help="the node's torch threads"
    )
    parser.add_argument(
        "--eager", action="store_true", help="run the model eagerly, not as TorchScript"
    )


def spec_of(args: argparse.Namespace) -> ModelSpec:
    return ModelSpec(
        rows=args.rows,
        max_batch_size=args.max_batch,
        cpu_threads=args.cpu_threads,
        script=not args.eager,
    )


def report(
    console: Console,
    capacity: LoadRun,
    spec: ModelSpec,
    steps: list[Step],
    ratios: Sequence[float] = (),
) -> float:
    """Print the tables; return goodput 10x / 1x (all rounds together)."""
    console.print(capacity_line(capacity, spec))
    rounds = f", {len(ratios)} rounds merged" if len(ratios) > 1 else ""
    title = f"open loop, Poisson arrivals, {DEADLINE_S:g} s deadline, per step{rounds}"
    console.print(step_table(title, steps))
    console.print(usage_table("the node and the machine during each step", steps))
    console.print(cost_table(steps))
    one, ten = steps[0].result, steps[-1].result
    good = ten.goodput / one.goodput if one.goodput else float("nan")
    late = sum(1 for s in steps for x in s.result.latencies_ms if x > DEADLINE_S * 1000.0)
    console.print(
        f"goodput {steps[-1].label} / {steps[0].label}: {good:.2f} (target >= 0.80) "
        f"{'met' if good >= 0.8 else 'MISSED'}; answers past the {DEADLINE_S:g} s deadline: "
        f"{late} (target 0)"
    )
    if len(ratios) > 1:
        console.print(
            "goodput last / first step, per round: " + ", ".join(f"{r:.2f}" for r in ratios)
        )
    return good


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--step-s", type=float, default=8.0, help="seconds per load step")
    parser.add_argument("--rounds", type=int, default=3, help="times every step is run")
    add_model_args(parser)
    args = parser.parse_args()
    spec = spec_of(args)
    console = Console(width=max(Console().width, 120))
    console.print(f"machine: {os.cpu_count()} CPUs; model: {spec.describe()}")
    capacity, steps, ratios = run(spec, args.step_s, rounds=args.rounds)
    report(console, capacity, spec, steps, ratios)


if __name__ == "__main__":
    main()
