"""Real node processes for integration tests and benchmarks.

``NodeProcess.start`` runs ``shardline serve`` in a subprocess and waits for the line
in which the node announces its bound ports (no sleeping: it reads the pipe). ``stop``
sends SIGTERM and waits for the clean exit.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "workflows" / "examples"
_SERVING = re.compile(r"serving on (?P<host>[\d.]+):(?P<port>\d+).*?(metrics on :(?P<m>\d+))?$")


@dataclass
class NodeProcess:
    proc: subprocess.Popen[str]
    target: str
    metrics_port: int | None
    lines: list[str] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        args: Sequence[str] = (),
        *,
        workflows: Path = EXAMPLES,
        objectives: Path | None = None,
        metrics: bool = True,
        timeout_s: float = 120.0,
        env: dict[str, str] | None = None,
        etcd: str | None = None,
        prefix: Sequence[str] = (),
        command: Sequence[str] = ("serve",),
    ) -> NodeProcess:
        """A standalone node serving ``workflows``, or with ``etcd`` a cluster node (then
        ``args`` carry ``--cluster``, ``--node-id`` …)."""
        mode = (
            ["--etcd", etcd]
            if etcd
            else [
                "--standalone",
                "--workflows",
                str(workflows),
                *(["--objectives", str(objectives)] if objectives else []),
            ]
        )
        cmd = [
            *prefix,
            sys.executable,
            "-m",
            "shardline",
            *command,
            *mode,
            "--port",
            "0",
            *(["--metrics-port", "0"] if metrics else []),
            *args,
        ]
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        lines: list[str] = []
        found: dict[str, str | None] = {}
        ready = threading.Event()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                m = _SERVING.search(line.rstrip("\n"))
                if m and not ready.is_set():
                    found.update(m.groupdict())
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout_s) or not found:
            proc.kill()
            raise RuntimeError("node did not start:\n" + "\n".join(lines[-40:]))
        m_port = found.get("m")
        metrics_port = int(m_port) if m_port else None
        return cls(proc, f"{found['host']}:{found['port']}", metrics_port, lines)

    def kill(self) -> None:
        """SIGKILL: a crash, no goodbye to the cluster."""
        self.proc.kill()
        self.proc.wait()

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def metrics_text(self) -> str:
        import urllib.request

        assert self.metrics_port is not None
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return str(resp.read().decode())


async def eventually(
    check: Callable[[], T | Awaitable[T | None] | None],
    timeout_s: float = 10.0,
    every_s: float = 0.02,
) -> T:
    """Poll an observable of another process (metrics, files, a routing table over gRPC,
    etcd) until ``check`` (plain or async) returns something other than None. For state this
    process cannot be notified of; in-process code waits on events instead."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(every_s)
