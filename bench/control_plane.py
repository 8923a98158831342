"""Benchmark: how fast every node process applies control-plane changes, under load.

    python -m bench.control_plane [--nodes 5] [--changes 200] [--rate 200] [--quick]

A real local cluster: etcd and ``--nodes`` node processes (``--cpu-threads 1``), with
``--models`` generated tiny workflows (``tests.scale_packages``, R=2, one objective each)
and a memory budget per node of ``--budget-models`` of them, so models load lazily and get
evicted. A plain grpcio client (C-core, the shipped service config) in a separate process
sends ``--rate`` requests/s over every node: most to ``--hot`` objectives, ``--cold-rate``
of them to the others in turn, each of which makes an owner load a model (and evict the
least recently used one). Meanwhile the benchmark makes two kinds of changes:

  objective    ``--changes`` objective updates written to the catalog (``set_objective``,
               a new description each time, over every objective in turn), one every
               ``--spacing-ms``;
  model state  every load and eviction a node makes rewrites its loaded-set record
               (``shardline.membership.loaded``), which every other node applies.

Each change is measured from its write time (the objective document's ``updated_at``, the
loaded-set record's ``published_at``: both stamped by the writer just before its etcd
write) to the moment each node has applied it, two ways:

  histograms   the nodes' own ``shardline_catalog_apply_lag_seconds`` and
               ``shardline_loaded_set_apply_lag_seconds`` (``/metrics``), deltas over the
               run. Their precision is the bucket grid (``LATENCY_BUCKETS_S``: ... 20, 50,
               100, 200 ms ...): a quantile is reported as the upper bound of its bucket,
               which is enough to tell p99 <= 100 ms (a bound) but not its value;
  poll         this process watches the cluster prefix in etcd for every write's revision
               and polls each node's ``Cluster.GetRoutingTable`` (every ``--poll-ms``
               while a write is pending there) until the node reports that revision
               (``revision``: the etcd revision its view has applied; a node applies
               revisions in order). The time a node is seen there is an upper bound of
               when it applied the change, late by at most one poll interval plus a round
               trip; when this process's watch sees a write after the node did, the poll
               starts late too (an overestimate, never an underestimate).

A node's own loaded-set writes are not counted for itself (the histogram skips them too).
It prints p50 / p99 / max per kind and method against the target (p99 <= 100 ms), per node
too (with the poll round trip and the node's CPU use, ``process_cpu_seconds_total`` over the
run: the polls themselves cost the nodes some CPU), and the load's requests/s and failures.
Exit status 1 when a request failed or a node never applied a change (not for a missed
target: timing depends on the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import itertools
import json
import multiprocessing
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from bench.drain_clients import GrpcioLoad
from bench.watch_propagation import percentile
from shardline.membership.etcd import cluster_prefix, connect, watch_revisions
from shardline.membership.loaded import LoadedSet
from shardline.node.cluster.catalog_ops import catalog, register_tree
from shardline.node.ops.localcluster import wait_ready
from shardline.node.sdk.client import build_request
from shardline.router.objectives import ObjectiveConfig
from tests.etcd_server import EtcdServer
from tests.procs import NodeProcess
from tests.scale_packages import make_tiny_packages, tiny_name

CLUSTER = "control-plane"
TARGET_S = 0.100
HISTOGRAMS = {
    "objective": "shardline_catalog_apply_lag_seconds",
    "model state": "shardline_loaded_set_apply_lag_seconds",
}
KINDS = tuple(HISTOGRAMS)


# -- the load: a plain grpcio client in its own process ------------------------------------


def payloads(hot: Sequence[str], cold: Sequence[str], rate: float, cold_rate: float) -> list[bytes]:
    """Encoded requests, in the order sent: hot objectives in turn, with one for the next
    cold objective every ``rate / cold_rate`` requests."""
    x = np.ones(4, dtype=np.float32)
    every = max(1, round(rate / cold_rate)) if cold and cold_rate > 0 else 0
    hot_names, cold_names = itertools.cycle(hot), itertools.cycle(cold)
    length = max(len(hot), 1) * max(len(cold), 1) * max(every, 1)
    out = []
    for i in range(length):
        name = next(cold_names) if every and i % every == 0 else next(hot_names)
        out.append(build_request(name, {"x": x}, user_id=f"user-{i % 97}"))
    return out


@dataclass
class MixedLoad(GrpcioLoad):
    """``GrpcioLoad`` over given payloads, with a given deadline."""

    payloads: Sequence[bytes] = ()
    deadline_s: float = 2.0
    sent: int = 0

    def _run(self) -> None:
        requests = itertools.cycle(self.payloads)
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                self._outstanding += 1
                self.sent += 1
                phase = self.phase
            future = self._predict.future(next(requests), timeout=self.deadline_s)
            future.add_done_callback(lambda f, phase=phase: self._done(phase, f))
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)  # the pacing of an open-loop load


def load_process(
    addresses: list[str],
    rate: float,
    requests: list[bytes],
    deadline_s: float,
    warmup: int,
    phase_q: Any,
    result_q: Any,
) -> None:
    """Child process: warm up (``warmup`` answers), say "warm", then count answers as
    "measured" until told "stop"; put the counts and failures on ``result_q``."""
    load = MixedLoad(addresses, rate, payloads=requests, deadline_s=deadline_s)
    load.start()
    try:
        load.wait_answered("warmup", warmup)
        load.mark("measured")
        t0 = time.monotonic()
        result_q.put("warm")
        phase_q.get()  # "stop"
        elapsed = time.monotonic() - t0
    finally:
        load.stop()
    counts = {phase: dict(c) for phase, c in load.counts.items()}
    result_q.put({"counts": counts, "failures": load.failures[:20], "elapsed_s": elapsed})


class LoadRunner:
    """The load process, driven from here."""

    def __init__(self, addresses: list[str], rate: float, requests: list[bytes]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.phase_q: Any = ctx.Queue()
        self.result_q: Any = ctx.Queue()
        warmup = max(20, int(rate * 2))
        self.proc = ctx.Process(
            target=load_process,
            args=(addresses, rate, requests, 2.0, warmup, self.phase_q, self.result_q),
            daemon=True,
        )

    def start(self, timeout_s: float = 180.0) -> None:
        self.proc.start()
        got = self.result_q.get(timeout=timeout_s)
        if got != "warm":
            raise RuntimeError(f"load process: {got!r}")

    def stop(self, timeout_s: float = 120.0) -> dict[str, Any]:
        self.phase_q.put("stop")
        result: dict[str, Any] = self.result_q.get(timeout=timeout_s)
        self.proc.join(timeout_s)
        return result


# -- the nodes' histograms -----------------------------------------------------------------


def histogram_buckets(text: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts (upper bound -> count) of an unlabelled histogram."""
    for family in text_string_to_metric_families(text):
        if family.name == name:
            return {
                float(s.labels["le"]): s.value for s in family.samples if s.name == f"{name}_bucket"
            }
    return {}


