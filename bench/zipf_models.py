"""Benchmark: a Zipf load over 1 000 models on 3 nodes with memory budgets, and hot copies.

    python -m bench.zipf_models [--models 1000] [--budget-models 150] [--seconds 60]
                                [--cold-seconds 20] [--rate 300] [--zipf 1.0] [--quick]

A real local cluster: etcd and 3 node processes (R=2, ``--cpu-threads 1``), each with a
``--memory-budget`` of ``--budget-models`` times one model's declared footprint, so a node
holds about 150 of the ~670 models placed on it and the rest load on first use (lazy
loading, LRU eviction). The catalog: ``--models`` workflows with one objective each
(``name = "<model>"``, ``default = "<model>@1"``) -- ``zipf_hot@1`` and ``--models - 1``
generated tiny ones (``tests.scale_packages``), all with the same 4 KiB weights.

The hot model. Popularity rank 1 goes to ``zipf_hot@1``, a batched model: its batching
window (``max_delay_ms``) holds each request open for up to ``--hot-window-ms`` and a batch
takes 2 ms on the device. Its requests in flight per copy then follow its request rate
(Little's law: rate x time in the node) without taking the device from the other models;
the default window puts ``HOT_IN_FLIGHT`` (1.5) in flight per copy when 2 copies share its
Zipf share of ``--rate`` (60 ms at 300 req/s over 1 000 models, 150 ms for ``--quick``),
twice that on one copy. A tiny model answers in about a millisecond, so its in-flight count
stays far lower at any share. (A model held warm on one owner gets all its requests there:
replica choice uses the warm copies, so a lazy second owner stays cold until a request
needs it; the hot model may start on 1 or 2 warm copies.) The nodes run ``--hot-policy``
``HOT_POLICY``: hot when in flight per copy > 0.4 for 2 s; cold after 5 s below 0.1; 3 s
cooldown; at most 1 extra copy (3 nodes at R=2: one more copy is every node). The
queue-time trigger is set to 1 s, above the hot model's window: its queue time is its
window at any rate, not a measure of load.

The load. A separate process (plain grpcio asyncio client with the shipped service config
over every node, open loop) sends ``--rate`` requests/s with a 2 s deadline, each for the
objective of a model drawn from Zipf(``--zipf``) over the models, with a fresh user id (so
replica choice spreads them over the warm copies):

  phase 1  ``--seconds``: ``zipf_hot`` is rank 1;
  phase 2  ``--cold-seconds``: "the load moves on" -- ranks rotate by half the catalog, so
           ``zipf_hot`` falls to rank ``models/2 + 1`` (nearly no traffic) and models that
           were cold become hot (a wave of cold starts).

What is measured, and how:

- every request: status, latency (client side) and serving node (Provenance);
- cold starts, exactly, on the nodes: ``shardline_cold_loads_total`` (requests that waited
  for a load of their model) and ``shardline_cold_wait_seconds`` (how long they waited;
  coarse buckets: 10, 50, 100, 500 ms, ...), scraped from each node's ``/metrics`` before
  the load, at the switch of phase and at the end. Hit rate = 1 - cold loads / requests;
- which requests were cold, for the client-side cold and warm latencies: the response
  carries no cold flag, so a request counts as cold when its serving node's log says it
  finished loading the request's model while the request was in flight
  (``cold_requests``). Every request that waited for a load is counted; a warm one only
  when a load of its model on its node ended between its send and its arrival. The count
  stands next to the nodes' exact one. Warm latencies are the tiny models' (the hot
  model's include its batching window and are given apart);
- every ``--poll`` seconds, from etcd (nothing asked of the nodes): each node's loaded-set
  record (its resident models with their bytes, its budget, loads and evictions) and the
  hot record of ``zipf_hot@1`` (its extra copies), with times from the start of the load;
  at the end, each node's own row of its routing table.

The run passes (exit 0) when no request failed, ``zipf_hot@1`` gained an extra copy in
phase 1 and had none left at the end of phase 2 (no record, at most 2 holders), and no
node ever reported more resident bytes than its budget.

``--quick`` (300 models, 45 per node, 100 req/s, 20 s + 20 s) is for the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import re
import tempfile
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from shardline.membership.etcd import cluster_prefix, connect
from shardline.membership.loaded import SECTION, LoadedSet
from shardline.node.cluster.catalog_ops import catalog, register_tree
from shardline.node.ops.localcluster import routing_table, wait_ready
from tests.etcd_server import EtcdServer
from tests.procs import NodeProcess
from tests.scale_packages import MANIFEST, make_tiny_packages, tiny_name

CLUSTER = "zipf-models"
HOT = "zipf_hot"
HOT_KEY = f"{HOT}@1"
HOT_POLICY = (
    "up_in_flight_per_copy=0.4,up_queue_ms=1000,up_after_s=2,"
    "down_after_s=5,cooldown_s=3,max_copies=1"
)
HOT_IN_FLIGHT = 1.5  # the hot model's requests in flight per copy, at 2 warm copies
HOT_BATCH_MS = 2.0  # the hot model's device time per batch
REPLICAS = 2
NODES = 3
PREDICT = "/shardline.v1.Inference/Predict"

HOT_WORKFLOW = '''
"""The hottest model of bench.zipf_models: a batched model (its manifest's max_delay_ms is
its batching window) whose batch takes params.batch_ms on the device."""
import time

import numpy as np

from shardline.workflows.sdk import Workflow


class Hot(Workflow):
    def __init__(self, manifest, weights, package_dir, device):
        super().__init__(manifest, weights, package_dir, device)
        self.w = weights["w"].cpu().numpy()[:4]

    def preprocess(self, context, inputs):
        return np.asarray(inputs["x"], dtype=np.float32)

    def forward(self, batch):
        time.sleep(float(self.params["batch_ms"]) / 1000.0)
        return [float(np.dot(x, self.w)) for x in batch]

    def postprocess(self, context, inputs, raw):
        return {"y": np.float32(raw)}

    def example_request(self):
        return {"user_id": "u"}, {"x": np.ones(4, dtype=np.float32)}
'''


@dataclass(frozen=True)
class Config:
    models: int = 1000
    budget_models: int = 150
    seconds: float = 60.0
    cold_seconds: float = 20.0
    rate: float = 300.0
    zipf: float = 1.0
    deadline_s: float = 2.0
    hot_window_ms: float | None = None  # None: HOT_IN_FLIGHT per copy at its Zipf share
    poll_s: float = 0.5
    seed: int = 1
    policy: str = HOT_POLICY

    def __post_init__(self) -> None:
        if self.models < 2:
            raise ValueError(f"--models must be at least 2, got {self.models}")
        if self.budget_models < 1:
            raise ValueError(f"--budget-models must be at least 1, got {self.budget_models}")
        for name in ("seconds", "cold_seconds", "rate", "deadline_s", "poll_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0")
        if not self.zipf >= 0:
            raise ValueError(f"--zipf must be >= 0, got {self.zipf}")

    @property
    def hot_share(self) -> float:
        return float(zipf_probabilities(self.models, self.zipf)[0])

    def hot_window(self) -> float:
        """The hot model's batching window in ms (``--hot-window-ms``, or the default in the
        module docstring); ValueError past the manifest's bound (1 000 ms)."""
        if self.hot_window_ms is not None:
            window = self.hot_window_ms
        else:
            window = 1000.0 * HOT_IN_FLIGHT / (self.rate * self.hot_share / REPLICAS)
        if not 0 < window <= 1000:
            raise ValueError(
                f"the hot model's batching window would be {window:.0f} ms (1 to 1000 ms): "
                "raise --rate or set --hot-window-ms"
            )
        return window


