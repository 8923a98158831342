"""Start and stop one node: gRPC server, runtime, health, signals, graceful leaving.

``NodeServer.start`` binds the gRPC port (``port=0`` picks a free one; ``bound_port``
tells which) after everything it serves is loaded. It serves, besides the shardline
services, grpclib's standard health service (``grpc.health.v1.Health``: the overall
status ``""`` and one per service, ``shardline.v1.Inference`` …) and server reflection
(``grpc.reflection.v1`` and ``v1alpha``, so ``grpcurl``-style tools list the services).

Health tells the truth: the overall status and ``shardline.v1.Inference`` follow the same
readiness as ``/readyz`` (NOT_SERVING until the node is ready, and from the moment it
starts leaving); ``Watch`` pushes every change, which is what gRPC clients' client-side
health checking listens to. ``shardline.v1.Cluster``, ``Peer`` and ``Admin`` stay SERVING
until the node stops answering (peers keep forwarding to a draining node while its
successors warm up).

Leaving is make-before-break (``leave``): NOT_SERVING first, then the node keeps
answering for ``drain_grace_s`` (clients that watch health, and load balancers that
probe ``/readyz``, move away meanwhile); then ``stop`` sends HTTP/2 GOAWAY on every
connection (twice, the standard graceful way: first "no new streams", then, after a
PING round trip, the last stream it will process; ``shardline.node.serving.graceful_server``), waits
for the requests in flight (up to a grace period), closes the server and drains the actors.

The standalone node is assembled here too (``build_standalone``, ``serve_standalone``):
every package under a directory, served under the objective files beside it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, cast

from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from grpclib.health.check import ServiceStatus
from grpclib.health.service import OVERALL, Health
from grpclib.reflection.service import ServerReflection
from grpclib.server import Stream

# The descriptors of the shardline services, for server reflection (the protobuf default
# pool knows a file once its _pb2 module is imported).
from shardline.node._proto.shardline.v1 import admin_pb2, cluster_pb2, inference_pb2, peer_pb2
from shardline.node.observability.metrics import Readiness
from shardline.node.sdk.codec import WireCodec
from shardline.node.sdk.tls import peer_verified, server_context
from shardline.node.serving.describe import describe
from shardline.node.serving.graceful_server import GracefulServer, InFlight
from shardline.node.serving.node_config import NodeConfig
from shardline.node.serving.oip import SERVICE as OIP_SERVICE
from shardline.node.serving.oip import OipService
from shardline.node.serving.oip_rest import RestV2
from shardline.node.serving.peer_link import LinkServing
from shardline.node.serving.runtime import NodeRuntime
from shardline.node.serving.service import ClusterService, InferenceService, recv_request
from shardline.router.objectives import ObjectiveConfig, load_objective_file, load_objectives_dir
from shardline.workflows.loader import discover_packages

log = logging.getLogger("shardline.server")

MAX_CONTROL_BYTES = 300 * 1024 * 1024  # a deployed package travels in one Admin message
DRAIN_GRACE_ENV = "SHARDLINE_DRAIN_GRACE_S"
DEFAULT_DRAIN_GRACE_S = 2.0
HEALTH_POLL_S = 0.1  # how often the health statuses are re-read from the readiness callback
INFERENCE_SERVICE = "shardline.v1.Inference"
_PROTO_FILES = (admin_pb2, cluster_pb2, inference_pb2, peer_pb2)


def drain_grace_from_env(default: float = DEFAULT_DRAIN_GRACE_S) -> float:
    """``$SHARDLINE_DRAIN_GRACE_S`` (seconds a leaving node keeps answering while
    NOT_SERVING), else ``default``; a bad value is refused with a clear error."""
    raw = os.environ.get(DRAIN_GRACE_ENV, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{DRAIN_GRACE_ENV}={raw!r}: not a number of seconds") from None
    if not 0.0 <= value <= 3600.0:
        raise ValueError(f"{DRAIN_GRACE_ENV}={raw!r}: give 0 to 3600 seconds")
    return value


def _compressed_ok(handler: Any) -> Any:
    """``handler`` (of any service: ours, betterproto's Admin, grpclib's Health) with its
    one request read through ``recv_request``, which also takes gzip/deflate-compressed
    messages (grpclib refuses them: the client saw UNKNOWN, the log a traceback). Methods that
    stream their requests (reflection) keep grpclib's reader."""
    if handler.cardinality not in (Cardinality.UNARY_UNARY, Cardinality.UNARY_STREAM):
        return handler.func
    func = handler.func

    async def reading_compressed(stream: Stream[Any, Any]) -> None:
        stream.recv_message = partial(recv_request, stream)  # type: ignore[method-assign]
        await func(stream)

    return reading_compressed


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
        # shardline.v1 and the Open Inference Protocol (V2) share the one request path.
        self.oip = OipService(runtime, self.readiness)
        for service in (InferenceService(runtime), self.oip, *services):
            mapping = {
                path: handler._replace(
                    func=self.in_flight.wrap(self._mtls(path, _compressed_ok(handler)))
                )
                for path, handler in service.__mapping__().items()
            }
            wrapped.append(_Wrapped(mapping))
        # Health: "" and Inference follow readiness; the other services are up until the
        # server stops answering.
        self.ready_status = ServiceStatus()
        self.ready_status.set(False)
        self.alive_status = ServiceStatus()
        self.alive_status.set(True)
        checks: dict[Any, list[Any]] = {OVERALL: [self.ready_status]}
        for service in wrapped:
            name = next(iter(service.__mapping__())).split("/")[1]
            checks[service] = [
                self.ready_status if name in (INFERENCE_SERVICE, OIP_SERVICE) else self.alive_status
            ]
        self.health = Health(checks)
        health = _Wrapped(
            {
                path: h._replace(func=_compressed_ok(h))
                for path, h in self.health.__mapping__().items()
            }
        )
        # The peer link shares the port; it takes forwards once a cluster node gives it a
        # handler (``peer_link.handler``), counted in flight, mutual TLS as Peer.Forward.
        self.peer_link = LinkServing(
            self.in_flight,
            self.config.max_message_bytes,
            require_client_cert=self.config.tls is not None,
            max_streams=self.config.peer_link_max_streams,
        )
        self.server = GracefulServer(
            ServerReflection.extend([*wrapped, health]),
            codec=WireCodec(self.config.max_message_bytes, MAX_CONTROL_BYTES),
            coalesce_writes=self.config.coalesce_writes,
            lean_http2=self.config.http2 == "lean",
            peer_link=self.peer_link,
        )
        self.bound_port = 0
        self.metrics_port: int | None = None
        self.leaving = False
        self._left_at: float | None = None
        self._health_task: asyncio.Task[None] | None = None

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

    def readiness(self) -> tuple[bool, str]:
        """What /readyz and the health service say: the node's readiness, and never
        ready once it is leaving."""
        if self.leaving:
            return False, "leaving: answering what comes, but send new requests elsewhere"
        if self.ready is None:
            return True, "ready"
        try:
            return self.ready()
        except Exception as exc:  # a readiness bug must not break the probes
            log.exception("readiness check failed")
            return False, f"readiness check failed: {type(exc).__name__}"

    def refresh_health(self) -> None:
        """Re-read readiness into the health statuses (Watch streams see the change)."""
        ok, _ = self.readiness()
        self.ready_status.set(ok)

    async def _health_loop(self) -> None:
        # Readiness is a condition over membership, placement and drain state that
        # changes in many places; re-reading it often is simpler and as prompt.
        while True:
            self.refresh_health()
            await asyncio.sleep(HEALTH_POLL_S)

    async def start(self) -> None:
        tls = self.config.tls
        await self.server.start(
            self.config.host, self.config.port, ssl=server_context(tls) if tls else None
        )
        listener = cast(asyncio.Server | None, self.server._server)  # grpclib keeps it private
        sockets = listener.sockets if listener is not None else ()
        self.bound_port = sockets[0].getsockname()[1] if sockets else self.config.port
        if self.config.metrics_port is not None:
            rest = RestV2(
                self.oip,
                asyncio.get_running_loop(),
                max_body_bytes=self.config.max_message_bytes,
                default_deadline_s=self.config.default_deadline_s,
                in_flight=self.in_flight,
            )
            self.metrics_port = self.runtime.metrics.serve_http(
                self.config.host,
                self.config.metrics_port,
                self.readiness,
                {"/v2": rest},
                max_connections=self.config.http_max_connections,
            )
        self.refresh_health()
        self._health_task = asyncio.create_task(self._health_loop(), name="health")

    def begin_leaving(self) -> None:
        """NOT_SERVING on health and /readyz from now on; the node keeps answering."""
        if not self.leaving:
            self.leaving = True
            self._left_at = asyncio.get_running_loop().time()
            self.refresh_health()
            log.info("%s: not serving (leaving); still answering", self.config.node_id)

    async def wait_grace(self, grace_s: float) -> None:
        """Until ``grace_s`` have passed since ``begin_leaving``: the time clients and load
        balancers get to see NOT_SERVING and move away (a timed wait by design)."""
        self.begin_leaving()
        assert self._left_at is not None
        remaining = self._left_at + grace_s - asyncio.get_running_loop().time()
        if remaining > 0:
            log.info("%s: drain grace, %.1fs more", self.config.node_id, remaining)
            await asyncio.sleep(remaining)

    async def quiesce(self, grace_s: float = 10.0) -> None:
        """GOAWAY to every connection, then wait (up to ``grace_s``) for the requests in
        flight; after it, new streams are refused with UNAVAILABLE."""
        self.begin_leaving()
        sent = await self.server.goaway()
        log.info("%s: GOAWAY sent on %d connections", self.config.node_id, sent)
        self.in_flight.draining = True
        try:
            await asyncio.wait_for(self.in_flight.wait_idle(), grace_s)
        except TimeoutError:
            log.warning(
                "%d requests still in flight after %.1fs; cancelling", self.in_flight.count, grace_s
            )

    async def close(self) -> None:
        """Stop answering: close the server and its connections, stop the runtime."""
        self.alive_status.set(False)
        if self._health_task is not None:
            self._health_task.cancel()
        self.server.close()  # cancels what is left (health Watch streams among them)
        await self.server.wait_closed()
        self.server.close_connections()
        await self.runtime.stop()

    async def stop(self, grace_s: float = 10.0) -> None:
        """``quiesce`` then ``close`` (no drain grace: call ``wait_grace`` first for it)."""
        await self.quiesce(grace_s)
        await self.close()