def bucket_delta(before: Mapping[float, float], after: Mapping[float, float]) -> dict[float, float]:
    return {le: after[le] - before.get(le, 0.0) for le in sorted(after)}


def merge(deltas: Sequence[Mapping[float, float]]) -> dict[float, float]:
    out: dict[float, float] = collections.defaultdict(float)
    for d in deltas:
        for le, n in d.items():
            out[le] += n
    return dict(sorted(out.items()))


def bucket_quantile(cumulative: Mapping[float, float], q: float) -> float | None:
    """The upper bound of the bucket holding the ``q`` quantile (inf: past the last bound);
    None without observations."""
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank = q * total
    for le in bounds:
        if cumulative[le] >= rank:
            return le
    return bounds[-1]


def bucket_max(cumulative: Mapping[float, float]) -> float | None:
    """The upper bound of the highest non-empty bucket."""
    previous, top = 0.0, None
    for le in sorted(cumulative):
        if cumulative[le] > previous:
            top = le
        previous = cumulative[le]
    return top


# -- end to end: etcd revisions and each node's routing table ------------------------------


@dataclass
class Write:
    kind: str
    revision: int
    written_at: float
    source: str = ""
    """The node that wrote a loaded-set record (it does not count for itself)."""


@dataclass
class NodeSeen:
    """When one node was seen at which revision (only increases are kept)."""

    node_id: str
    target: str
    times: list[float] = field(default_factory=list)
    """When a poll's answer first showed the revision (an upper bound of the apply time)."""
    rtts: list[float] = field(default_factory=list)
    revisions: list[int] = field(default_factory=list)
    polls: int = 0
    errors: int = 0

    @property
    def revision(self) -> int:
        return self.revisions[-1] if self.revisions else 0

    def seen_at(self, revision: int) -> float | None:
        """When a poll first showed ``revision`` applied there; None: never."""
        i = bisect.bisect_left(self.revisions, revision)
        return self.times[i] if i < len(self.times) else None