QUICK = Config(models=300, budget_models=45, seconds=20.0, cold_seconds=20.0, rate=100.0)


def zipf_probabilities(n: int, s: float) -> np.ndarray:
    """P(rank k) for k = 1..n, proportional to 1 / k**s."""
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    return np.asarray(weights / weights.sum(), dtype=np.float64)


def model_names(n: int) -> list[str]:
    """The catalog in popularity order of phase 1: the hot model, then the tiny ones."""
    return [HOT] + [tiny_name(i) for i in range(n - 1)]


def make_catalog(root: Path, cfg: Config) -> tuple[Path, Path, int]:
    """Write the packages and objectives; (workflows dir, objectives dir, one model's
    declared footprint in bytes: its weights file)."""
    workflows, objectives = root / "workflows", root / "objectives"
    objectives.mkdir(parents=True)
    tiny = make_tiny_packages(workflows, cfg.models - 1, replicas=REPLICAS)
    weights = (tiny[0] / "weights.safetensors").read_bytes()
    hot = workflows / HOT
    hot.mkdir()
    (hot / "weights.safetensors").write_bytes(weights)
    (hot / "workflow.py").write_text(HOT_WORKFLOW)
    manifest = MANIFEST.format(
        name=HOT,
        version="1",
        replicas=REPLICAS,
        pinned="false",
        device="cpu",
        digest=(tiny[0] / "workflow.toml").read_text().split('sha256 = "')[1].split('"')[0],
    )
    manifest = manifest.replace('entrypoint = "workflow.py:Tiny"', 'entrypoint = "workflow.py:Hot"')
    manifest = re.sub(r"max_batch_size = \d+", "max_batch_size = 64", manifest)
    manifest = re.sub(r"max_delay_ms = [\d.]+", f"max_delay_ms = {cfg.hot_window():.1f}", manifest)
    manifest = re.sub(r"queue_capacity = \d+", "queue_capacity = 1024", manifest)
    manifest += f"\n[params]\nbatch_ms = {HOT_BATCH_MS}\n"
    (hot / "workflow.toml").write_text(manifest)
    for name in model_names(cfg.models):
        (objectives / f"{name}.toml").write_text(f'name = "{name}"\ndefault = "{name}@1"\n')
    return workflows, objectives, len(weights)


