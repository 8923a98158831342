"""The ``shardline`` command line: serve a node, call it, explain objective decisions.

Only the commands that serve (``serve``, ``node join``, ``up``) and ``sim`` import the
serving modules (torch) or the simulator, inside the command: ``import shardline.node.ops.cli`` and
the client commands stay light. Every command's ``--target`` defaults to
``shardline.node.sdk.client.DEFAULT_TARGET`` (or $SHARDLINE_TARGET).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from rich.console import Console
from rich.text import Text

from shardline.node.ops.cli_admin import (
    cluster_option,
    fail,
    human_bytes,
    print_table,
    register_admin_commands,
    state_dir_option,
    target_option,
)
from shardline.node.sdk.admin_client import DEFAULT_PORT, unreachable
from shardline.node.sdk.tls import TlsFiles
from shardline.node.serving.inputs import DEFAULT_HEAD_LIMITS as HEAD_LIMITS
from shardline.node.serving.node_config import (
    DEFAULT_MAX_RESIDENT_MODELS,
    parse_bytes,
    parse_hot_policy,
)

if TYPE_CHECKING:
    from shardline.node.sdk.client import Prediction

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "workflows" / "examples"
console = Console()
err_console = Console(stderr=True)
TRANSPORT_ERRORS = (OSError, TimeoutError, StreamTerminatedError, ProtocolError)


def _pairs(values: Sequence[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint=what)
        out[key.strip()] = value
    return out


class _Shardline(click.Group):
    """The root group: a command that meets a network or file error it did not handle
    itself prints one line (never a traceback) and exits 3 (network) or 1 (file); the
    ``sim`` group loads on demand."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ConnectionError, TimeoutError, StreamTerminatedError, ProtocolError) as exc:
            fail(f"error: {unreachable('the target', exc)}", 3)
        except OSError as exc:  # a file the command reads or writes
            fail(f"error: {exc}", 1)
        except GRPCError as exc:
            fail(f"{exc.status.name}: {exc.message or ''}", 2)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), "sim"])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "sim":
            return _SimGroup()
        return super().get_command(ctx, cmd_name)


class _SimGroup(click.Group):
    """``shardline sim``: the simulator's click group, imported only when used."""

    def __init__(self) -> None:
        super().__init__(
            "sim",
            help="Deterministic chaos simulator: `shardline sim run SCENARIO [--seed N] "
            "[--report DIR]`, `shardline sim list`.",
            short_help="Chaos simulator (run, list).",
            context_settings={"help_option_names": ["-h", "--help"]},
        )

    @staticmethod
    def _real() -> click.Group:
        from shardline.sim.cli import sim  # loaded on demand: the node never imports the simulator

        return sim

    def list_commands(self, ctx: click.Context) -> list[str]:
        return self._real().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._real().get_command(ctx, cmd_name)