def revision_of(table: bytes) -> int:
    """Field 2 (``revision``, a varint) of an encoded ``RoutingTable``, read without decoding
    the rest (a routing table lists every placement: decoding it would cost more than the
    round trip)."""
    i = 0
    while i < len(table):
        key, i = _varint(table, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(table, i)
            if number == 2:
                return value
        elif wire == 2:
            size, i = _varint(table, i)
            i += size
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unexpected wire type {wire} in a routing table")
    return 0


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


class Prober:
    """Watches the cluster prefix for writes and polls every node until it has them.

    The watch runs on the caller's event loop; each node is polled from its own thread
    with a plain grpcio channel (C-core: a round trip of a few ms where grpclib and
    betterproto take twice that on a busy machine), decoding only the revision."""

    def __init__(self, etcd: EtcdServer, nodes: Mapping[str, str], poll_s: float) -> None:
        self.etcd = etcd
        self.poll_s = poll_s
        self.nodes = {n: NodeSeen(n, t) for n, t in nodes.items()}
        self.writes: list[Write] = []
        self.want = 0
        self._active_until = 0.0
        self._cond = threading.Condition()
        self._stopping = False
        self._watch_task: asyncio.Task[None] | None = None
        self._threads = [
            threading.Thread(target=self._poll, args=(seen,), name=f"poll-{n}", daemon=True)
            for n, seen in self.nodes.items()
        ]
        self.failure: BaseException | None = None

    async def start(self) -> None:
        client = await connect(self.etcd.endpoint)
        self._client = client
        start = int((await client.get_prefix(cluster_prefix(CLUSTER))).header.revision) + 1
        created = asyncio.Event()
        self._watch_task = asyncio.create_task(self._watch(start, created.set))
        await asyncio.wait_for(created.wait(), 30)
        for thread in self._threads:
            thread.start()

    def poke(self, for_s: float = 0.5) -> None:
        """A write is under way (its revision not known yet): poll for a while, so that
        this process's own watch seeing it late does not delay the polls."""
        with self._cond:
            self._active_until = max(self._active_until, time.monotonic() + for_s)
            self._cond.notify_all()

    async def _watch(self, start: int, on_created: Any) -> None:
        prefix = cluster_prefix(CLUSTER)
        async for batch in watch_revisions(self._client, prefix, start, on_created=on_created):
            for ev in batch.events:
                rel = ev.key[len(prefix) :].decode()
                section, _, name = rel.partition("/")
                if ev.value is None or "/" in name:
                    continue
                if section == "objectives":
                    written = datetime.fromisoformat(json.loads(ev.value)["updated_at"])
                    self.writes.append(Write("objective", batch.revision, written.timestamp()))
                elif section == "loaded":
                    loaded = LoadedSet.from_json(ev.value)
                    self.writes.append(
                        Write("model state", batch.revision, loaded.published_at, name)
                    )
                else:
                    continue
                with self._cond:
                    self.want = max(self.want, batch.revision)
                    self._cond.notify_all()

    def _idle(self, seen: NodeSeen) -> bool:
        return seen.revision >= self.want and time.monotonic() >= self._active_until

    def _poll(self, seen: NodeSeen) -> None:
        channel = grpc.insecure_channel(seen.target)
        call = channel.unary_unary("/shardline.v1.Cluster/GetRoutingTable")
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._stopping or not self._idle(seen))
                    if self._stopping:
                        return
                seen.polls += 1
                sent = time.time()
                try:
                    table = call(b"", timeout=5)
                except grpc.RpcError as exc:
                    seen.errors += 1
                    if seen.errors > 100:
                        raise RuntimeError(f"{seen.node_id}: routing table: {exc}") from exc
                    continue
                now = time.time()
                seen.rtts.append(now - sent)
                revision = revision_of(table)
                if revision > seen.revision:
                    seen.times.append(now)
                    seen.revisions.append(revision)
                with self._cond:
                    self._cond.notify_all()  # settle() waits on the revisions
                    self._cond.wait_for(lambda: self._stopping, self.poll_s)
        except BaseException as exc:
            self.failure = exc
            raise
        finally:
            channel.close()

    def settle(self, timeout_s: float = 30.0) -> bool:
        """Until every node has applied every write seen; False at the timeout."""
        with self._cond:
            self._active_until = 0.0
            self._cond.notify_all()
            return (
                self._cond.wait_for(
                    lambda: (
                        all(s.revision >= self.want for s in self.nodes.values())
                        or self.failure is not None
                    ),
                    timeout_s,
                )
                and self.failure is None
            )

    async def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._watch_task is not None:
            self._watch_task.cancel()
            await asyncio.gather(self._watch_task, return_exceptions=True)
        await self._client.close()
        for thread in self._threads:
            thread.join(30)

    def lags(self) -> tuple[dict[str, dict[str, list[float]]], int]:
        """kind -> node -> lags (s, upper bounds), and how many (write, node) pairs were
        never seen applied."""
        out: dict[str, dict[str, list[float]]] = {k: collections.defaultdict(list) for k in KINDS}
        missing = 0
        for w in self.writes:
            for node_id, seen in self.nodes.items():
                if node_id == w.source:
                    continue
                at = seen.seen_at(w.revision)
                if at is None:
                    missing += 1
                else:
                    out[w.kind][node_id].append(max(0.0, at - w.written_at))
        return out, missing


