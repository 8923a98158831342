"""The ``shardline`` command line: serve a node, call it, explain objective decisions."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from node.client import Client, PredictError, Prediction
from node.runtime import NodeConfig

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
@click.option(
    "--workflows",
    "workflows_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=EXAMPLES_DIR,
    show_default=True,
    help="Directory of workflow packages (searched recursively for workflow.toml).",
)
@click.option(
    "--objectives",
    "objectives_path",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Objective config file or directory [default: WORKFLOWS/objectives].",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=7400, show_default=True, type=int, help="gRPC port (0: any).")
@click.option("--node-id", default="node-1", show_default=True)
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus /metrics here.")
@click.option("--cpu-threads", type=int, default=None, help="Torch intra-op threads on CPU.")
def serve(
    standalone: bool,
    workflows_dir: Path,
    objectives_path: Path | None,
    host: str,
    port: int,
    node_id: str,
    metrics_port: int | None,
    cpu_threads: int | None,
) -> None:
    """Run a node until Ctrl-C (then it drains in-flight requests and exits)."""
    from node.server import serve_standalone

    if not standalone:
        raise click.UsageError("only --standalone is available in this version")
    config = NodeConfig(
        node_id=node_id, host=host, port=port, metrics_port=metrics_port, cpu_threads=cpu_threads
    )
    try:
        asyncio.run(serve_standalone(config, workflows_dir, objectives_path, _announce))
    except (OSError, ValueError) as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        sys.exit(1)


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
        async with Client(target, timeout_s=timeout_s) as client:
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
        async with Client(target) as client:
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


@main.group()
def objective() -> None:
    """Objective configs: explain decisions."""


@objective.command()
@click.argument("name")
@click.option(
    "--objectives",
    "objectives_path",
    type=click.Path(exists=True, path_type=Path),
    default=EXAMPLES_DIR / "objectives",
    show_default=True,
    help="Objective config file or directory.",
)
@click.option("--user", "user_id", default="")
@click.option("--country", default="")
@click.option("--device", default="")
@click.option("--surface", default="")
@click.option("--context", "context", multiple=True, help="Extra context attribute NAME=VALUE.")
@click.option("--override", default=None)
def explain(
    name: str,
    objectives_path: Path,
    user_id: str,
    country: str,
    device: str,
    surface: str,
    context: Sequence[str],
    override: str | None,
) -> None:
    """Print which model version NAME picks for a request context, and why."""
    from node.server import load_objectives
    from router.rules import ConfigError, OverrideNotAllowed, RequestContext, evaluate

    try:
        configs = load_objectives(objectives_path)
    except ConfigError as exc:
        err_console.print(f"[red]invalid objective config[/red]: {exc}")
        sys.exit(2)
    cfg = configs.get(name)
    if cfg is None:
        err_console.print(f"[red]unknown objective {name!r}[/red]; known: {', '.join(configs)}")
        sys.exit(2)
    ctx = RequestContext(
        user_id=user_id,
        country=country,
        device=device,
        surface=surface,
        attributes=_pairs(context, "--context"),
    )
    try:
        d = evaluate(cfg, ctx, override)
    except OverrideNotAllowed as exc:
        err_console.print(f"[red]override refused[/red]: {exc}")
        sys.exit(2)
    console.print(f"objective [bold]{d.objective}[/bold] -> model [bold]{d.model_key}[/bold]")
    console.print(f"cell: {d.cell}")
    console.print(f"shadows: {', '.join(d.shadows) or 'none'}")
    console.print(f"why: {d.reason}")


if __name__ == "__main__":
    main()