@click.group(cls=_Shardline, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default="INFO", show_default=True, help="Python log level.")
def main(log_level: str) -> None:
    """shardline: a model-serving cluster behind one gRPC API."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@main.command()
@click.option("--standalone", is_flag=True, help="Serve without etcd: one node, local files.")
@click.option("--etcd", default=None, help="Cluster mode: etcd HOST:PORT.")
@click.option("--cluster", "cluster_name", default="default", show_default=True)
@click.option(
    "--workflows",
    "workflows_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=EXAMPLES_DIR,
    show_default=True,
    help="Standalone: directory of workflow packages (searched for workflow.toml).",
)
@click.option(
    "--objectives",
    "objectives_path",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Standalone: objective config file or directory [default: WORKFLOWS/objectives].",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--advertise-host", default=None,
    help="Cluster mode: the address peers and clients dial [default: --host].",
)  # fmt: skip
@click.option(
    "--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535),
    help="gRPC port (0: any); the default is every client command's default --target.",
)  # fmt: skip
@click.option("--node-id", default="node-1", show_default=True)
@click.option("--zone", default="", help="Cluster mode: this node's zone.")
@click.option("--capacity", default=1.0, show_default=True, help="Cluster mode: ring weight.")
@click.option("--gossip-port", default=0, show_default=True, help="UDP gossip port (0: any).")
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus /metrics here.")
@click.option(
    "--cpu-threads",
    type=int,
    default=None,
    help="Torch intra-op threads on CPU [default: the usable cores (affinity, cgroup quota) "
    "but one, for the event loop; at least 1].",
)
@click.option(
    "--event-loop",
    type=click.Choice(["auto", "uvloop", "asyncio"]),
    default="auto",
    show_default=True,
    help="auto: uvloop when it is installed (the [fast] extra), else asyncio's own loop.",
)
@click.option(
    "--coalesce-writes/--no-coalesce-writes",
    default=True,
    show_default=True,
    help="Send the HTTP/2 frames of one event-loop turn in one socket write.",
)
@click.option(
    "--http2",
    type=click.Choice(["lean", "h2"]),
    default="lean",
    show_default=True,
    help="HTTP/2 under grpclib: lean (shardline's connection, node/sdk/http2.py) or h2.",
)
@click.option(
    "--admin-token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Cluster mode: file holding the admin token [default: $SHARDLINE_ADMIN_TOKEN].",
)
@click.option(
    "--artifact-store",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Cluster mode: directory where `shardline deploy` stores packages.",
)
@click.option(
    "--tls-ca",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="TLS: the cluster CA (turns on TLS for clients and mutual TLS between peers).",
)
@click.option(
    "--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None,
    help="TLS: this node's certificate.",
)  # fmt: skip
@click.option(
    "--tls-key", type=click.Path(exists=True, dir_okay=False), default=None,
    help="TLS: this node's private key.",
)  # fmt: skip
@click.option("--etcd-ca", default=None, help="etcd TLS: CA of etcd's certificate.")
@click.option("--etcd-cert", default=None, help="etcd TLS: client certificate.")
@click.option("--etcd-key", default=None, help="etcd TLS: client key.")
@click.option(
    "--etcd-user", default=None, help="etcd auth: user (password from --etcd-password-file)."
)
@click.option(
    "--etcd-password-file", type=click.Path(exists=True, dir_okay=False), default=None,
    help="etcd auth: file holding the password.",
)  # fmt: skip
@click.option(
    "--predlog-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Write sampled predictions as JSON Lines here (off by default).",
)
@click.option(
    "--predlog-rate",
    type=float,
    default=0.01,
    show_default=True,
    help="Default share of predictions logged (objectives may set their own).",
)
@click.option(
    "--peer-transport",
    type=click.Choice(["link", "grpc"]),
    default="link",
    show_default=True,
    envvar="SHARDLINE_PEER_TRANSPORT",
    help="Cluster mode: forward to owners over the peer link (a length-prefixed protocol on "
    "the gRPC port) or over gRPC Peer.Forward (HTTP/2, as nodes before the link did).",
)
@click.option(
    "--peer-link-max-streams",
    type=click.IntRange(1),
    default=1024,
    show_default=True,
    help="Forwards a peer may have in flight on one peer-link connection (beyond: "
    "RESOURCE_EXHAUSTED, and the peer fails over).",
)
@click.option(
    "--http-max-connections",
    type=click.IntRange(1),
    default=256,
    show_default=True,
    help="Connections the HTTP port (--metrics-port: metrics, health, REST V2) serves at "
    "once; more wait in the listen backlog.",
)
@click.option(
    "--drain-grace-s",
    type=click.FloatRange(0, 3600),
    default=None,
    envvar="SHARDLINE_DRAIN_GRACE_S",
    help="Seconds a leaving node (drain or SIGTERM) stays NOT_SERVING on health but keeps "
    "answering before it sends GOAWAY, so clients move away first [default: 2].",
)
@click.option(
    "--max-context-chars", type=click.IntRange(1), default=HEAD_LIMITS.context_chars,
    show_default=True, help="Longest user_id, country, device or surface a request may carry.",
)  # fmt: skip
@click.option(
    "--max-attributes", type=click.IntRange(1), default=HEAD_LIMITS.attributes,
    show_default=True, help="Most context attributes a request may carry.",
)  # fmt: skip
@click.option(
    "--max-attribute-chars", type=click.IntRange(1), default=HEAD_LIMITS.attribute_value_chars,
    show_default=True, help="Longest context attribute value a request may carry.",
)  # fmt: skip
@click.option(
    "--memory-budget", default=None, metavar="SIZE",
    help="Cluster mode: memory the models resident on this node may take (e.g. 2G, 512M); "
    "least recently used models are evicted to make room, the others load on first use "
    "[default: half of the machine's (or cgroup's) memory].",
)  # fmt: skip
@click.option(
    "--device-memory-budget", default=None, metavar="SIZE",
    help="Cluster mode, with CUDA: device memory the models resident on each GPU may take; "
    "a model goes to the GPU where it fits, least recently used models of a full GPU are "
    "evicted [default: 90% of each GPU's memory].",
)  # fmt: skip
@click.option(
    "--max-resident-models", type=click.IntRange(1), default=DEFAULT_MAX_RESIDENT_MODELS,
    show_default=True, help="Cluster mode: the most models resident on this node at once.",
)  # fmt: skip
@click.option(
    "--hot-policy", default="", metavar="FIELD=VALUE,...",
    help="Cluster mode: when a model gains an extra copy and loses it, e.g. "
    "up_in_flight_per_copy=4,up_queue_ms=50,down_ratio=0.25,up_after_s=5,down_after_s=60,"
    "cooldown_s=10,max_copies=8 (those are the defaults; give only what you change).",
)  # fmt: skip
def serve(
    standalone: bool,
    etcd: str | None,
    cluster_name: str,
    workflows_dir: Path,
    objectives_path: Path | None,
    host: str,
    advertise_host: str | None,
    port: int,
    node_id: str,
    zone: str,
    capacity: float,
    gossip_port: int,
    metrics_port: int | None,
    cpu_threads: int | None,
    event_loop: str,
    coalesce_writes: bool,
    http2: str,
    admin_token_file: Path | None,
    artifact_store: Path | None,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    etcd_ca: str | None,
    etcd_cert: str | None,
    etcd_key: str | None,
    etcd_user: str | None,
    etcd_password_file: str | None,
    predlog_dir: str | None,
    predlog_rate: float,
    peer_transport: str,
    peer_link_max_streams: int,
    http_max_connections: int,
    drain_grace_s: float | None,
    max_context_chars: int,
    max_attributes: int,
    max_attribute_chars: int,
    memory_budget: str | None,
    device_memory_budget: str | None,
    max_resident_models: int,
    hot_policy: str,
) -> None:
    """Run a node until Ctrl-C (then it drains in-flight requests and exits)."""
    from shardline.membership.etcd import ControlPlaneUnavailable
    from shardline.node.serving.runtime import NodeConfig

    if standalone == (etcd is not None):
        raise click.UsageError("choose one: --standalone, or --etcd HOST:PORT for cluster mode")
    try:
        config = NodeConfig(
            node_id=node_id, host=host, advertise_host=advertise_host, port=port,
            metrics_port=metrics_port,
            cpu_threads=cpu_threads, predlog_dir=predlog_dir, predlog_rate=predlog_rate,
            tls=_server_tls(tls_ca, tls_cert, tls_key),
            head_limits=replace(
                HEAD_LIMITS, context_chars=max_context_chars, attributes=max_attributes,
                attribute_value_chars=max_attribute_chars,
            ),
            memory_budget_bytes=parse_bytes(memory_budget) if memory_budget else None,
            device_memory_budget_bytes=(
                parse_bytes(device_memory_budget) if device_memory_budget else None
            ),
            max_resident_models=max_resident_models,
            hot_policy=parse_hot_policy(hot_policy),
            coalesce_writes=coalesce_writes,
            http2=http2,
            peer_link_max_streams=peer_link_max_streams,
            http_max_connections=http_max_connections,
        )  # fmt: skip
        run = _runner(event_loop)
        if standalone:
            from shardline.node.serving.server import serve_standalone

            run(
                serve_standalone(
                    config, workflows_dir, objectives_path, _announce, drain_grace_s=drain_grace_s
                )
            )
        else:
            from shardline.node.cluster.cluster_node import serve_cluster
            from shardline.node.cluster.membership_shell import ClusterConfig

            assert etcd is not None
            cluster = ClusterConfig(
                cluster=cluster_name, etcd=etcd, zone=zone, capacity=capacity,
                gossip_host=host, gossip_port=gossip_port, gossip_advertise_host=advertise_host,
                etcd_ca=etcd_ca, etcd_cert=etcd_cert,
                etcd_key=etcd_key, etcd_user=etcd_user,
                etcd_password=Path(etcd_password_file).read_text().strip()
                if etcd_password_file else None,
                peer_transport=peer_transport,
            )  # fmt: skip
            token = (
                admin_token_file.read_text().strip()
                if admin_token_file
                else os.environ.get("SHARDLINE_ADMIN_TOKEN")
            )
            run(
                serve_cluster(
                    config,
                    cluster,
                    _announce,
                    admin_token=token,
                    artifact_store=artifact_store,
                    drain_grace_s=drain_grace_s,
                )
            )
    except (OSError, ValueError, ControlPlaneUnavailable) as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        sys.exit(1)


def _server_tls(ca: str | None, cert: str | None, key: str | None) -> TlsFiles | None:
    if not (ca or cert or key):
        return None
    if not (ca and cert and key):
        raise ValueError("TLS needs --tls-ca, --tls-cert and --tls-key together")
    return TlsFiles(Path(ca), Path(cert), Path(key))


def _runner(event_loop: str) -> Callable[[Coroutine[Any, Any, None]], None]:
    """How ``serve`` runs its node: on uvloop (libuv: a cheaper loop per request, measured
    in bench/) when asked or, with ``auto``, when it is installed; else on asyncio's loop."""
    if event_loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if event_loop == "uvloop":
                raise click.UsageError(
                    "--event-loop uvloop: uvloop is not installed (pip install 'shardline[fast]')"
                ) from None
        else:

            def on_uvloop(coro: Coroutine[Any, Any, None]) -> None:
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    runner.run(coro)

            return on_uvloop
    return asyncio.run