# -- the cluster and the run ---------------------------------------------------------------


@dataclass
class Config:
    nodes: int = 5
    changes: int = 200
    rate: float = 200.0
    models: int = 40
    hot: int = 4
    budget_models: int = 6
    cold_rate: float = 10.0
    spacing_s: float = 0.050
    poll_s: float = 0.002


@contextmanager
def cluster(cfg: Config, log: Any) -> Iterator[tuple[EtcdServer, dict[str, NodeProcess]]]:
    with EtcdServer() as etcd, tempfile.TemporaryDirectory(prefix="control-plane-") as tmp:
        root = Path(tmp)
        workflows, objectives = root / "workflows", root / "objectives"
        objectives.mkdir()
        make_tiny_packages(workflows, cfg.models, replicas=2)
        for i in range(cfg.models):
            name = tiny_name(i)
            (objectives / f"{name}.toml").write_text(f'name = "{name}"\ndefault = "{name}@1"\n')
        file_bytes = (workflows / tiny_name(0) / "weights.safetensors").stat().st_size
        budget = cfg.budget_models * file_bytes

        async def register() -> None:
            client = await connect(etcd.endpoint)
            try:
                await register_tree(catalog(client, CLUSTER), workflows, objectives)
            finally:
                await client.close()

        asyncio.run(register())
        nodes: dict[str, NodeProcess] = {}
        try:
            for i in range(1, cfg.nodes + 1):
                nodes[f"node-{i}"] = NodeProcess.start(
                    ["--cluster", CLUSTER, "--node-id", f"node-{i}", "--cpu-threads", "1",
                     "--memory-budget", str(budget)],
                    etcd=f"127.0.0.1:{etcd.client_port}",
                    metrics=True,
                    timeout_s=180,
                )  # fmt: skip
            asyncio.run(wait_ready([n.target for n in nodes.values()], 180, lambda _: None))
            log(
                f"{cfg.nodes} nodes ready: {cfg.models} models at R=2, budget "
                f"{budget} bytes per node ({cfg.budget_models} models of {file_bytes} bytes)"
            )
            yield etcd, nodes
        finally:
            for node in nodes.values():
                node.stop()


def scrape(nodes: Mapping[str, NodeProcess]) -> dict[str, dict[str, dict[float, float]]]:
    """node -> kind -> cumulative buckets; "cpu" -> {0: the process's CPU seconds}."""
    out = {}
    for node_id, node in nodes.items():
        text = node.metrics_text()
        out[node_id] = {kind: histogram_buckets(text, name) for kind, name in HISTOGRAMS.items()}
        out[node_id]["cpu"] = {0.0: cpu_seconds(text)}
    return out


def cpu_seconds(text: str) -> float:
    for family in text_string_to_metric_families(text):
        if family.name == "process_cpu_seconds":
            return float(family.samples[0].value)
    return 0.0


