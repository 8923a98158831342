"""Benchmark: a node joins and another drains on a cluster with 1 000 models, under load.

    python -m bench.join_drain_models [--models 1000] [--budget-models 150] [--hot 20]

A real local cluster on loopback (etcd + 3 node processes, ``--models`` generated tiny
workflows at R=2, one objective each, a ``--memory-budget`` per node that holds about
``--budget-models`` of them). A plain grpcio client — the documented setup: the
multi-address target (``shardline.grpc_target``) and ``shardline.grpc_channel_options()``
(round robin, health checks, the retry policy) — sends requests with 2 s deadlines from
its own thread: a hot set (``--hot`` objectives at ``--hot-rate`` req/s, they stay
resident) and a trickle over all the other models (``--cold-rate`` req/s, cycling, so
most of them are cold: they load on first use and evict the least recently used).

1. ``shardline node join`` starts node-4; the run waits until every node sees it active
   and the cluster has settled (the placements agree and every node holds only models it
   owns, nothing loading);
2. ``DrainNode(node-2)`` through the Admin API; the run waits until node-2 exits and the
   cluster has settled again.

The hot load runs through both changes; the trickle is paused from just before each change
until it has settled, so that every load and every drop in that window is the change's
own (a trickle request to a cold model would otherwise load it and evict another, which
has nothing to do with the change). The load's failures are counted over the whole run.

For each change it reads the placements (owner sets) from the routing tables before and
after, the keys whose owners changed (the placement's moves), and every node's loads,
unloads and evictions from its log in that window ("loaded and warmed" is a placement
load, any other "loaded … from" one a request waited for, "evicting" an LRU eviction,
"unloaded" a drop) cross-checked with the routing tables' ``loads``/``evictions``
counters. It prints the keys moved (and their fraction against the ideal R/N), the loads
and drops the change caused, the evictions it forced (a node that takes warm copies over
makes room under its budget: those keys stay placed there, lazy), and what was loaded or
dropped that the placement did not move — the target is 0, as it is for failed requests.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.drain_clients import TOKEN, GrpcioLoad, _drain
from shardline.membership.etcd import connect
from shardline.node._proto.shardline import v1
from shardline.node.cluster.catalog_ops import catalog, register_tree
from shardline.node.ops.localcluster import routing_table
from shardline.node.sdk.client import build_request
from tests.etcd_server import EtcdServer
from tests.procs import NodeProcess
from tests.scale_packages import make_tiny_packages, tiny_name

CLUSTER = "join-drain-models"
REPLICAS = 2


@dataclass
class Config:
    models: int = 1000
    budget_models: int = 150
    hot: int = 20
    hot_rate: float = 60.0
    cold_rate: float = 10.0
    deadline_s: float = 2.0
    grace_s: float = 2.0
    warmup: int = 200
    """Requests answered before the first change (and between the two changes)."""
    settle_timeout_s: float = 300.0
    start_timeout_s: float = 300.0


# -- the load ------------------------------------------------------------------------------


@dataclass
class MixLoad(GrpcioLoad):
    """``GrpcioLoad`` over a hot set (always on) plus a trickle over the cold models that
    can be paused; every request with a ``deadline_s`` deadline."""

    hot: Sequence[bytes] = ()
    cold: Sequence[bytes] = ()
    cold_rate: float = 0.0
    deadline_s: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.trickle = threading.Event()
        self.trickle.set()
        self.cold_sent = 0
        self._cold_outstanding = 0
        self._cold_idle = threading.Condition(self._lock)

    def pause_trickle(self, timeout_s: float = 30.0) -> None:
        """Stop the trickle and wait until its requests have their outcome."""
        self.trickle.clear()
        with self._cold_idle:
            if not self._cold_idle.wait_for(lambda: self._cold_outstanding == 0, timeout_s):
                raise TimeoutError(f"trickle requests still outstanding after {timeout_s}s")

    def resume_trickle(self) -> None:
        self.trickle.set()

    def _hot_done(self, phase: str, i: int, future: grpc.Future) -> None:
        self._done(phase, future)
        if future.code() is not grpc.StatusCode.OK:
            with self._lock:
                self.failures[-1] += f" (hot #{i % len(self.hot)}, at {time.strftime('%X')})"

    def _cold_done(self, phase: str, i: int, future: grpc.Future) -> None:
        self._done(phase, future)
        with self._lock:
            if future.code() is not grpc.StatusCode.OK:
                self.failures[-1] += f" (cold #{i % len(self.cold)}, at {time.strftime('%X')})"
            self._cold_outstanding -= 1
            if self._cold_outstanding == 0:
                self._cold_idle.notify_all()

    def _run(self) -> None:
        hot_i = cold_i = 0
        now = time.monotonic()
        next_hot = now
        next_cold = now
        hot_every = 1.0 / self.rate
        cold_every = 1.0 / self.cold_rate if self.cold_rate > 0 and self.cold else None
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_hot:
                payload = self.hot[hot_i % len(self.hot)]
                hot_i += 1
                next_hot += hot_every
                with self._lock:
                    self._outstanding += 1
                    phase = self.phase
                future = self._predict.future(payload, timeout=self.deadline_s)
                future.add_done_callback(
                    lambda f, phase=phase, i=hot_i - 1: self._hot_done(phase, i, f)
                )
                continue
            if cold_every is not None and now >= next_cold:
                next_cold += cold_every
                if self.trickle.is_set():
                    payload = self.cold[cold_i % len(self.cold)]
                    cold_i += 1
                    with self._lock:
                        self._outstanding += 1
                        self._cold_outstanding += 1
                        self.cold_sent += 1
                        phase = self.phase
                    future = self._predict.future(payload, timeout=self.deadline_s)
                    future.add_done_callback(
                        lambda f, phase=phase, i=cold_i - 1: self._cold_done(phase, i, f)
                    )
                else:
                    next_cold = max(next_cold, now)  # no burst to catch up once resumed
                continue
            wake = min(next_hot, next_cold) if cold_every is not None else next_hot
            self._stop.wait(max(0.0, wake - time.monotonic()))  # the open-loop pacing


# -- the cluster ---------------------------------------------------------------------------


class Cluster:
    """etcd, ``cfg.models`` tiny packages and objectives registered, nodes with a budget."""

    def __init__(self, etcd: EtcdServer, root: Path, cfg: Config) -> None:
        self.etcd, self.root, self.cfg = etcd, root, cfg
        self.nodes: dict[str, NodeProcess] = {}
        workflows, objectives = root / "workflows", root / "objectives"
        objectives.mkdir()
        make_tiny_packages(workflows, cfg.models, replicas=REPLICAS)
        for i in range(cfg.models):
            name = tiny_name(i)
            (objectives / f"{name}.toml").write_text(f'name = "{name}"\ndefault = "{name}@1"\n')
        self.file_bytes = (workflows / tiny_name(0) / "weights.safetensors").stat().st_size
        self.budget = cfg.budget_models * self.file_bytes
        (root / "token").write_text(TOKEN)

        async def register() -> None:
            client = await connect(etcd.endpoint)
            try:
                await register_tree(catalog(client, CLUSTER), workflows, objectives)
            finally:
                await client.close()

        asyncio.run(register())

    def start(self, node_id: str, command: Sequence[str] = ("serve",)) -> NodeProcess:
        node = NodeProcess.start(
            ["--cluster", CLUSTER, "--node-id", node_id, "--cpu-threads", "1",
             "--memory-budget", str(self.budget),
             "--admin-token-file", str(self.root / "token")],
            etcd=f"127.0.0.1:{self.etcd.client_port}",
            metrics=False,
            timeout_s=self.cfg.start_timeout_s,
            env={"SHARDLINE_DRAIN_GRACE_S": str(self.cfg.grace_s)},
            command=command,
        )  # fmt: skip
        self.nodes[node_id] = node
        return node

    def live(self) -> dict[str, NodeProcess]:
        return {n: p for n, p in self.nodes.items() if p.proc.poll() is None}

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


@contextmanager
def local_cluster(cfg: Config) -> Iterator[Cluster]:
    with EtcdServer() as etcd, tempfile.TemporaryDirectory(prefix="join-drain-") as tmp:
        cluster = Cluster(etcd, Path(tmp), cfg)
        try:
            yield cluster
        finally:
            cluster.stop()


# -- what the routing tables say -----------------------------------------------------------


@dataclass
class Snapshot:
    """The cluster as its routing tables show it at one moment (settled)."""

    owners: dict[str, frozenset[str]]
    """Model key -> its owners (the placement)."""
    resident: dict[str, frozenset[str]]
    """Node -> the model keys resident there (its own report)."""
    loads: dict[str, int]
    evictions: dict[str, int]
    resident_bytes: dict[str, int]
    budget_bytes: dict[str, int]
    lines: dict[str, int] = field(default_factory=dict)
    """Node -> how many log lines it had written when this was taken."""


async def _tables(targets: Mapping[str, str]) -> dict[str, v1.RoutingTable]:
    got = await asyncio.gather(*(routing_table(t, timeout_s=10) for t in targets.values()))
    return dict(zip(targets, got, strict=True))


def _unsettled(tables: Mapping[str, v1.RoutingTable], active: set[str]) -> str | None:
    """None when every node sees exactly ``active`` as its members, all active, the
    placements agree, and every node holds only models it owns with nothing loading."""
    placements: dict[str, tuple[str, ...]] | None = None
    for node_id, table in tables.items():
        states = {m.node_id: m.state for m in table.members}
        if states != {n: "active" for n in active}:
            return f"{node_id} sees members {states}"
        mine = {p.model_key: tuple(p.owners) for p in table.placements}
        if placements is None:
            placements = mine
        elif mine != placements:
            return f"{node_id}'s placements differ"
    assert placements is not None
    for node_id, table in tables.items():
        me = next(m for m in table.members if m.node_id == node_id)
        if me.loading:
            return f"{node_id} is loading {list(me.loading)[:3]}"
        extra = sorted(k for k in me.models if node_id not in placements.get(k, ()))
        if extra:
            return f"{node_id} still holds {len(extra)} models it does not own: {extra[:3]}"
    return None


async def settled(
    targets: Mapping[str, str], active: set[str], timeout_s: float, log: Any = print
) -> Snapshot:
    """Poll the nodes' routing tables (another process's state) until they have settled."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        tables = await _tables(targets)
        why = _unsettled(tables, active)
        if why is None:
            return _snapshot(tables)
        if why != last:
            log(f"  waiting: {why}")
            last = why
        if time.monotonic() > deadline:
            raise TimeoutError(f"not settled within {timeout_s:.0f}s: {why}")
        await asyncio.sleep(0.1)