def _announce(line: str) -> None:
    print(line, flush=True)


_INT_BOUNDS = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
_FLOAT_MAX = {"float32": float(np.finfo(np.float32).max), "float64": sys.float_info.max}
_NP_DTYPES = {"float32": "<f4", "float64": "<f8", "int32": "<i4", "int64": "<i8", "bool": "?"}


def _json_item(name: str, text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _checked(name: str, value: Any, dtype: str) -> Any:
    """``value`` (a JSON scalar or nested list) with every element checked against
    ``dtype``: no silent rounding, overflow or type change — ValueError says which."""
    if isinstance(value, list):
        return [_checked(name, v, dtype) for v in value]
    shown = json.dumps(value) if not isinstance(value, str) else repr(value)
    if dtype == "bool":
        if isinstance(value, bool):
            return value
        raise ValueError(f"--input {name}: {dtype} input takes true or false, got {shown}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"--input {name}: {dtype} input takes numbers, got {shown}")
    if dtype in _INT_BOUNDS:
        if not isinstance(value, int):
            raise ValueError(f"--input {name}: {dtype} input takes integers, got {shown}")
        low, high = _INT_BOUNDS[dtype]
        if not low <= value <= high:
            raise ValueError(f"--input {name}: {shown} is outside the {dtype} range")
        return value
    if dtype in _FLOAT_MAX and math.isfinite(value) and abs(value) > _FLOAT_MAX[dtype]:
        raise ValueError(f"--input {name}: {shown} is outside the {dtype} range")
    return float(value)


def _parse_value(
    raw: str, dtype: str | None, shape: Sequence[int] | None, name: str = "value"
) -> Any:
    """A command-line value, shaped and checked by the input's schema when the node told
    us one (an int64 input refuses 9.5 and 1e20 rather than sending something else)."""
    scalar = shape is not None and len(shape) == 0
    if dtype == "string":
        if scalar:
            return raw
        items = json.loads(raw) if raw.startswith("[") else raw.split(",")
        return np.array([str(s) for s in items], dtype=np.str_)
    if raw.startswith("["):
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--input {name}: not a JSON list: {exc}") from None
    elif "," in raw:
        value = [_json_item(name, v) for v in raw.split(",")]
    else:
        value = _json_item(name, raw)
    if dtype in (None, ""):
        return value
    if dtype not in _NP_DTYPES:
        raise ValueError(f"--input {name}: the node declares dtype {dtype!r}, unknown here")
    array = np.asarray(_checked(name, value, dtype), dtype=_NP_DTYPES[dtype])
    if shape is not None and not scalar and array.ndim == 0:
        array = array.reshape(1)
    return array


def _print_prediction(p: Prediction) -> None:
    rows = [
        (name, str(value.dtype), np.array2string(value, precision=4, threshold=20))
        for name, value in p.outputs.items()
    ]
    print_table(("name", "dtype", "value"), rows, title="outputs")
    t = p.timing
    console.print(
        Text.assemble(
            "model ", (p.model_key, "bold"), f"  cell {p.cell}  node {p.node_id}  hops {p.hops}"
        ),
        soft_wrap=True,
    )
    console.print(
        f"timing: total {t['total_ms']:.2f} ms = queue {t['queue_ms']:.2f} + "
        f"preprocess {t['preprocess_ms']:.2f} + compute {t['compute_ms']:.2f} "
        f"(batch of {int(t['batch_size'])}) + postprocess {t['postprocess_ms']:.2f}",
        soft_wrap=True,
    )


def _prediction_json(p: Prediction) -> str:
    return json.dumps(
        {
            "outputs": {k: v.tolist() for k, v in p.outputs.items()},
            "model_key": p.model_key,
            "cell": p.cell,
            "node_id": p.node_id,
            "hops": p.hops,
            "request_id": p.request_id,
            "timing": p.timing,
        }
    )


def _client_call(target: str, call: Callable[[Any], Any], timeout_s: float = 10.0) -> Any:
    """Run ``call(client)`` against ``target``; every failure is one line: a gRPC status
    exits 2, bad input 2, a target that does not answer gRPC 3."""
    from shardline.node.sdk.client import Client, PredictError

    async def run() -> Any:
        async with Client(target, timeout_s=timeout_s, tls=TlsFiles.from_env()) as client:
            return await call(client)

    try:
        return asyncio.run(run())
    except PredictError as exc:
        if exc.status.name == "UNAVAILABLE" and not exc.message.startswith(target):
            fail(f"UNAVAILABLE: {exc.message}", 2)
        if exc.status.name == "UNAVAILABLE":
            fail(f"cannot reach {target}: {exc.message}", 3)
        fail(f"{exc.status.name}: {exc.message}", 2)
    except GRPCError as exc:
        fail(f"{exc.status.name}: {exc.message or ''}", 2)
    except TRANSPORT_ERRORS as exc:
        fail(unreachable(target, exc), 3)
    except ValueError as exc:
        fail(f"bad input: {exc}", 2)


@main.command()
@click.argument("objective")
@target_option
@click.option("--user", "user_id", default="", help="User id (drives A/B and canary allocation).")
@click.option("--country", default="")
@click.option("--device", default="")
@click.option("--surface", default="")
@click.option("--context", "context", multiple=True, help="Extra context attribute NAME=VALUE.")
@click.option("--input", "inputs", multiple=True, help="Input NAME=VALUE (lists: 1,2,3 or JSON).")
@click.option("--override", default="", help="Ask for a model key (if the objective allows).")
@click.option(
    "--timeout", "timeout_s", default=10.0, show_default=True,
    type=click.FloatRange(min=0, min_open=True, max=3600), help="Deadline, seconds.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
def predict(
    objective: str,
    target: str,
    user_id: str,
    country: str,
    device: str,
    surface: str,
    context: Sequence[str],
    inputs: Sequence[str],
    override: str,
    timeout_s: float,
    as_json: bool,
) -> None:
    """Call OBJECTIVE on a node and print the answer with its provenance. Values are
    checked against the objective's input schema (dtype, integer, range) before sending."""
    raw_inputs = _pairs(inputs, "--input")
    attributes = _pairs(context, "--context")

    async def call(client: Any) -> Prediction:
        schemas: dict[str, tuple[str | None, list[int] | None]] = {}
        for info in await client.list_objectives():
            if info.name == objective:
                schemas = {s.name: (s.dtype, list(s.shape)) for s in info.inputs}
        values = {}
        for name, raw in raw_inputs.items():
            dtype, shape = schemas.get(name, (None, None))
            values[name] = _parse_value(raw, dtype, shape, name=name)
        prediction: Prediction = await client.predict(
            objective,
            values,
            user_id=user_id,
            country=country,
            device=device,
            surface=surface,
            attributes=attributes,
            model_override=override,
        )
        return prediction

    p = _client_call(target, call, timeout_s)
    if as_json:
        print(_prediction_json(p))
    else:
        _print_prediction(p)


@main.command("objectives")
@target_option
def list_objectives(target: str) -> None:
    """List the objectives a node serves, with their inputs."""

    async def call(client: Any) -> list[Any]:
        return list(await client.list_objectives())

    infos = _client_call(target, call)
    rows = [
        (
            info.name,
            info.default_model,
            ", ".join(info.model_keys),
            ", ".join(f"{s.name}:{s.dtype}{list(s.shape)}" for s in info.inputs),
        )
        for info in infos
    ]
    print_table(("objective", "default model", "models", "inputs"), rows)


STATUS_MODEL_ROWS = 50
"""Without a filter, ``shardline status`` lists every model up to this many (else counts)."""


@main.command()
@target_option
@click.option("--json", "as_json", is_flag=True, help="Print the routing table as JSON.")
@click.option(
    "--model", "model_pattern", default=None, metavar="PATTERN",
    help="Show the models whose key matches PATTERN (shell-style: 'fraud_*@2').",
)  # fmt: skip
@click.option(
    "--objective", "objective_name", default=None, metavar="NAME",
    help="Show the models objective NAME routes to (default, rules, cells, canary, shadows).",
)  # fmt: skip
def status(
    target: str, as_json: bool, model_pattern: str | None, objective_name: str | None
) -> None:
    """The cluster as one node sees it: one line per node (state, load, resident models and
    memory against its budget, loads and evictions), then the models: every one when there
    are at most 50, else counts (placed, resident copies, lazy, loading) — list some with
    --model PATTERN or --objective NAME. Load failures of every node follow."""
    from shardline.node.ops.cli_admin import TableReader

    async def fetch() -> tuple[Any, dict[str, Any]]:
        reader = TableReader()
        try:
            table = await reader.table(target)
            own = await reader.own_tables([m.grpc_address for m in table.members])
            return table, own
        finally:
            reader.close()

    try:
        table, own = asyncio.run(fetch())
    except GRPCError as exc:
        fail(f"{exc.status.name} from {target}: {exc.message or ''}", 2)
    except TRANSPORT_ERRORS as exc:
        fail(unreachable(target, exc), 3)
    except ValueError as exc:  # TLS files named by the environment
        fail(f"error: {exc}", 2)
    keys = _status_filter(table, model_pattern, objective_name)
    if as_json:
        if keys is not None:
            table.placements = [p for p in table.placements if p.model_key in keys]
        print(table.to_json())
        return
    console.print(
        Text(
            f"node {table.node_id} ({table.mode}), catalog revision {table.revision}, "
            f"{len(table.members)} members"
            + (f", dead: {', '.join(table.dead)}" if table.dead else "")
        ),
        soft_wrap=True,
    )
    members = _fresh_members(table, own)
    if members:
        print_table(
            ("node", "state", "zone", "liveness", "in-flight", "revision", "resident",
             "memory / budget", "loading", "loads", "evictions", "address"),
            [
                (
                    m.node_id, m.state, m.zone or "-", m.liveness, str(m.in_flight),
                    str(own[m.grpc_address].revision) if own.get(m.grpc_address)
                    else "unreachable",
                    str(len(m.models)),
                    f"{human_bytes(m.resident_bytes)} / "
                    + (human_bytes(m.budget_bytes) if m.budget_bytes else "-"),
                    str(len(m.loading)), str(m.loads), str(m.evictions), m.grpc_address,
                )
                for m in members
            ],
        )  # fmt: skip
    resident: dict[str, list[str]] = {}
    loading: dict[str, list[str]] = {}
    for m in members:
        for key in m.models:
            resident.setdefault(key, []).append(m.node_id)
        for key in m.loading:
            loading.setdefault(key, []).append(m.node_id)
    if not members:  # standalone: the node alone holds what it loaded
        for key in table.loaded_models:
            resident.setdefault(key, []).append(table.node_id)
    placements = [p for p in table.placements if keys is None or p.model_key in keys]
    if keys is not None or len(placements) <= STATUS_MODEL_ROWS:
        if not placements:
            console.print("no model matches", soft_wrap=True)
        else:
            print_table(
                ("model key", "replicas", "owners (primary first)", "resident on",
                 "footprint", "pinned"),
                [
                    (
                        p.model_key, str(p.replicas),
                        ", ".join(p.owners) if p.owners else Text("none", style="red"),
                        ", ".join(resident.get(p.model_key, []))
                        + (" (loading: " + ", ".join(loading[p.model_key]) + ")"
                           if p.model_key in loading else "")
                        or "- (lazy)",
                        human_bytes(p.footprint_bytes) if p.footprint_bytes else "-",
                        "yes" if p.pinned else "no",
                    )
                    for p in placements
                ],
            )  # fmt: skip
    else:
        placed = sum(1 for p in placements if p.owners)
        lazy = sum(1 for p in placements if p.owners and p.model_key not in resident)
        console.print(
            Text(
                f"{len(placements)} models: {placed} placed, "
                f"{sum(len(v) for v in resident.values())} resident copies, "
                f"{lazy} lazy (placed, resident nowhere), {len(loading)} loading, "
                f"{len(placements) - placed} without owners. List them with --model PATTERN "
                "(e.g. --model 'name_*') or --objective NAME."
            ),
            soft_wrap=True,
        )
    failures = _all_load_failures(table, own)
    for key, node_id, error in failures:
        if keys is None or key in keys:
            console.print(
                Text.assemble(("load failed ", "red"), f"{key} on {node_id}: {error}"),
                soft_wrap=True,
            )


def _status_filter(
    table: Any, pattern: str | None, objective_name: str | None
) -> frozenset[str] | None:
    """The model keys ``--model`` and ``--objective`` select (both: those both select);
    None without a filter."""
    import fnmatch

    from shardline.router.objectives import ConfigError, ObjectiveConfig

    if pattern is None and objective_name is None:
        return None
    keys = {p.model_key for p in table.placements} | set(table.loaded_models)
    if pattern is not None:
        keys = {k for k in keys if fnmatch.fnmatchcase(k, pattern)}
    if objective_name is not None:
        raw = table.objectives_json.get(objective_name)
        if raw is None:
            known = ", ".join(sorted(table.objectives_json)) or "none"
            fail(f"unknown objective {objective_name!r}; known: {known}", 2)
        try:
            routed = ObjectiveConfig.from_dict(json.loads(raw)).model_keys()
        except (ConfigError, ValueError) as exc:
            fail(f"objective {objective_name}: the node's config is not readable: {exc}", 2)
        keys &= routed
    return frozenset(keys)


def _fresh_members(table: Any, own: dict[str, Any]) -> list[Any]:
    """Each member as it describes itself (its own table: its resident set now), else as
    the answering node sees it."""
    out = []
    for m in table.members:
        mine = own.get(m.grpc_address)
        fresh = [x for x in mine.members if x.node_id == m.node_id] if mine is not None else []
        out.append(fresh[0] if fresh else m)
    return out


def _all_load_failures(table: Any, own: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(key, node, why) for every load failure any node reports, sorted."""
    found = {(k, table.node_id, v) for k, v in table.load_failures.items()}
    for m in table.members:
        mine = own.get(m.grpc_address)
        if mine is not None:
            found |= {(k, m.node_id, v) for k, v in mine.load_failures.items()}
    return sorted(found)


@main.command()
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
    default=Path(".state/pki"), show_default=True,
)  # fmt: skip
@click.option(
    "--node", "nodes", multiple=True, required=True,
    help="A node name (its certificate gets it as a DNS name); repeat.",
)  # fmt: skip
@click.option(
    "--san", "sans", multiple=True, default=("localhost", "127.0.0.1"), show_default=True,
    help="Extra DNS name or IP every node certificate covers; repeat.",
)  # fmt: skip
@click.option("--days", default=365, show_default=True)
@click.option("--overwrite", is_flag=True)
def certs(
    out_dir: Path, nodes: tuple[str, ...], sans: tuple[str, ...], days: int, overwrite: bool
) -> None:
    """Make a development CA and node certificates for TLS and mutual TLS between peers."""
    from shardline.node.ops.certs import write_dev_pki

    try:
        pki = write_dev_pki(out_dir, list(nodes), list(sans), days=days, overwrite=overwrite)
    except (ValueError, FileExistsError) as exc:
        fail(f"error: {exc}", 2)
    console.print(f"CA: {pki.ca_cert} (key {pki.ca_key})", soft_wrap=True)
    for node in nodes:
        console.print(f"{node}: {pki.node_certs[node]} (key {pki.node_keys[node]})", soft_wrap=True)
    console.print(
        "serve with: --tls-ca CA --tls-cert NODE.pem --tls-key NODE-key.pem; clients set "
        "SHARDLINE_TLS_CA (and SHARDLINE_TLS_CERT/_KEY for admin calls: mutual TLS)"
    )


@main.command()
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(1, 50),
              help="Node processes to start.")  # fmt: skip
@cluster_option
@state_dir_option
@click.option("--detach", is_flag=True, help="Leave it running; stop with `shardline down`.")
def up(nodes: int, cluster_name: str, state_dir: Path | None, detach: bool) -> None:
    """Start a local cluster (etcd + N nodes) with the example workflows and objectives:
    gRPC on 127.0.0.1:7401, 7402, … (node-1 is every command's default --target), state
    and the admin token under STATE/<cluster>."""
    from shardline.node.ops.localcluster import up as start

    sys.exit(start(nodes, cluster_name, detach, _announce, state=state_dir))


@main.command()
@cluster_option
@state_dir_option
def down(cluster_name: str, state_dir: Path | None) -> None:
    """Stop a local cluster started with `shardline up --detach`."""
    from shardline.node.ops.localcluster import down as stop

    sys.exit(stop(cluster_name, _announce, state_dir))


register_admin_commands(main)


if __name__ == "__main__":
    main()