# -- the load: its own process -------------------------------------------------------------

FIELDS = ("sent_s", "sent_wall", "phase", "model", "code", "latency_ms", "node", "total_ms")


def load_process(addresses: list[str], cfg: Config, out: str, events: Any) -> None:
    """Child process: the two phases of Zipf load; records saved to ``out`` (.npz)."""
    rec, node_ids, failures = asyncio.run(_load(addresses, cfg, events))
    arrays: dict[str, Any] = {**rec, "node_ids": np.array(node_ids)}
    np.savez(out, **arrays)
    Path(out + ".failures.json").write_text(json.dumps(failures))
    events.put(("done", time.monotonic()))


async def _load(
    addresses: list[str], cfg: Config, events: Any
) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    import grpc

    from shardline import grpc_channel_options, grpc_target
    from shardline.node._proto.shardline.v1 import inference_pb2 as pb
    from shardline.node.sdk.client import build_request

    names = model_names(cfg.models)
    rng = np.random.default_rng(cfg.seed)
    n1, n2 = round(cfg.rate * cfg.seconds), round(cfg.rate * cfg.cold_seconds)
    ranks = rng.choice(cfg.models, size=n1 + n2, p=zipf_probabilities(cfg.models, cfg.zipf))
    models = ranks.copy()
    models[n1:] = (ranks[n1:] + cfg.models // 2) % cfg.models  # the load moves on
    n = n1 + n2
    rec: dict[str, np.ndarray] = {
        "sent_s": np.zeros(n),
        "sent_wall": np.zeros(n),
        "phase": np.where(np.arange(n) < n1, 1, 2).astype(np.int8),
        "model": models.astype(np.int32),
        "code": np.full(n, -1, dtype=np.int16),
        "latency_ms": np.full(n, np.nan),
        "node": np.full(n, -1, dtype=np.int8),
        "total_ms": np.full(n, np.nan),
    }
    node_ids: dict[str, int] = {}
    failures: list[str] = []
    x = {"x": np.ones(4, dtype=np.float32)}
    channel = grpc.aio.insecure_channel(grpc_target(addresses), options=grpc_channel_options())
    await asyncio.wait_for(channel.channel_ready(), 60)
    predict = channel.unary_unary(PREDICT)
    loop = asyncio.get_running_loop()

    async def one(i: int, started: float) -> None:
        name = names[models[i]]
        raw = build_request(name, x, user_id=f"user-{i}")
        try:
            answer = await predict(raw, timeout=cfg.deadline_s)
        except grpc.aio.AioRpcError as exc:
            rec["latency_ms"][i] = (loop.time() - started) * 1000.0
            rec["code"][i] = exc.code().value[0]
            if len(failures) < 50:
                failures.append(f"{name}: {exc.code().name}: {exc.details()}")
            return
        rec["latency_ms"][i] = (loop.time() - started) * 1000.0
        response = pb.PredictResponse.FromString(answer)
        p = response.provenance
        if p.model_key != f"{name}@1":
            rec["code"][i] = 2  # UNKNOWN: a wrong answer counts as a failure
            failures.append(f"{name}: answered by {p.model_key}")
            return
        rec["code"][i] = 0
        rec["node"][i] = node_ids.setdefault(p.node_id, len(node_ids))
        t = p.timing
        rec["total_ms"][i] = t.total_ms

    tasks: set[asyncio.Task[None]] = set()
    t0 = loop.time()
    events.put(("start", time.monotonic()))
    for i in range(n):
        if i == n1:
            events.put(("switch", time.monotonic()))
        delay = t0 + i / cfg.rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)  # the pacing of an open-loop load
        now = loop.time()
        rec["sent_s"][i] = now - t0
        rec["sent_wall"][i] = time.time()
        task = asyncio.create_task(one(i, now))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    events.put(("sent", time.monotonic()))
    if tasks:
        await asyncio.wait(set(tasks))
    events.put(("answered", time.monotonic()))
    await channel.close()
    return rec, sorted(node_ids, key=node_ids.__getitem__), failures