def load_objectives(path: Path) -> dict[str, Any]:
    if path.is_dir():
        return dict(load_objectives_dir(path))
    cfg = load_objective_file(path)
    return {cfg.name: cfg}


def default_objectives_path(workflows_dir: Path) -> Path | None:
    """Objectives default to an ``objectives/`` folder beside the workflow packages."""
    candidate = workflows_dir / "objectives"
    return candidate if candidate.is_dir() else None


def _version_order(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if version.isdigit() else (1, version)


def objective_per_workflow(model_keys: Sequence[str]) -> dict[str, ObjectiveConfig]:
    """One objective per workflow, named after it, routing to its highest version."""
    versions: dict[str, list[str]] = {}
    for key in model_keys:
        name, _, version = key.rpartition("@")
        versions.setdefault(name, []).append(version)
    return {
        name: ObjectiveConfig.from_dict(
            {"name": name, "default": f"{name}@{max(vs, key=_version_order)}"}
        )
        for name, vs in versions.items()
    }


async def build_standalone(
    config: NodeConfig, workflows_dir: Path, objectives_path: Path | None
) -> NodeRuntime:
    """A runtime serving every workflow package under ``workflows_dir`` (no etcd).

    Objectives come from ``objectives_path``, else ``WORKFLOWS/objectives``; with neither,
    each workflow is served under an objective of its own name (its highest version), so
    a smoke test needs no objective file.
    """
    runtime = NodeRuntime(config)
    packages = discover_packages(workflows_dir)
    if not packages:
        raise FileNotFoundError(f"no workflow packages (workflow.toml) under {workflows_dir}")
    for package in packages:
        await runtime.executor.load_workflow(package)
    path = objectives_path or default_objectives_path(workflows_dir)
    if path is not None:
        runtime.set_objectives(load_objectives(path))
    else:
        objectives = objective_per_workflow(sorted(runtime.models))
        runtime.set_objectives(objectives)
        log.info(
            "no objectives given: serving each workflow under its own name (%s)",
            ", ".join(f"{n} -> {c.default}" for n, c in sorted(objectives.items())),
        )
    for objective, keys in runtime.missing_models().items():
        log.warning("objective %s routes to models not loaded here: %s", objective, ", ".join(keys))
    runtime.tune_process()
    return runtime


async def serve_standalone(
    config: NodeConfig,
    workflows_dir: Path,
    objectives_path: Path | None,
    announce: Callable[[str], None] = print,
    *,
    drain_grace_s: float | None = None,
) -> None:
    """Run a standalone node until SIGINT/SIGTERM, then leave gracefully and exit:
    NOT_SERVING for ``drain_grace_s`` (default ``$SHARDLINE_DRAIN_GRACE_S``, else
    ``DEFAULT_DRAIN_GRACE_S``) while still answering, GOAWAY, in-flight requests, exit."""
    grace = drain_grace_from_env() if drain_grace_s is None else drain_grace_s
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
    announce(
        f"shardline node {config.node_id} stopping: not serving, answering for {grace:g}s, "
        "then GOAWAY and draining in-flight requests"
    )
    await node.wait_grace(grace)
    await node.stop()
    announce(f"shardline node {config.node_id} stopped")