async def write_objectives(etcd: EtcdServer, cfg: Config, prober: Prober) -> int:
    """``cfg.changes`` objective updates, one every ``cfg.spacing_s``; returns how many."""
    client = await connect(etcd.endpoint)
    cat = catalog(client, CLUSTER)
    try:
        for seq in range(cfg.changes):
            t0 = time.monotonic()
            name = tiny_name(seq % cfg.models)
            config = ObjectiveConfig.from_dict(
                {"name": name, "default": f"{name}@1", "description": f"control-plane {seq}"}
            ).to_dict()
            prober.poke()
            await cat.set_objective(name, config, author="bench.control_plane")
            await asyncio.sleep(max(0.0, cfg.spacing_s - (time.monotonic() - t0)))
    finally:
        await client.close()
    return cfg.changes


async def measure(etcd: EtcdServer, nodes: Mapping[str, NodeProcess], cfg: Config) -> Prober:
    prober = Prober(etcd, {n: p.target for n, p in nodes.items()}, cfg.poll_s)
    await prober.start()
    try:
        await write_objectives(etcd, cfg, prober)
        settled = await asyncio.to_thread(prober.settle)
        if not settled:
            behind = {n: s.revision for n, s in prober.nodes.items() if s.revision < prober.want}
            print(f"not every node reached revision {prober.want} in 30 s: {behind}")
    finally:
        await prober.stop()
    return prober


def run(cfg: Config, log: Any = print) -> dict[str, Any]:
    hot = [tiny_name(i) for i in range(cfg.hot)]
    cold = [tiny_name(i) for i in range(cfg.hot, cfg.models)]
    with cluster(cfg, log) as (etcd, nodes):
        load = LoadRunner(
            [n.target for n in nodes.values()],
            cfg.rate,
            payloads(hot, cold, cfg.rate, cfg.cold_rate),
        )
        load.start()
        try:
            before = scrape(nodes)
            t0 = time.monotonic()
            prober = asyncio.run(measure(etcd, nodes, cfg))
            after = scrape(nodes)
            window_s = time.monotonic() - t0
        finally:
            result = load.stop()
        dead = {n: p.proc.returncode for n, p in nodes.items() if p.proc.poll() is not None}
    hist = {
        node_id: {k: bucket_delta(before[node_id][k], after[node_id][k]) for k in KINDS}
        for node_id in nodes
    }
    polled, missing = prober.lags()
    cpu = {n: (after[n]["cpu"][0.0] - before[n]["cpu"][0.0]) / window_s for n in nodes}
    return {
        "cpu": cpu,
        "hist": hist,
        "polled": polled,
        "missing": missing,
        "writes": collections.Counter(w.kind for w in prober.writes),
        "polls": {n: (s.polls, s.errors, s.rtts) for n, s in prober.nodes.items()},
        "load": result,
        "dead": dead,
    }


# -- the report ----------------------------------------------------------------------------


def _ms(seconds: float | None, bound: bool = False) -> str:
    if seconds is None:
        return "-"
    if seconds == float("inf"):
        return "> 5000" if bound else "inf"
    return f"<= {seconds * 1e3:g}" if bound else f"{seconds * 1e3:.1f}"


def _verdict(p99: float | None) -> str:
    if p99 is None:
        return "no data"
    return "[green]met[/]" if p99 <= TARGET_S else "[red]missed[/]"