def _snapshot(tables: Mapping[str, v1.RoutingTable]) -> Snapshot:
    first = next(iter(tables.values()))
    mes = {n: next(m for m in t.members if m.node_id == n) for n, t in tables.items()}
    return Snapshot(
        owners={p.model_key: frozenset(p.owners) for p in first.placements},
        resident={n: frozenset(m.models) for n, m in mes.items()},
        loads={n: int(m.loads) for n, m in mes.items()},
        evictions={n: int(m.evictions) for n, m in mes.items()},
        resident_bytes={n: int(m.resident_bytes) for n, m in mes.items()},
        budget_bytes={n: int(m.budget_bytes) for n, m in mes.items()},
    )


def take(cluster: Cluster, active: set[str], timeout_s: float, log: Any = print) -> Snapshot:
    live = cluster.live()
    snap = asyncio.run(settled({n: p.target for n, p in live.items()}, active, timeout_s, log))
    snap.lines = {n: len(p.lines) for n, p in cluster.nodes.items()}
    return snap


# -- what the nodes' logs say --------------------------------------------------------------

_PLACED = re.compile(r": loaded and warmed (\S+) in ")
_LOADED = re.compile(r": loaded (\S+) on \S+ from ")
_EVICTED = re.compile(r": evicting (\S+) \(least recently used\)")
_UNLOADED = re.compile(r": unloaded (\S+)$")


