"""Benchmark: a plain grpcio client through a drain and a kill -9 on a 3-node cluster.

    python -m bench.drain_clients [--rate 200] [--after 5] [--grace 2]

A real local cluster (etcd + 3 node processes, every model on R=2 of them). The client is
plain grpcio, configured only by what shardline documents for every gRPC client: a
multi-address target naming every node (``ipv4:127.0.0.1:P1,127.0.0.1:P2,…``) and the
shipped service config ``node/grpc_service_config.json`` (``round_robin``, client-side
health checking, a retry policy for UNAVAILABLE). It sends ``--rate`` requests/s spread
over every node as ingress, each with a 1 s deadline, while:

  drain  ``DrainNode(node-3)``: node-3 turns NOT_SERVING, hands its models over, keeps
         answering for the drain grace, sends GOAWAY, finishes what it has and exits;
         the load goes on ``--after`` seconds past its exit;
  kill   a 4th node joins (the client now names node-1, node-2, node-4), then node-2 is
         killed with SIGKILL; the load goes on ``--after`` seconds past the kill (its
         peers see it dead meanwhile and the ring drops it).

It prints every phase's requests by status code; the target is 0 failures. During the
drain a second, smaller load runs with the same target and service config but its retry
policy removed (``--probe-rate``): it shows that the node's own make-before-break, not
retries, keeps the drain clean (the retry policy is for crashes).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from shardline import grpc_channel_options, grpc_target, service_config
from shardline.membership.etcd import connect
from shardline.node._proto.shardline import v1
from shardline.node.cluster.catalog_ops import catalog, register_tree
from shardline.node.ops.localcluster import wait_ready
from shardline.node.sdk.admin_client import AdminClient
from shardline.node.sdk.client import build_request
from tests.etcd_server import EtcdServer
from tests.procs import EXAMPLES, NodeProcess

CLUSTER = "drain-clients"
TOKEN = "drain-clients-admin-token-0123456789"
DEADLINE_S = 1.0
FRAUD = {
    "amount": 912.5,
    "currency": "USD",
    "country_mismatch": True,
    "account_age_days": 3.0,
    "tx_last_24h": 9,
    "card_present": False,
}
RANKING = {"candidates": np.array([1, 5, 9, 12, 40, 77], dtype=np.int64), "k": 3}


def requests(n: int = 64) -> list[bytes]:
    """Encoded PredictRequests over both example objectives and many users."""
    out = []
    for i in range(n):
        objective, inputs = (
            ("payment_fraud", FRAUD) if i % 2 else ("continue_watching_ranking", RANKING)
        )
        out.append(build_request(objective, inputs, user_id=f"user-{i}"))
    return out


@dataclass
class GrpcioLoad:
    """Open-loop load from a plain grpcio channel, on its own thread: ``rate`` requests
    per second, each with a 1 s deadline; outcomes counted per phase and status code."""

    addresses: Sequence[str]
    rate: float
    retries: bool = True
    phase: str = "warmup"
    counts: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.target = grpc_target(list(self.addresses))
        options = grpc_channel_options()
        if not self.retries:
            config = service_config()
            for method in config["methodConfig"]:
                method.pop("retryPolicy", None)
            options = [*grpc_channel_options(config), ("grpc.enable_retries", 0)]
        self.channel = grpc.insecure_channel(self.target, options=options)
        self._predict = self.channel.unary_unary("/shardline.v1.Inference/Predict")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._outstanding = 0
        self._idle = threading.Condition(self._lock)
        self._answered = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._run, name="grpcio-load", daemon=True)

    def start(self, ready_timeout_s: float = 60.0) -> GrpcioLoad:
        grpc.channel_ready_future(self.channel).result(timeout=ready_timeout_s)
        self._thread.start()
        return self

    def _done(self, phase: str, future: grpc.Future) -> None:
        code = future.code()
        with self._lock:
            self.counts[phase][code.name] += 1
            if code is not grpc.StatusCode.OK:
                self.failures.append(f"{phase}: {code.name}: {future.details()}")
            self._outstanding -= 1
            self._answered.notify_all()
            if self._outstanding == 0:
                self._idle.notify_all()

    def _run(self) -> None:
        payloads = itertools.cycle(requests())
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                self._outstanding += 1
                phase = self.phase
            future = self._predict.future(next(payloads), timeout=DEADLINE_S)
            future.add_done_callback(lambda f, phase=phase: self._done(phase, f))
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)  # the pacing of an open-loop load

    def mark(self, phase: str) -> None:
        with self._lock:
            self.phase = phase

    def wait_answered(self, phase: str, n: int, timeout_s: float = 120.0) -> None:
        """Until ``n`` requests of ``phase`` have an outcome."""
        with self._answered:
            if not self._answered.wait_for(
                lambda: sum(self.counts[phase].values()) >= n, timeout_s
            ):
                raise TimeoutError(f"{phase}: fewer than {n} outcomes in {timeout_s}s")

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        with self._idle:
            self._idle.wait_for(lambda: self._outstanding == 0, timeout_s)
        self.channel.close()


class LocalCluster:
    """etcd, the examples registered, nodes started with an admin token and drain grace."""

    def __init__(self, etcd: EtcdServer, root: Path, grace_s: float) -> None:
        self.etcd = etcd
        self.root = root
        self.grace_s = grace_s
        self.nodes: dict[str, NodeProcess] = {}
        (root / "token").write_text(TOKEN)

    def start(self, node_id: str) -> NodeProcess:
        node = NodeProcess.start(
            [
                "--cluster", CLUSTER, "--node-id", node_id, "--cpu-threads", "1",
                "--admin-token-file", str(self.root / "token"),
            ],
            etcd=f"127.0.0.1:{self.etcd.client_port}",
            metrics=False,
            env={"SHARDLINE_DRAIN_GRACE_S": str(self.grace_s)},
        )  # fmt: skip
        self.nodes[node_id] = node
        return node

    def targets(self) -> list[str]:
        return [n.target for n in self.nodes.values() if n.proc.poll() is None]

    async def ready(self, timeout_s: float = 120.0) -> None:
        await wait_ready(self.targets(), timeout_s, lambda _: None)

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


@contextmanager
def local_cluster(grace_s: float, nodes: int = 3) -> Iterator[LocalCluster]:
    with EtcdServer() as etcd, tempfile.TemporaryDirectory(prefix="drain-clients-") as tmp:

        async def register() -> None:
            client = await connect(etcd.endpoint)
            await register_tree(catalog(client, CLUSTER), EXAMPLES, EXAMPLES / "objectives")
            await client.close()

        asyncio.run(register())
        cluster = LocalCluster(etcd, Path(tmp), grace_s)
        try:
            for i in range(1, nodes + 1):
                cluster.start(f"node-{i}")
            asyncio.run(cluster.ready())
            yield cluster
        finally:
            cluster.stop()


async def _drain(target: str, node_id: str) -> str:
    async with AdminClient(target, TOKEN) as admin:
        reply = await admin.call("drain_node", v1.DrainNodeRequest(node_id=node_id))
    return str(reply.message)


def run(
    cluster: LocalCluster, rate: float, after_s: float, probe_rate: float = 40.0, log: Any = print
) -> dict[str, Any]:
    """The drain phase then the kill phase; returns their counts and timings."""
    out: dict[str, Any] = {}
    warm = int(rate * 2)

    # -- drain ----------------------------------------------------------------------------
    load = GrpcioLoad(cluster.targets(), rate).start()
    probe = GrpcioLoad(cluster.targets(), probe_rate, retries=False).start()
    try:
        load.wait_answered("warmup", warm)
        victim = cluster.nodes["node-3"]
        load.mark("drain")
        probe.mark("drain")
        t0 = time.monotonic()
        log(asyncio.run(_drain(cluster.nodes["node-1"].target, "node-3")))
        code = victim.proc.wait(120)
        out["drain_s"] = time.monotonic() - t0
        out["drain_exit"] = code
        load.mark("after drain")
        probe.mark("after drain")
        time.sleep(after_s)  # the load runs on for a fixed time after the exit
    finally:
        load.stop()
        probe.stop()
    out["drain"] = {phase: dict(c) for phase, c in load.counts.items()}
    out["drain, no retries"] = {phase: dict(c) for phase, c in probe.counts.items()}
    failures = list(load.failures) + [f"no retries, {f}" for f in probe.failures]
    del cluster.nodes["node-3"]

    # -- kill -9 ----------------------------------------------------------------------------
    cluster.start("node-4")
    asyncio.run(cluster.ready())
    load = GrpcioLoad(cluster.targets(), rate).start()
    try:
        load.wait_answered("warmup", warm)
        load.mark("kill")
        cluster.nodes["node-2"].kill()
        time.sleep(after_s)  # during the kill and after it: the peers detect it, ring moves
        load.mark("after kill")
        time.sleep(after_s)
    finally:
        load.stop()
    out["kill"] = {phase: dict(c) for phase, c in load.counts.items()}
    out["failures"] = failures + load.failures
    return out


def report(result: dict[str, Any], log: Any = print) -> int:
    """Print the counts by phase and status code; returns the number of failures."""
    failed = 0
    for scenario in ("drain", "drain, no retries", "kill"):
        for phase, counts in result[scenario].items():
            total = sum(counts.values())
            bad = {k: v for k, v in counts.items() if k != "OK"}
            failed += sum(bad.values())
            by_code = ", ".join(f"{k} {v}" for k, v in sorted(bad.items())) or "none"
            log(f"{scenario:>17} | {phase:<12} {total:6d} requests, failed: {by_code}")
    log(
        f"drain of node-3: {result['drain_s']:.2f}s until it exited "
        f"(exit status {result['drain_exit']}); total failed: {failed}"
    )
    for line in result["failures"][:20]:
        log(f"  {line}")
    return failed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--after", type=float, default=5.0, help="seconds of load after each")
    parser.add_argument("--grace", type=float, default=2.0, help="the nodes' drain grace (s)")
    parser.add_argument(
        "--probe-rate", type=float, default=40.0, help="req/s of the no-retry client (drain)"
    )
    args = parser.parse_args(argv)
    print(
        f"plain grpcio client, {args.rate:g} req/s over every node, {DEADLINE_S:g} s deadlines, "
        f"drain grace {args.grace:g} s"
    )
    with local_cluster(args.grace) as cluster:
        result = run(cluster, args.rate, args.after, args.probe_rate)
    return 1 if report(result) else 0


if __name__ == "__main__":
    raise SystemExit(main())