# -- the nodes' metrics ---------------------------------------------------------------------

_SAMPLE = re.compile(r"^(?P<name>[a-z_:]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def samples(text: str, names: Sequence[str]) -> dict[tuple[str, str], float]:
    """(metric name, labels text) -> value, for the given names (exposition text)."""
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m["name"] in names:
            out[(m["name"], m["labels"] or "")] = float(m["value"])
    return out


METRICS = (
    "shardline_cold_loads_total",
    "shardline_cold_wait_seconds_bucket",
    "shardline_cold_wait_seconds_count",
    "shardline_model_evictions_total",
    "shardline_hot_copy_changes_total",
)


def scrape(nodes: Mapping[str, NodeProcess]) -> dict[tuple[str, str], float]:
    """The METRICS summed over the nodes."""
    total: dict[tuple[str, str], float] = defaultdict(float)
    for node in nodes.values():
        if node.metrics_port is None:
            continue
        url = f"http://127.0.0.1:{node.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as resp:
            for k, v in samples(resp.read().decode(), METRICS).items():
                total[k] += v
    return dict(total)


def delta(
    a: Mapping[tuple[str, str], float], b: Mapping[tuple[str, str], float]
) -> dict[tuple[str, str], float]:
    return {k: v - a.get(k, 0.0) for k, v in b.items()}


def cold_loads(m: Mapping[tuple[str, str], float], outcome: str = "ok") -> float:
    return m.get(("shardline_cold_loads_total", f'outcome="{outcome}"'), 0.0)


def changes(m: Mapping[tuple[str, str], float], direction: str) -> float:
    return m.get(("shardline_hot_copy_changes_total", f'direction="{direction}"'), 0.0)


def cold_wait_quantile(m: Mapping[tuple[str, str], float], q: float) -> float | None:
    """The upper bound (s) of the cold_wait bucket holding quantile ``q`` (outcome ok)."""
    buckets = []
    for (name, labels), value in m.items():
        if name == "shardline_cold_wait_seconds_bucket" and 'outcome="ok"' in labels:
            le = re.search(r'le="([^"]+)"', labels)
            if le:
                buckets.append((float(le[1]), value))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    return next(le for le, n in buckets if n >= rank)


# -- cold starts per request, from the nodes' logs -------------------------------------------

_LOADED = re.compile(
    r"^(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO [\w.]+: loaded (?P<key>\S+) on "
)


_UNLOADED = re.compile(r"^\S+ \S+ INFO [\w.]+: unloaded \S+$")


def load_times(lines: Sequence[str]) -> dict[str, np.ndarray]:
    """Model key -> the wall-clock times (s) a node's log says it finished loading it
    (``loaded <key> on <device>``, logged at INFO with ``asctime``: local time, in ms)."""
    out: dict[str, list[float]] = defaultdict(list)
    for line in lines:
        m = _LOADED.match(line)
        if m:
            at = datetime.strptime(m["at"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out[m["key"]].append(at)
    return {k: np.array(sorted(v)) for k, v in out.items()}


def unload_lines(lines: Sequence[str]) -> tuple[int, int]:
    """How many times a node's log says it chose a model to evict (``evicting <key>``) and
    unloaded one (``unloaded <key>``: an eviction or a model it no longer owns)."""
    evicting = sum(": evicting " in line for line in lines)
    unloaded = sum(bool(_UNLOADED.match(line)) for line in lines)
    return evicting, unloaded


def cold_requests(
    records: Mapping[str, np.ndarray],
    node_ids: Sequence[str],
    names: Sequence[str],
    loads: Mapping[str, Mapping[str, np.ndarray]],
) -> np.ndarray:
    """Which answered requests were cold starts: their serving node finished a load of
    their model while they were in flight (between send and answer).

    A request that waited for a load is always counted (the load ends after it arrived and
    before it was served). The method counts too many only when a load of the same model
    on the same node ended after the request was sent but before it arrived there (a load
    it did not wait for): the printed count stands next to the nodes' exact one."""
    cold = np.zeros(len(records["code"]), dtype=bool)
    sent = records["sent_wall"]
    done = sent + records["latency_ms"] / 1000.0
    for i in np.flatnonzero(records["code"] == 0):
        times = loads.get(node_ids[records["node"][i]], {}).get(f"{names[records['model'][i]]}@1")
        if times is None:
            continue
        # a log time is truncated to the ms: the load ended in [at, at + 1 ms)
        j = int(np.searchsorted(times, sent[i] - 0.001, side="right"))
        cold[i] = j < len(times) and times[j] <= done[i]
    return cold


# -- polls: routing tables and the hot record -------------------------------------------------


@dataclass
class Polls:
    """What the poller saw, with times (s) since the start of the load."""

    t0: float
    resident: dict[str, list[tuple[float, int, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    budget: dict[str, int] = field(default_factory=dict)
    counters: dict[str, tuple[int, int]] = field(default_factory=dict)  # loads, evictions
    hot: list[tuple[float, int, int]] = field(default_factory=list)  # t, copies, holders
    other_hot: dict[str, int] = field(default_factory=dict)  # key -> max copies
    errors: list[str] = field(default_factory=list)

    def hot_changes(self) -> list[tuple[float, int, int]]:
        """The polls where the hot model's copies or holders changed."""
        out: list[tuple[float, int, int]] = []
        for t, c, h in self.hot:
            if not out or (c, h) != out[-1][1:]:
                out.append((t, c, h))
        return out


async def poll(
    etcd_endpoint: Any,
    polls: Polls,
    stop: asyncio.Event,
    polled: asyncio.Event,
    every_s: float,
) -> None:
    """Every ``every_s`` until ``stop``: each node's loaded-set record and the hot records
    in etcd (``polled`` is set after each round). The records are what the nodes publish of
    themselves (``shardline.membership.loaded``), read from etcd so that polling costs the
    nodes nothing."""
    client = await connect(etcd_endpoint)
    prefix = cluster_prefix(CLUSTER) + b"hot/"
    loaded = cluster_prefix(CLUSTER) + f"{SECTION}/".encode()
    try:
        while not stop.is_set():
            now = time.monotonic() - polls.t0
            holders = 0
            for kv in (await client.get_prefix(loaded)).kvs:
                record = LoadedSet.from_json(bytes(kv.value))
                node_id = record.node_id
                polls.resident[node_id].append((now, record.resident_bytes, len(record.models)))
                polls.budget[node_id] = record.budget_bytes
                polls.counters[node_id] = (record.loads, record.evictions)
                holders += HOT_KEY in record.models
            result = await client.get_prefix(prefix)
            copies = 0
            for kv in result.kvs:
                key = bytes(kv.key)[len(prefix) :].decode()
                n = int(json.loads(bytes(kv.value))["copies"])
                if key == HOT_KEY:
                    copies = n
                else:
                    polls.other_hot[key] = max(n, polls.other_hot.get(key, 0))
            polls.hot.append((now, copies, holders))
            polled.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)  # a sampling timer
    finally:
        await client.close()


# -- the run -------------------------------------------------------------------------------


@dataclass
class Result:
    cfg: Config
    footprint: int
    budget: int
    records: dict[str, np.ndarray]
    node_ids: list[str]
    failures: list[str]
    cold: np.ndarray  # per request: a cold start (``cold_requests``)
    metrics: dict[str, dict[tuple[str, str], float]]  # phase 1, phase 2, total (deltas)
    polls: Polls
    final: dict[str, tuple[int, int, int]]  # node -> its routing table's own row at the end
    hot_loads: dict[str, list[float]]  # node -> when it loaded the hot model (s from start)
    unloads: dict[str, tuple[int, int]]  # node -> log lines "evicting", "unloaded"
    switch_s: float
    elapsed_s: float
    startup_s: float


@contextlib.contextmanager
def local_cluster(
    cfg: Config, root: Path, log: Any
) -> Iterator[tuple[EtcdServer, dict[str, NodeProcess], int, int]]:
    workflows, objectives, footprint = make_catalog(root, cfg)
    budget = cfg.budget_models * footprint
    with EtcdServer() as etcd:

        async def register() -> None:
            client = await connect(etcd.endpoint)
            try:
                await register_tree(catalog(client, CLUSTER), workflows, objectives)
            finally:
                await client.close()

        asyncio.run(register())
        log(f"registered {cfg.models} workflows and objectives; starting {NODES} nodes")
        nodes: dict[str, NodeProcess] = {}
        try:
            for i in range(1, NODES + 1):
                node_id = f"node-{i}"
                nodes[node_id] = NodeProcess.start(
                    ["--cluster", CLUSTER, "--node-id", node_id, "--cpu-threads", "1",
                     "--memory-budget", str(budget), "--hot-policy", cfg.policy],
                    etcd=f"127.0.0.1:{etcd.client_port}",
                    timeout_s=300,
                )  # fmt: skip
            asyncio.run(wait_ready([n.target for n in nodes.values()], 600, lambda _: None))
            yield etcd, nodes, footprint, budget
        finally:
            for node in nodes.values():
                node.stop()


def run(cfg: Config, log: Any = print) -> Result:
    with tempfile.TemporaryDirectory(prefix="zipf-models-") as tmp:
        started = time.monotonic()
        with local_cluster(cfg, Path(tmp), log) as (etcd, nodes, footprint, budget):
            startup_s = time.monotonic() - started
            log(f"cluster ready in {startup_s:.0f}s; load: {cfg.rate:g} req/s, "
                f"{cfg.seconds:g}s + {cfg.cold_seconds:g}s")  # fmt: skip
            out = str(Path(tmp) / "records.npz")
            ctx = multiprocessing.get_context("spawn")
            events: Any = ctx.Queue()
            addresses = [n.target for n in nodes.values()]
            proc = ctx.Process(target=load_process, args=(addresses, cfg, out, events), daemon=True)
            before = scrape(nodes)
            proc.start()
            polls, metrics, switch_s, elapsed_s = asyncio.run(
                _drive(cfg, etcd, nodes, proc, events, before)
            )
            proc.join(60)
            if proc.exitcode != 0:
                raise RuntimeError(f"the load process exited with {proc.exitcode}")
            data = np.load(out)
            records = {k: data[k] for k in FIELDS}
            node_ids = [str(s) for s in data["node_ids"]]
            failures = json.loads(Path(out + ".failures.json").read_text())
            loads = {node_id: load_times(node.lines) for node_id, node in nodes.items()}
            cold = cold_requests(records, node_ids, model_names(cfg.models), loads)
            final = asyncio.run(_own_rows(nodes))
            unloads = {node_id: unload_lines(node.lines) for node_id, node in nodes.items()}
            wall0 = float(records["sent_wall"][0] - records["sent_s"][0])
            hot_loads = {
                node_id: [float(t) - wall0 for t in by_key.get(HOT_KEY, ())]
                for node_id, by_key in loads.items()
            }
            for node_id, node in nodes.items():
                if node.proc.poll() is not None:
                    failures.append(f"{node_id} exited with {node.proc.returncode}")
    return Result(cfg, footprint, budget, records, node_ids, failures, cold, metrics, polls,
                  final, hot_loads, unloads, switch_s, elapsed_s, startup_s)  # fmt: skip


async def _own_rows(nodes: Mapping[str, NodeProcess]) -> dict[str, tuple[int, int, int]]:
    """Each node's own row of its routing table: (resident bytes, budget bytes, models)."""
    out = {}
    for node_id, node in nodes.items():
        table = await routing_table(node.target, timeout_s=30)
        me = next(m for m in table.members if m.node_id == table.node_id)
        out[node_id] = (int(me.resident_bytes), int(me.budget_bytes), len(me.models))
    return out


async def _drive(
    cfg: Config,
    etcd: EtcdServer,
    nodes: Mapping[str, NodeProcess],
    proc: Any,
    events: Any,
    before: dict[tuple[str, str], float],
) -> tuple[Polls, dict[str, dict[tuple[str, str], float]], float, float]:
    loop = asyncio.get_running_loop()

    async def event(expect: str, timeout_s: float) -> float:
        kind, at = await loop.run_in_executor(None, events.get, True, timeout_s)
        if kind != expect:
            raise RuntimeError(f"load process: expected {expect!r}, got {kind!r}")
        return float(at)

    t0 = await event("start", 120)
    polls = Polls(t0)
    stop = asyncio.Event()
    polled = asyncio.Event()
    poller = asyncio.create_task(poll(etcd.endpoint, polls, stop, polled, cfg.poll_s))
    try:
        switch = await event("switch", cfg.seconds + 120)
        middle = await loop.run_in_executor(None, scrape, nodes)
        await event("sent", cfg.cold_seconds + 120)
        done = await event("answered", cfg.deadline_s + 120)
        after = await loop.run_in_executor(None, scrape, nodes)
        for _ in range(2):  # a whole poll round after the load: the state at the end
            polled.clear()
            await asyncio.wait_for(polled.wait(), 60)
        await event("done", 60)
    finally:
        stop.set()
        await poller
    metrics = {"phase 1": delta(before, middle), "phase 2": delta(middle, after),
               "total": delta(before, after)}  # fmt: skip
    return polls, metrics, switch - t0, done - t0


# -- the report ----------------------------------------------------------------------------


def pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def checks(result: Result) -> dict[str, bool]:
    """The pass conditions (see the module docstring)."""
    r, polls = result.records, result.polls
    failed = int(np.count_nonzero(r["code"] != 0))
    phase1 = [c for t, c, _ in polls.hot if t <= result.switch_s + result.cfg.poll_s]
    last = polls.hot[-1] if polls.hot else (0.0, -1, -1)
    max_resident = max((b for rows in polls.resident.values() for _, b, _ in rows), default=0)
    final_ok = all(resident <= budget for resident, budget, _ in result.final.values())
    return {
        "no failed request": failed == 0 and not result.failures,
        f"{HOT_KEY} gained an extra copy in phase 1": max(phase1, default=0) >= 1,
        f"{HOT_KEY} has no extra copy at the end": last[1] == 0 and 0 <= last[2] <= REPLICAS,
        "resident bytes never above the budget": 0 < max_resident <= result.budget and final_ok,
    }


def report(result: Result, console: Console | None = None) -> int:
    """Print the tables; returns the number of failed checks."""
    console = console or Console()
    cfg, r, polls = result.cfg, result.records, result.polls
    console.print(
        f"[bold]Zipf load over {cfg.models} models[/bold]: {NODES} nodes, R={REPLICAS}, budget "
        f"{cfg.budget_models} models/node ({result.budget:,} B, {result.footprint:,} B each), "
        f"{cfg.rate:g} req/s, Zipf s={cfg.zipf:g}, {cfg.deadline_s:g} s deadlines; {HOT_KEY}: "
        f"{cfg.hot_share:.1%} of phase 1, batching window {cfg.hot_window():.0f} ms; "
        f"--hot-policy {cfg.policy}; cluster ready in {result.startup_s:.0f} s"
    )
    ok = r["code"] == 0
    cold = ok & result.cold
    tiny = r["model"] != 0
    warm = ok & ~cold & tiny
    hot_ok = ok & ~tiny
    lat = r["latency_ms"]
    table = Table(
        title="Requests (client latency, ms). Node cold loads and hit rate: the nodes' "
        "counters; cold (log): its node finished loading its model while it was in flight; "
        f"warm: the others, {HOT_KEY} (batching window) apart"
    )
    for col in ("phase", "requests", "failed", "node cold loads", "hit rate", "cold (log)",
                "cold p50", "cold p99", "warm p50", "warm p99", "hot p50", "hot p99",
                "all p99", "max"):  # fmt: skip
        table.add_column(col, justify="right")
    phases = {"phase 1": r["phase"] == 1, "phase 2": r["phase"] == 2, "total": r["phase"] > 0}
    for label, mask in phases.items():
        n = int(mask.sum())
        loads = cold_loads(result.metrics[label])
        table.add_row(
            label, f"{n}", f"{np.count_nonzero(mask & ~ok)}", f"{loads:.0f}",
            f"{1 - loads / n:.2%}" if n else "-", f"{np.count_nonzero(mask & cold)}",
            *(f"{pct(lat[mask & m], q):.1f}" for m in (cold, warm, hot_ok) for q in (50, 99)),
            f"{pct(lat[mask & ok], 99):.1f}", f"{np.nanmax(lat[mask]) if n else float('nan'):.1f}",
        )  # fmt: skip
    console.print(table)

    nodes = Table(title="The nodes' metrics, summed")
    for col in ("", "phase 1", "phase 2", "total"):
        nodes.add_column(col, justify="right")

    def q(m: Mapping[tuple[str, str], float], p: float) -> str:
        v = cold_wait_quantile(m, p)
        return "-" if v is None else f"<= {v * 1000:.0f}"

    rows: dict[str, Callable[[Mapping[tuple[str, str], float]], str]] = {
        "cold loads (ok)": lambda m: f"{cold_loads(m):.0f}",
        "cold loads (deadline/error/no_room)": lambda m: (
            f"{sum(cold_loads(m, o) for o in ('deadline', 'error', 'no_room')):.0f}"
        ),
        "cold wait p50 ms (bucket bound)": lambda m: q(m, 0.5),
        "cold wait p99 ms (bucket bound)": lambda m: q(m, 0.99),
        "evictions": lambda m: f"{m.get(('shardline_model_evictions_total', ''), 0):.0f}",
        "hot copy changes up/down": lambda m: f"{changes(m, 'up'):.0f}/{changes(m, 'down'):.0f}",
    }
    for label, fn in rows.items():
        nodes.add_row(label, *(fn(result.metrics[p]) for p in ("phase 1", "phase 2", "total")))
    console.print(nodes)

    res = Table(title=f"Resident per node (its loaded-set record in etcd, every {cfg.poll_s:g} s; "
                      "at the end: its routing table)")  # fmt: skip
    for col in ("node", "budget B", "max resident B", "max models", "end resident B",
                "end models", "loads", "evictions", "log: evicting/unloaded",
                "served"):  # fmt: skip
        res.add_column(col, justify="right")
    served = {nid: int(np.count_nonzero(r["node"] == i)) for i, nid in enumerate(result.node_ids)}
    for node_id in sorted(polls.resident):
        seen = polls.resident[node_id]
        loads_, evictions = polls.counters.get(node_id, (0, 0))
        end = result.final.get(node_id, (0, 0, 0))
        res.add_row(
            node_id, f"{polls.budget.get(node_id, 0):,}", f"{max(b for _, b, _ in seen):,}",
            f"{max(m for _, _, m in seen)}", f"{end[0]:,}", f"{end[2]}", f"{loads_}",
            f"{evictions}", "{}/{}".format(*result.unloads.get(node_id, (0, 0))),
            f"{served.get(node_id, 0)}",
        )  # fmt: skip
    console.print(res)

    hot = Table(title=f"{HOT_KEY}: extra copies (etcd hot/{HOT_KEY}) and nodes holding it, "
                      f"on change (phase 2 from {result.switch_s:.1f} s)")  # fmt: skip
    for col in ("t (s)", "phase", "extra copies", "holders"):
        hot.add_column(col, justify="right")
    for t, c, h in polls.hot_changes():
        hot.add_row(f"{t:.1f}", "1" if t < result.switch_s else "2", f"{c}", f"{h}")
    console.print(hot)
    loads_by_node = {
        node_id: f"{sum(t < result.switch_s for t in ts)}/{sum(t >= result.switch_s for t in ts)}"
        for node_id, ts in sorted(result.hot_loads.items())
    }
    console.print(f"{HOT_KEY} loads per node, phase 1/phase 2 (node logs): {loads_by_node}")
    if polls.other_hot:
        top = sorted(polls.other_hot)[:8]
        console.print(f"other models given an extra copy: {len(polls.other_hot)} (e.g. {top})")
    for line in result.failures[:20]:
        console.print(f"  failed: {line}")
    sent = r["sent_s"]
    lag = sent - np.arange(len(sent)) / cfg.rate
    console.print(
        f"load: {len(sent)} requests over {result.elapsed_s:.1f} s (client pacing lag max "
        f"{lag.max() * 1000:.0f} ms)"
    )
    bad = 0
    for name, passed in checks(result).items():
        console.print(f"{'PASS' if passed else 'FAIL'}: {name}")
        bad += not passed
    return bad


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="the test suite's short run")
    parser.add_argument("--models", type=int)
    parser.add_argument("--budget-models", type=int, help="models a node's budget holds")
    parser.add_argument("--seconds", type=float, help="phase 1 (zipf_hot is rank 1)")
    parser.add_argument("--cold-seconds", type=float, help="phase 2 (ranks rotated)")
    parser.add_argument("--rate", type=float, help="requests per second")
    parser.add_argument("--zipf", type=float, help="the Zipf exponent s")
    parser.add_argument("--hot-window-ms", type=float, help="zipf_hot's batching window")
    parser.add_argument("--poll", type=float, dest="poll_s", help="seconds between polls")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--save", type=Path, help="write the per-request records here (.npz)")
    args = vars(parser.parse_args(argv))
    save = args.pop("save")
    base = QUICK if args.pop("quick") else Config()
    cfg = replace(base, **{k: v for k, v in args.items() if v is not None})
    result = run(cfg)
    if save is not None:
        arrays: dict[str, Any] = {**result.records, "cold": result.cold}
        np.savez(save, **arrays)
    return 1 if report(result) else 0


if __name__ == "__main__":
    raise SystemExit(main())