@dataclass
class NodeEvents:
    placed: list[str] = field(default_factory=list)
    """Loads placement asked for ("loaded and warmed")."""
    loaded: list[str] = field(default_factory=list)
    """Every load that completed (placement's and requests')."""
    evicted: list[str] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    """Every drop (evictions included)."""
    made_room: dict[str, list[str]] = field(default_factory=dict)
    """Loaded key -> the models evicted to make room for it (the evictions logged since
    the previous load: a node's loads each evict then load, placement's one at a time)."""

    @property
    def requested(self) -> list[str]:
        """Loads no placement pass asked for: a request waited for them (cold loads)."""
        left = collections.Counter(self.placed)
        out = []
        for key in self.loaded:
            if left[key]:
                left[key] -= 1
            else:
                out.append(key)
        return out

    @property
    def dropped(self) -> list[str]:
        """Unloads that were not evictions (placement let the model go)."""
        left = collections.Counter(self.evicted)
        out = []
        for key in self.unloaded:
            if left[key]:
                left[key] -= 1
            else:
                out.append(key)
        return out


def events(lines: Sequence[str]) -> NodeEvents:
    out = NodeEvents()
    pending: list[str] = []
    for line in lines:
        m = _LOADED.search(line)
        if m:
            out.made_room.setdefault(m.group(1), []).extend(pending)
            pending = []
        m = _EVICTED.search(line)
        if m:
            pending.append(m.group(1))
        for pattern, bucket in (
            (_PLACED, out.placed),
            (_LOADED, out.loaded),
            (_EVICTED, out.evicted),
            (_UNLOADED, out.unloaded),
        ):
            m = pattern.search(line)
            if m:
                bucket.append(m.group(1))
    return out