def report(result: dict[str, Any], cfg: Config, console: Console) -> int:
    """Print the tables; returns the number of failures (failed requests, unseen writes)."""
    hist, polled = result["hist"], result["polled"]
    table = Table(
        title=f"Control-plane changes applied by every node (target p99 <= {TARGET_S * 1e3:g} ms)"
    )
    for col in ("change", "measured by", "samples", "p50 ms", "p99 ms", "max ms", "p99 target"):
        table.add_column(col, justify="left" if col in ("change", "measured by") else "right")
    for kind in KINDS:
        merged = merge([hist[n][kind] for n in hist])
        p99 = bucket_quantile(merged, 0.99)
        n = int(max(merged.values(), default=0))
        table.add_row(
            kind, "node histograms (bucket bound)", str(n),
            _ms(bucket_quantile(merged, 0.50), True), _ms(p99, True),
            _ms(bucket_max(merged), True), _verdict(p99),
        )  # fmt: skip
        values = [v for vs in polled[kind].values() for v in vs]
        p99v = percentile(values, 99) if values else None
        table.add_row(
            kind, "routing-table poll (upper bound)", str(len(values)),
            _ms(percentile(values, 50) if values else None), _ms(p99v),
            _ms(max(values) if values else None), _verdict(p99v),
        )  # fmt: skip
    console.print(table)

    per_node = Table(title="Per node: p50 / p99 ms (histogram bucket bound | poll)")
    per_node.add_column("node")
    for kind in KINDS:
        per_node.add_column(f"{kind}: histogram", justify="right")
        per_node.add_column(f"{kind}: poll", justify="right")
    per_node.add_column("polls (errors)", justify="right")
    per_node.add_column("poll RTT p50 / p99 ms", justify="right")
    per_node.add_column("CPU (cores)", justify="right")
    for node_id in sorted(hist):
        cells = [node_id]
        for kind in KINDS:
            h = hist[node_id][kind]
            cells.append(
                f"{_ms(bucket_quantile(h, 0.5), True)} / {_ms(bucket_quantile(h, 0.99), True)}"
            )
            vs = polled[kind].get(node_id, [])
            cells.append(
                f"{_ms(percentile(vs, 50))} / {_ms(percentile(vs, 99))} (n={len(vs)})"
                if vs
                else "-"
            )
        polls, errors, rtts = result["polls"][node_id]
        cells.append(f"{polls} ({errors})")
        cells.append(f"{_ms(percentile(rtts, 50))} / {_ms(percentile(rtts, 99))}" if rtts else "-")
        cells.append(f"{result['cpu'][node_id]:.2f}")
        per_node.add_row(*cells)
    console.print(per_node)

    load = result["load"]
    measured = load["counts"].get("measured", {})
    total = sum(measured.values())
    failed = sum(v for code, v in measured.items() if code != "OK")
    warm_failed = sum(v for code, v in load["counts"].get("warmup", {}).items() if code != "OK")
    writes = result["writes"]
    console.print(
        f"load: {total} requests in {load['elapsed_s']:.1f} s = {total / load['elapsed_s']:.0f} "
        f"req/s (asked {cfg.rate:g}, {cfg.cold_rate:g}/s to cold models), failed requests: "
        f"{failed} (warm-up: {warm_failed})"
    )
    console.print(
        f"writes seen: {writes['objective']} objective changes, {writes['model state']} "
        f"loaded-set writes (model loads/evictions); (write, node) pairs never seen applied: "
        f"{result['missing']}"
    )
    for line in load["failures"]:
        console.print(f"  {line}", markup=False)
    if result["dead"]:
        console.print(f"nodes that exited: {result['dead']}")
    return int(failed + warm_failed + result["missing"] + len(result["dead"]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--changes", type=int, default=200, help="objective changes")
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s of the load")
    parser.add_argument("--models", type=int, default=40, help="generated tiny models (R=2)")
    parser.add_argument("--hot", type=int, default=4, help="objectives most requests go to")
    parser.add_argument("--budget-models", type=int, default=6, help="models a node holds")
    parser.add_argument("--cold-rate", type=float, default=10.0, help="req/s to cold models")
    parser.add_argument("--spacing-ms", type=float, default=50.0, help="between objective writes")
    parser.add_argument("--poll-ms", type=float, default=2.0, help="routing-table poll interval")
    parser.add_argument(
        "--quick", action="store_true", help="2 nodes, 20 changes, 50 req/s, 16 models (a test)"
    )
    args = parser.parse_args(argv)
    cfg = Config(
        nodes=args.nodes, changes=args.changes, rate=args.rate, models=args.models,
        hot=args.hot, budget_models=args.budget_models, cold_rate=args.cold_rate,
        spacing_s=args.spacing_ms / 1e3, poll_s=args.poll_ms / 1e3,
    )  # fmt: skip
    if args.quick:
        cfg.nodes, cfg.changes, cfg.rate, cfg.models, cfg.cold_rate = 2, 20, 50.0, 16, 5.0
    if not (cfg.nodes >= 1 and cfg.changes >= 1 and cfg.rate > 0 and cfg.models > cfg.hot >= 1):
        parser.error("need --nodes >= 1, --changes >= 1, --rate > 0, --models > --hot >= 1")
    console = Console(width=None if sys.stdout.isatty() else 140)
    console.print(
        f"{cfg.nodes} nodes, {cfg.changes} objective changes every {cfg.spacing_s * 1e3:g} ms, "
        f"load {cfg.rate:g} req/s (plain grpcio, separate process)"
    )
    result = run(cfg, console.print)
    return 1 if report(result, cfg, console) else 0


if __name__ == "__main__":
    raise SystemExit(main())
