"""The ``shardline`` command line: serve a node, call it, explain objective decisions."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np
from grpclib.exceptions import GRPCError
from rich.console import Console
from rich.table import Table

from node.cli_admin import register_admin_commands
from node.client import Client, PredictError, Prediction
from node.runtime import NodeConfig
from node.tls import TlsFiles

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "workflows" / "examples"
console = Console()
err_console = Console(stderr=True)


def _pairs(values: Sequence[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint=what)
        out[key.strip()] = value
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
@click.option("--port", default=7400, show_default=True, type=int, help="gRPC port (0: any).")
@click.option("--node-id", default="node-1", show_default=True)
@click.option("--zone", default="", help="Cluster mode: this node's zone.")
@click.option("--capacity", default=1.0, show_default=True, help="Cluster mode: ring weight.")
@click.option("--gossip-port", default=0, show_default=True, help="UDP gossip port (0: any).")
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus /metrics here.")
@click.option("--cpu-threads", type=int, default=None, help="Torch intra-op threads on CPU.")
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
) -> None:
    """Run a node until Ctrl-C (then it drains in-flight requests and exits)."""
    from membership.etcd import ControlPlaneUnavailable

    if standalone == (etcd is not None):
        raise click.UsageError("choose one: --standalone, or --etcd HOST:PORT for cluster mode")
    try:
        config = NodeConfig(
            node_id=node_id, host=host, advertise_host=advertise_host, port=port,
            metrics_port=metrics_port,
            cpu_threads=cpu_threads, predlog_dir=predlog_dir, predlog_rate=predlog_rate,
            tls=_server_tls(tls_ca, tls_cert, tls_key),
        )  # fmt: skip
        if standalone:
            from node.server import serve_standalone

            asyncio.run(serve_standalone(config, workflows_dir, objectives_path, _announce))
        else:
            from node.cluster import ClusterConfig
            from node.cluster_node import serve_cluster

            assert etcd is not None
            cluster = ClusterConfig(
                cluster=cluster_name, etcd=etcd, zone=zone, capacity=capacity,
                gossip_host=host, gossip_port=gossip_port, gossip_advertise_host=advertise_host,
                etcd_ca=etcd_ca, etcd_cert=etcd_cert,
                etcd_key=etcd_key, etcd_user=etcd_user,
                etcd_password=Path(etcd_password_file).read_text().strip()
                if etcd_password_file else None,
            )  # fmt: skip
            token = (
                admin_token_file.read_text().strip()
                if admin_token_file
                else os.environ.get("SHARDLINE_ADMIN_TOKEN")
            )
            asyncio.run(
                serve_cluster(
                    config, cluster, _announce, admin_token=token, artifact_store=artifact_store
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


def _announce(line: str) -> None:
    print(line, flush=True)


def _parse_value(raw: str, dtype: str | None, shape: Sequence[int] | None) -> Any:
    """A command-line value, shaped by the input's schema when the node told us one."""
    scalar = shape is not None and len(shape) == 0
    if dtype == "string":
        if scalar:
            return raw
        items = json.loads(raw) if raw.startswith("[") else raw.split(",")
        return np.array([str(s) for s in items], dtype=np.str_)
    if raw.startswith("["):
        value: Any = json.loads(raw)
    elif "," in raw:
        value = [json.loads(v) for v in raw.split(",")]
    elif raw.lower() in ("true", "false"):
        value = raw.lower() == "true"
    else:
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            return raw
    if dtype in (None, ""):
        return value
    np_dtype = {"float32": "<f4", "float64": "<f8", "int32": "<i4", "int64": "<i8", "bool": "?"}
    array = np.asarray(value, dtype=np_dtype.get(dtype))
    if shape is not None and not scalar and array.ndim == 0:
        array = array.reshape(1)
    return array