# -- one change, analysed ------------------------------------------------------------------


@dataclass
class Change:
    name: str
    nodes_before: int
    nodes_after: int
    seconds: float
    keys: int
    changed: list[str]
    """Keys whose owner set changed."""
    copies_moved: int
    """Owner slots that changed hands (keys gained by a node)."""
    placed: dict[str, list[str]]
    requested: dict[str, list[str]]
    evicted: dict[str, list[str]]
    dropped: dict[str, list[str]]
    loads_counter: dict[str, int]
    evictions_counter: dict[str, int]
    unmoved_loads: dict[str, list[str]]
    """Placement loads of keys whose owners did not change: must be empty."""
    unmoved_evicting: dict[str, list[str]]
    """Those of them that evicted a resident model to make room."""
    elsewhere_loads: dict[str, list[str]]
    """Placement loads of keys that moved, but not to this node (it was not a new owner)."""
    unmoved_drops: dict[str, list[str]]
    """Drops (not evictions) of keys whose owners did not change: must be empty."""
    elsewhere_drops: dict[str, list[str]]
    """Drops of keys that moved, but not away from this node (it still owns them)."""
    gained_lazy: int
    """Keys a node gained but did not load (lazy there: they load on first use)."""
    over_budget: dict[str, tuple[int, int]]

    @property
    def ideal_fraction(self) -> float:
        return REPLICAS / max(self.nodes_before, self.nodes_after)

    @property
    def fraction(self) -> float:
        return len(self.changed) / self.keys if self.keys else 0.0


def analyse(
    name: str, cluster: Cluster, before: Snapshot, after: Snapshot, seconds: float
) -> Change:
    keys = sorted(before.owners)
    changed = [k for k in keys if before.owners[k] != after.owners.get(k, frozenset())]
    moved = set(changed)
    nodes = sorted(set(before.resident) | set(after.resident))
    gained = {n: {k for k in keys if n in after.owners.get(k, ()) and n not in before.owners[k]}
              for n in nodes}  # fmt: skip
    lost = {n: {k for k in keys if n in before.owners[k] and n not in after.owners.get(k, ())}
            for n in nodes}  # fmt: skip
    ev = {
        n: events(cluster.nodes[n].lines[before.lines.get(n, 0) : after.lines.get(n)])
        for n in nodes
    }
    placed = {n: ev[n].placed for n in nodes}
    return Change(
        name=name,
        nodes_before=len(before.resident),
        nodes_after=len(after.resident),
        seconds=seconds,
        keys=len(keys),
        changed=changed,
        copies_moved=sum(len(g) for g in gained.values()),
        placed=placed,
        requested={n: ev[n].requested for n in nodes},
        evicted={n: ev[n].evicted for n in nodes},
        dropped={n: ev[n].dropped for n in nodes},
        loads_counter={
            n: after.loads.get(n, before.loads.get(n, 0)) - before.loads.get(n, 0) for n in nodes
        },
        evictions_counter={
            n: after.evictions.get(n, before.evictions.get(n, 0)) - before.evictions.get(n, 0)
            for n in nodes
        },
        unmoved_loads={n: [k for k in placed[n] if k not in moved] for n in nodes},
        unmoved_evicting={
            n: [k for k in placed[n] if k not in moved and ev[n].made_room.get(k)] for n in nodes
        },
        elsewhere_loads={
            n: [k for k in placed[n] if k in moved and k not in gained[n]] for n in nodes
        },
        unmoved_drops={n: [k for k in ev[n].dropped if k not in moved] for n in nodes},
        elsewhere_drops={
            n: [k for k in ev[n].dropped if k in moved and k not in lost[n]] for n in nodes
        },
        gained_lazy=sum(len(gained[n] - set(placed[n])) for n in nodes),
        over_budget={
            n: (after.resident_bytes[n], after.budget_bytes[n])
            for n in after.resident
            if after.resident_bytes[n] > after.budget_bytes[n]
        },
    )


