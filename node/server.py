"""Start and stop one node: gRPC server, runtime, signals, graceful drain.

``NodeServer.start`` binds the gRPC port (``port=0`` picks a free one; ``bound_port``
tells which) after everything it serves is loaded, so a node that answers health
checks is ready. ``stop`` refuses new requests with UNAVAILABLE, waits for the ones in
flight (up to a grace period), then closes the server and drains the actors.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, cast

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.service import Health
from grpclib.server import Server, Stream
from prometheus_client import Gauge

from node.describe import describe
from node.metrics import Readiness
from node.runtime import NodeConfig, NodeRuntime
from node.service import ClusterService, InferenceService, WireCodec
from node.tls import peer_verified, server_context
from router.rules import load_objective_file, load_objectives_dir
from workflows.loader import discover_packages

log = logging.getLogger("shardline.server")

MAX_CONTROL_BYTES = 300 * 1024 * 1024  # a deployed package travels in one Admin message


class InFlight:
    """Counts requests in flight; refuses new ones once draining."""

    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge
        self.count = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def wrap(self, handler: Callable[[Stream[Any, Any]], Awaitable[None]]) -> Any:
        async def guarded(stream: Stream[Any, Any]) -> None:
            if self.draining:
                raise GRPCError(Status.UNAVAILABLE, "node is shutting down; retry on another node")
            self.count += 1
            self.gauge.inc()
            self._idle.clear()
            try:
                await handler(stream)
            finally:
                self.count -= 1
                self.gauge.dec()
                if self.count == 0:
                    self._idle.set()

        return guarded

    async def wait_idle(self) -> None:
        await self._idle.wait()


class _Wrapped:
    """A service whose handlers run inside the in-flight counter."""

    def __init__(self, mapping: dict[str, Any]) -> None:
        self._mapping = mapping

    def __mapping__(self) -> dict[str, Any]:
        return self._mapping


PEER_ONLY = ("/shardline.v1.Peer/", "/shardline.v1.Admin/")


class NodeServer:
    def __init__(
        self,
        runtime: NodeRuntime,
        services: Sequence[Any] = (),
        ready: Readiness | None = None,
    ) -> None:
        self.ready = ready
        self.runtime = runtime
        self.config = runtime.config
        self.in_flight = InFlight(runtime.metrics.in_flight)
        wrapped: list[Any] = []
        for service in (InferenceService(runtime), *services):
            mapping = {
                path: handler._replace(func=self.in_flight.wrap(self._mtls(path, handler.func)))
                for path, handler in service.__mapping__().items()
            }
            wrapped.append(_Wrapped(mapping))
        self.server = Server(
            [*wrapped, Health()],
            codec=WireCodec(self.config.max_message_bytes, MAX_CONTROL_BYTES),
        )
        self.bound_port = 0
        self.metrics_port: int | None = None

    def _mtls(self, path: str, func: Any) -> Any:
        """With TLS on, peer and admin calls need a certificate signed by the cluster CA."""
        if self.config.tls is None or not path.startswith(PEER_ONLY):
            return func

        async def verified(stream: Stream[Any, Any]) -> None:
            if not peer_verified(stream):
                raise GRPCError(
                    Status.PERMISSION_DENIED,
                    f"{path} needs a client certificate signed by the cluster CA (mutual TLS)",
                )
            await func(stream)

        return verified

    async def start(self) -> None:
        tls = self.config.tls
        await self.server.start(
            self.config.host, self.config.port, ssl=server_context(tls) if tls else None
        )
        listener = cast(asyncio.Server | None, self.server._server)  # grpclib keeps it private
        sockets = listener.sockets if listener is not None else ()
        self.bound_port = sockets[0].getsockname()[1] if sockets else self.config.port
        if self.config.metrics_port is not None:
            self.metrics_port = self.runtime.metrics.serve_http(
                self.config.host, self.config.metrics_port, self.ready
            )

    async def stop(self, grace_s: float = 10.0) -> None:
        self.in_flight.draining = True
        try:
            await asyncio.wait_for(self.in_flight.wait_idle(), grace_s)
        except TimeoutError:
            log.warning(
                "%d requests still in flight after %.1fs; cancelling", self.in_flight.count, grace_s
            )
        self.server.close()
        await self.server.wait_closed()
        await self.runtime.stop()


def load_objectives(path: Path) -> dict[str, Any]:
    if path.is_dir():
        return dict(load_objectives_dir(path))
    cfg = load_objective_file(path)
    return {cfg.name: cfg}


def default_objectives_path(workflows_dir: Path) -> Path | None:
    """Objectives default to an ``objectives/`` folder beside the workflow packages."""
    candidate = workflows_dir / "objectives"
    return candidate if candidate.is_dir() else None


async def build_standalone(
    config: NodeConfig, workflows_dir: Path, objectives_path: Path | None
) -> NodeRuntime:
    """A runtime serving every workflow package under ``workflows_dir`` (no etcd)."""
    runtime = NodeRuntime(config)
    packages = discover_packages(workflows_dir)
    if not packages:
        raise FileNotFoundError(f"no workflow packages (workflow.toml) under {workflows_dir}")
    for package in packages:
        await runtime.load_workflow(package)
    path = objectives_path or default_objectives_path(workflows_dir)
    if path is not None:
        runtime.set_objectives(load_objectives(path))
    for objective, keys in runtime.missing_models().items():
        log.warning("objective %s routes to models not loaded here: %s", objective, ", ".join(keys))
    runtime.tune_process()
    return runtime


async def serve_standalone(
    config: NodeConfig,
    workflows_dir: Path,
    objectives_path: Path | None,
    announce: Callable[[str], None] = print,
) -> None:
    """Run a standalone node until SIGINT/SIGTERM, then drain and exit."""
    runtime = await build_standalone(config, workflows_dir, objectives_path)
    await runtime.start_prediction_log()
    node = NodeServer(
        runtime,
        [ClusterService(lambda: describe(runtime))],
        ready=lambda: (True, f"ready: {len(runtime.models)} models loaded"),
    )
    await node.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    announce(
        f"shardline node {config.node_id} serving on {config.host}:{node.bound_port} "
        f"({len(runtime.models)} models: {', '.join(sorted(runtime.models))}; "
        f"objectives: {', '.join(sorted(runtime.objectives)) or 'none'})"
        + (f" metrics on :{node.metrics_port}" if node.metrics_port is not None else "")
    )
    await stop.wait()
    announce(f"shardline node {config.node_id} stopping: draining in-flight requests")
    await node.stop()
    announce(f"shardline node {config.node_id} stopped")