def _print_prediction(p: Prediction) -> None:
    table = Table(title="outputs", show_header=True)
    table.add_column("name")
    table.add_column("dtype")
    table.add_column("value")
    for name, value in p.outputs.items():
        table.add_row(name, str(value.dtype), np.array2string(value, precision=4, threshold=20))
    console.print(table)
    t = p.timing
    console.print(
        f"model [bold]{p.model_key}[/bold]  cell {p.cell}  node {p.node_id}  hops {p.hops}\n"
        f"timing: total {t['total_ms']:.2f} ms = queue {t['queue_ms']:.2f} + "
        f"preprocess {t['preprocess_ms']:.2f} + compute {t['compute_ms']:.2f} "
        f"(batch of {int(t['batch_size'])}) + postprocess {t['postprocess_ms']:.2f}"
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


@main.command()
@click.argument("objective")
@click.option("--target", default="127.0.0.1:7400", show_default=True, help="Any node, HOST:PORT.")
@click.option("--user", "user_id", default="", help="User id (drives A/B and canary allocation).")
@click.option("--country", default="")
@click.option("--device", default="")
@click.option("--surface", default="")
@click.option("--context", "context", multiple=True, help="Extra context attribute NAME=VALUE.")
@click.option("--input", "inputs", multiple=True, help="Input NAME=VALUE (lists: 1,2,3 or JSON).")
@click.option("--override", default="", help="Ask for a model key (if the objective allows).")
@click.option("--timeout", "timeout_s", default=10.0, show_default=True, help="Deadline, seconds.")
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
    """Call OBJECTIVE on a node and print the answer with its provenance."""
    raw_inputs = _pairs(inputs, "--input")
    attributes = _pairs(context, "--context")

    async def call() -> Prediction:
        async with Client(target, timeout_s=timeout_s, tls=TlsFiles.from_env()) as client:
            schemas: dict[str, tuple[str, list[int]]] = {}
            for info in await client.list_objectives():
                if info.name == objective:
                    schemas = {s.name: (s.dtype, list(s.shape)) for s in info.inputs}
            values = {
                name: _parse_value(raw, *schemas.get(name, (None, None)))
                for name, raw in raw_inputs.items()
            }
            return await client.predict(
                objective,
                values,
                user_id=user_id,
                country=country,
                device=device,
                surface=surface,
                attributes=attributes,
                model_override=override,
            )

    try:
        p = asyncio.run(call())
    except PredictError as exc:
        err_console.print(f"[red]{exc.status.name}[/red]: {exc.message}")
        sys.exit(2)
    except (OSError, ConnectionError) as exc:
        err_console.print(f"[red]cannot reach {target}[/red]: {exc}")
        sys.exit(3)
    except (ValueError, json.JSONDecodeError) as exc:
        err_console.print(f"[red]bad input[/red]: {exc}")
        sys.exit(2)
    if as_json:
        print(_prediction_json(p))
    else:
        _print_prediction(p)


@main.command("objectives")
@click.option("--target", default="127.0.0.1:7400", show_default=True)
def list_objectives(target: str) -> None:
    """List the objectives a node serves, with their inputs."""

    async def call() -> list[Any]:
        async with Client(target, tls=TlsFiles.from_env()) as client:
            return await client.list_objectives()

    try:
        infos = asyncio.run(call())
    except (PredictError, OSError, ConnectionError) as exc:
        err_console.print(f"[red]error[/red]: {exc}")
        sys.exit(3)
    table = Table("objective", "default model", "models", "inputs")
    for info in infos:
        ins = ", ".join(f"{s.name}:{s.dtype}{list(s.shape)}" for s in info.inputs)
        table.add_row(info.name, info.default_model, ", ".join(info.model_keys), ins)
    console.print(table)


@main.command()
@click.option("--target", default="127.0.0.1:7400", show_default=True, help="Any node.")
@click.option("--json", "as_json", is_flag=True, help="Print the routing table as JSON.")
def status(target: str, as_json: bool) -> None:
    """The cluster as one node sees it: members, load, and which node owns which model."""
    from node.localcluster import routing_table

    try:
        table = asyncio.run(routing_table(target, timeout_s=5.0))
    except (OSError, TimeoutError, GRPCError) as exc:
        err_console.print(f"[red]cannot reach {target}[/red]: {exc}")
        sys.exit(3)
    if as_json:
        print(table.to_json())
        return
    console.print(
        f"node {table.node_id} ({table.mode}), catalog revision {table.revision}, "
        f"{len(table.members)} members" + (f", dead: {', '.join(table.dead)}" if table.dead else "")
    )
    applied = asyncio.run(_applied_revisions([m.grpc_address for m in table.members]))
    members = Table(
        "node", "state", "zone", "liveness", "in-flight", "revision", "loaded models", "address"
    )
    for m in table.members:
        members.add_row(
            m.node_id, m.state, m.zone or "-", m.liveness, str(m.in_flight),
            applied.get(m.grpc_address, "?"), ", ".join(m.models) or "-", m.grpc_address,
        )  # fmt: skip
    if table.members:
        console.print(members)
    ring = Table("model key", "replicas", "owners (primary first)")
    for p in table.placements:
        ring.add_row(p.model_key, str(p.replicas), ", ".join(p.owners) or "[red]none[/red]")
    console.print(ring)
    for key, error in sorted(table.load_failures.items()):
        console.print(f"[red]load failed[/red] {key}: {error}")


async def _applied_revisions(targets: list[str]) -> dict[str, str]:
    """The catalog revision each node has applied (so an operator sees a change land)."""
    from node.localcluster import routing_table

    async def one(target: str) -> str:
        try:
            return str((await routing_table(target, timeout_s=2.0)).revision)
        except (OSError, TimeoutError, GRPCError):
            return "unreachable"

    answers = await asyncio.gather(*(one(t) for t in targets))
    return dict(zip(targets, answers, strict=True))


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
    from node.certs import write_dev_pki

    try:
        pki = write_dev_pki(out_dir, list(nodes), list(sans), days=days, overwrite=overwrite)
    except (ValueError, FileExistsError) as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        sys.exit(2)
    console.print(f"CA: {pki.ca_cert} (key {pki.ca_key})")
    for node in nodes:
        console.print(f"{node}: {pki.node_certs[node]} (key {pki.node_keys[node]})")
    console.print(
        "serve with: --tls-ca CA --tls-cert NODE.pem --tls-key NODE-key.pem; clients set "
        "SHARDLINE_TLS_CA (and SHARDLINE_TLS_CERT/_KEY for admin calls: mutual TLS)"
    )


@main.command()
@click.option("--nodes", default=3, show_default=True, help="Node processes to start.")
@click.option("--cluster", "cluster_name", default="local", show_default=True)
@click.option("--detach", is_flag=True, help="Leave it running; stop with `shardline down`.")
def up(nodes: int, cluster_name: str, detach: bool) -> None:
    """Start a local cluster (etcd + N nodes) with the example workflows and objectives."""
    from node.localcluster import up as start

    sys.exit(start(nodes, cluster_name, detach, _announce))


@main.command()
@click.option("--cluster", "cluster_name", default="local", show_default=True)
def down(cluster_name: str) -> None:
    """Stop a local cluster started with `shardline up --detach`."""
    from node.localcluster import down as stop

    sys.exit(stop(cluster_name, _announce))


register_admin_commands(main)


@main.command(
    "sim",
    context_settings={"ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def sim_command(args: tuple[str, ...]) -> None:
    """Chaos simulator: `shardline sim run SCENARIO [--seed N] [--report DIR]`."""
    from sim.cli import sim  # loaded on demand: the node never imports the simulator

    sim.main(list(args), prog_name="shardline sim")


if __name__ == "__main__":
    main()