# -- the run -------------------------------------------------------------------------------


def _payloads(names: Sequence[str], tag: str) -> list[bytes]:
    x = np.ones(4, dtype=np.float32)
    return [build_request(n, {"x": x}, user_id=f"{tag}-{i}") for i, n in enumerate(names)]


def run(cluster: Cluster, log: Any = print) -> dict[str, Any]:
    """Start three nodes, then the join and the drain under load; the counts and changes."""
    cfg = cluster.cfg
    out: dict[str, Any] = {}
    t0 = time.monotonic()
    for i in (1, 2, 3):
        cluster.start(f"node-{i}")
    three = {"node-1", "node-2", "node-3"}
    take(cluster, three, cfg.settle_timeout_s, log)
    out["start_s"] = time.monotonic() - t0
    log(
        f"3 nodes ready in {out['start_s']:.1f}s: {cfg.models} models at R={REPLICAS}, budget "
        f"{cluster.budget} bytes per node ({cfg.budget_models} models of {cluster.file_bytes} B)"
    )
    names = [tiny_name(i) for i in range(cfg.models)]
    load = MixLoad(
        [n.target for n in cluster.live().values()],
        cfg.hot_rate,
        hot=_payloads(names[: cfg.hot], "hot"),
        cold=_payloads(names[cfg.hot :], "cold"),
        cold_rate=cfg.cold_rate,
        deadline_s=cfg.deadline_s,
    )
    load.start()
    changes: list[Change] = []
    try:
        load.wait_answered("warmup", cfg.warmup, timeout_s=cfg.settle_timeout_s)

        # -- join ----------------------------------------------------------------------------
        load.pause_trickle()
        load.mark("join")
        before = take(cluster, three, cfg.settle_timeout_s, log)
        t1 = time.monotonic()
        cluster.start("node-4", command=("node", "join"))
        four = three | {"node-4"}
        after = take(cluster, four, cfg.settle_timeout_s, log)
        changes.append(analyse("join node-4", cluster, before, after, time.monotonic() - t1))
        load.mark("between")
        load.resume_trickle()
        load.wait_answered("between", cfg.warmup, timeout_s=cfg.settle_timeout_s)

        # -- drain ---------------------------------------------------------------------------
        load.pause_trickle()
        load.mark("drain")
        before = take(cluster, four, cfg.settle_timeout_s, log)
        t2 = time.monotonic()
        victim = cluster.nodes["node-2"]
        log(asyncio.run(_drain(cluster.nodes["node-1"].target, "node-2")))
        out["drain_exit"] = victim.proc.wait(cfg.settle_timeout_s)
        out["drain_exit_s"] = time.monotonic() - t2
        after = take(cluster, four - {"node-2"}, cfg.settle_timeout_s, log)
        after.lines["node-2"] = len(victim.lines)
        changes.append(analyse("drain node-2", cluster, before, after, time.monotonic() - t2))
        load.mark("after")
        load.resume_trickle()
        load.wait_answered("after", cfg.warmup, timeout_s=cfg.settle_timeout_s)
    finally:
        load.stop()
    out["changes"] = changes
    out["counts"] = {phase: dict(c) for phase, c in load.counts.items()}
    out["failures"] = list(load.failures)
    out["cold_sent"] = load.cold_sent
    out["exited"] = {
        n: p.proc.returncode for n, p in cluster.nodes.items() if p.proc.poll() is not None
    }
    return out


def _n(per_node: Mapping[str, Sequence[str]]) -> int:
    return sum(len(v) for v in per_node.values())


def _by_node(per_node: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{n} {len(v) if isinstance(v, list) else v}" for n, v in sorted(per_node.items())
    )


def report(result: Mapping[str, Any], log: Any = print) -> int:
    """Print the load by phase and each change; returns the number of violations (failed
    requests, loads and drops the placement did not ask for, a budget exceeded)."""
    bad = 0
    for phase, counts in result["counts"].items():
        total = sum(counts.values())
        failed = {k: v for k, v in counts.items() if k != "OK"}
        bad += sum(failed.values())
        by_code = ", ".join(f"{k} {v}" for k, v in sorted(failed.items())) or "none"
        log(f"load | {phase:<8} {total:6d} requests, failed: {by_code}")
    log(f"trickle requests over the cold models: {result['cold_sent']}")
    for c in result["changes"]:
        unmoved = _n(c.unmoved_loads) + _n(c.unmoved_drops)
        bad += unmoved + len(c.over_budget)
        log(f"{c.name} ({c.nodes_before} -> {c.nodes_after} nodes), settled in {c.seconds:.1f}s:")
        log(
            f"  keys moved by placement: {len(c.changed)}/{c.keys} = {c.fraction:.3f} "
            f"(ideal R/N = {c.ideal_fraction:.3f}); owner copies moved {c.copies_moved}"
        )
        log(f"  placement loads: {_n(c.placed)} ({_by_node(c.placed)})")
        log(f"  gained but lazy (load on first use): {c.gained_lazy}")
        log(f"  drops (placement let go): {_n(c.dropped)} ({_by_node(c.dropped)})")
        log(
            f"  evictions to make room: {_n(c.evicted)} ({_by_node(c.evicted)}); "
            f"loads a request waited for: {_n(c.requested)}"
        )
        log(
            f"  counters: loads {_by_node(c.loads_counter)}; "
            f"evictions {_by_node(c.evictions_counter)}"
        )
        log(
            f"  loaded but not moved: {_n(c.unmoved_loads)} ({_n(c.unmoved_evicting)} of them "
            f"evicting a resident model); dropped but not moved: {_n(c.unmoved_drops)}; "
            f"over budget: {c.over_budget or 'none'}"
        )
        log(
            f"  moved, but loaded by a node that did not gain it: {_n(c.elsewhere_loads)}; "
            f"dropped by a node that still owns it: {_n(c.elsewhere_drops)}"
        )
        for kind, per_node in (
            ("loaded without a move", c.unmoved_loads),
            ("loaded, not its move", c.elsewhere_loads),
            ("dropped without a move", c.unmoved_drops),
            ("dropped, not its move", c.elsewhere_drops),
        ):
            for node_id, keys in sorted(per_node.items()):
                if keys:
                    log(f"    {node_id} {kind}: {keys[:8]}")
    log(f"node exits: {result['exited']}; drain took {result.get('drain_exit_s', 0):.1f}s")
    for line in result["failures"][:20]:
        log(f"  {line}")
    return bad


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    defaults = Config()
    parser.add_argument("--models", type=int, default=defaults.models)
    parser.add_argument("--budget-models", type=int, default=defaults.budget_models)
    parser.add_argument("--hot", type=int, default=defaults.hot, help="hot objectives")
    parser.add_argument("--hot-rate", type=float, default=defaults.hot_rate, help="req/s")
    parser.add_argument("--cold-rate", type=float, default=defaults.cold_rate, help="req/s")
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    args = parser.parse_args(argv)
    cfg = Config(
        models=args.models,
        budget_models=args.budget_models,
        hot=args.hot,
        hot_rate=args.hot_rate,
        cold_rate=args.cold_rate,
        warmup=args.warmup,
    )
    print(
        f"plain grpcio client: {cfg.hot} hot objectives at {cfg.hot_rate:g} req/s and a "
        f"trickle over the other {cfg.models - cfg.hot} at {cfg.cold_rate:g} req/s, "
        f"{cfg.deadline_s:g} s deadlines"
    )
    with local_cluster(cfg) as cluster:
        result = run(cluster)
    return 1 if report(result) else 0


if __name__ == "__main__":
    raise SystemExit(main())
