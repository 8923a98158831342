"""Operator and researcher commands: nodes (join, drain, remove), deploy, objectives."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import tomllib
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from node._proto.shardline import v1
from node.admin_client import AdminClient, AdminError, resolve_token

T = TypeVar("T")
console = Console()
err = Console(stderr=True)
EXAMPLES_OBJECTIVES = Path(__file__).resolve().parent.parent / "workflows/examples/objectives"

target_option = click.option(
    "--target", default="127.0.0.1:7401", show_default=True, help="Any node, HOST:PORT."
)
token_option = click.option(
    "--token",
    default=None,
    help="Admin token [default: $SHARDLINE_ADMIN_TOKEN, else .state/<cluster>/admin-token].",
)
cluster_option = click.option("--cluster", "cluster_name", default="local", show_default=True)


def _pairs(values: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}")
        out[key] = value
    return out


def admin_call(
    target: str, token: str | None, cluster: str, call: Callable[[AdminClient], Awaitable[T]]
) -> T:
    """Run one admin conversation; errors print as one line and exit non-zero."""

    async def run() -> T:
        async with AdminClient(target, resolve_token(token, cluster)) as client:
            return await call(client)

    try:
        return asyncio.run(run())
    except AdminError as exc:
        err.print(f"[red]{exc.status.name}[/red]: {exc.message}")
        sys.exit(2)


def register_admin_commands(main: click.Group) -> None:
    main.add_command(node_group)
    main.add_command(deploy)
    main.add_command(undeploy)
    main.add_command(objective)


@click.group("node")
def node_group() -> None:
    """Join, drain and remove cluster nodes."""


@node_group.command("join", context_settings={"ignore_unknown_options": True})
@click.argument("serve_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def node_join(ctx: click.Context, serve_args: tuple[str, ...]) -> None:
    """Start a node that joins a cluster: registers `joining`, loads and warms its share of
    the ring, then turns `active`. Takes the options of `shardline serve --etcd …`."""
    from node.cli import serve

    if "--etcd" not in serve_args:
        raise click.UsageError(
            "node join needs --etcd HOST:PORT (and usually --cluster, --node-id)"
        )
    serve.main(list(serve_args), standalone_mode=True, prog_name="shardline node join")
    del ctx


@node_group.command("drain")
@click.argument("node_id")
@target_option
@token_option
@cluster_option
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until it left.")
@click.option("--timeout", "timeout_s", default=300.0, show_default=True)
def node_drain(
    node_id: str, target: str, token: str | None, cluster_name: str, wait: bool, timeout_s: float
) -> None:
    """Drain NODE: its successors load and warm its models, then it leaves and exits."""
    from node.localcluster import routing_table

    started = time.monotonic()
    reply = admin_call(
        target, token, cluster_name,
        lambda c: c.call("drain_node", v1.DrainNodeRequest(node_id=node_id)),
    )  # fmt: skip
    console.print(reply.message)
    if not wait:
        return

    async def gone() -> None:
        state = ""
        while time.monotonic() - started < timeout_s:
            table = await routing_table(target, timeout_s=5)
            members = {m.node_id: m for m in table.members}
            if node_id not in members:
                return
            now = f"{members[node_id].state}, holding {len(members[node_id].models)} models"
            if now != state:
                console.print(f"  {node_id}: {now}")
                state = now
            await asyncio.sleep(0.2)  # polling another process's state over gRPC
        raise TimeoutError(f"{node_id} still in the cluster after {timeout_s:.0f}s")

    try:
        asyncio.run(gone())
    except (TimeoutError, OSError) as exc:
        err.print(f"[red]drain not finished[/red]: {exc}")
        sys.exit(1)
    console.print(f"{node_id} drained and left in {time.monotonic() - started:.1f}s")


@node_group.command("remove")
@click.argument("node_id")
@target_option
@token_option
@cluster_option
@click.option("--force", is_flag=True, help="Even if gossip still sees it alive.")
def node_remove(
    node_id: str, target: str, token: str | None, cluster_name: str, force: bool
) -> None:
    """Forget a dead node's record."""
    reply = admin_call(
        target, token, cluster_name,
        lambda c: c.call("remove_node", v1.RemoveNodeRequest(node_id=node_id, force=force)),
    )  # fmt: skip
    console.print(f"{node_id}: {'removed' if reply.removed else 'no record'}")


@click.command()
@click.argument("package_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@target_option
@token_option
@cluster_option
@click.option("--timeout", "timeout_s", default=120.0, show_default=True,
              help="How long to wait for the owners to load and warm it.")  # fmt: skip
def deploy(
    package_dir: Path, target: str, token: str | None, cluster_name: str, timeout_s: float
) -> None:
    """Validate PACKAGE_DIR, store it in the artifact store, register it, and wait until
    its owners have it warm (exit 1 with the error if they cannot load it)."""
    from node.artifacts import ArtifactError, pack
    from node.localcluster import routing_table
    from workflows.loader import verify_package

    try:
        manifest = verify_package(package_dir)
        data = pack(package_dir)
    except (ArtifactError, Exception) as exc:
        err.print(f"[red]invalid package[/red]: {exc}")
        sys.exit(2)
    reply = admin_call(
        target, token, cluster_name,
        lambda c: c.call("deploy", v1.DeployRequest(package_tar_gz=data)),
    )  # fmt: skip
    key = reply.model_key
    console.print(f"stored {key} at {reply.artifact_uri} (catalog revision {reply.revision})")
    del manifest

    async def warm() -> str | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            table = await routing_table(target, timeout_s=5)
            for m in table.members:
                node_table = await routing_table(m.grpc_address, timeout_s=5)
                if key in node_table.load_failures:
                    return f"{m.node_id}: {node_table.load_failures[key]}"
            placement = next((p for p in table.placements if p.model_key == key), None)
            warm_on = {m.node_id for m in table.members if key in m.models}
            if placement and placement.owners and set(placement.owners) <= warm_on:
                return None
            await asyncio.sleep(0.2)  # polling other processes' state over gRPC
        return f"not warm on its owners after {timeout_s:.0f}s"

    failure = asyncio.run(warm())
    if failure:
        err.print(f"[red]{key} failed to load[/red] ({failure}); routing is unchanged")
        sys.exit(1)
    console.print(f"{key} is warm on its owners; route to it with `shardline objective set`")


@click.command()
@click.argument("model_key")
@target_option
@token_option
@cluster_option
def undeploy(model_key: str, target: str, token: str | None, cluster_name: str) -> None:
    """Remove NAME@VERSION from the catalog (refused while an objective routes to it)."""
    reply = admin_call(
        target, token, cluster_name,
        lambda c: c.call("undeploy", v1.UndeployRequest(model_key=model_key)),
    )  # fmt: skip
    console.print(f"{model_key}: {'undeployed' if reply.removed else 'was not deployed'}")


@click.group()
def objective() -> None:
    """Objective configs: set, show, history, rollback, explain."""


def _print_revision(info: Any) -> None:
    console.print(
        f"objective [bold]{info.name}[/bold] revision {info.revision} "
        f"({info.updated_at or '-'} by {info.author or '-'})"
    )


@objective.command("set")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@target_option
@token_option
@cluster_option
@click.option("--author", default="", help="Recorded in the history.")
@click.option("--force", is_flag=True, help="Allow models that are not warm anywhere yet.")
def objective_set(
    file: Path, target: str, token: str | None, cluster_name: str, author: str, force: bool
) -> None:
    """Store FILE (TOML or JSON) as the objective's new revision; every node applies it."""
    from router.rules import ConfigError, ObjectiveConfig

    try:
        text = file.read_text()
        raw = json.loads(text) if file.suffix == ".json" else tomllib.loads(text)
        config = ObjectiveConfig.from_dict(raw)
    except (ConfigError, ValueError) as exc:
        err.print(f"[red]invalid objective config[/red] {file}: {exc}")
        sys.exit(2)
    request = v1.SetObjectiveRequest(
        config_json=json.dumps(config.to_dict()), author=author, force=force
    )
    _print_revision(
        admin_call(target, token, cluster_name, lambda c: c.call("set_objective", request))
    )


@objective.command("show")
@click.argument("name")
@target_option
@token_option
@cluster_option
def objective_show(name: str, target: str, token: str | None, cluster_name: str) -> None:
    """The objective's current config."""
    info = admin_call(
        target, token, cluster_name,
        lambda c: c.call("get_objective", v1.GetObjectiveRequest(name=name)),
    )  # fmt: skip
    _print_revision(info)
    console.print_json(info.config_json)


@objective.command("history")
@click.argument("name")
@target_option
@token_option
@cluster_option
def objective_history(name: str, target: str, token: str | None, cluster_name: str) -> None:
    """Every stored revision of the objective."""
    reply = admin_call(
        target, token, cluster_name,
        lambda c: c.call("objective_history", v1.GetObjectiveRequest(name=name)),
    )  # fmt: skip
    table = Table("revision", "updated", "author", "default", "canary", "experiments")
    for r in reply.revisions:
        cfg = json.loads(r.config_json)
        canary = cfg.get("canary")
        table.add_row(
            str(r.revision), r.updated_at, r.author or "-", cfg.get("default", ""),
            f"{canary['model']} {canary['percent']}%" if canary else "-",
            ", ".join(e["id"] for e in cfg.get("experiments", [])) or "-",
        )  # fmt: skip
    console.print(table)


@objective.command("rollback")
@click.argument("name")
@click.option("--to", "to_revision", type=int, default=0, help="Revision [default: previous].")
@target_option
@token_option
@cluster_option
def objective_rollback(
    name: str, to_revision: int, target: str, token: str | None, cluster_name: str
) -> None:
    """Store an earlier revision's config as the new revision (history stays append-only)."""
    request = v1.RollbackObjectiveRequest(name=name, to_revision=to_revision)
    info = admin_call(target, token, cluster_name, lambda c: c.call("rollback_objective", request))
    _print_revision(info)


@objective.command("explain")
@click.argument("name")
@click.option("--target", default=None, help="Ask a node (cluster config) instead of files.")
@token_option
@cluster_option
@click.option(
    "--objectives",
    "objectives_path",
    type=click.Path(exists=True, path_type=Path),
    default=EXAMPLES_OBJECTIVES,
    show_default=True,
    help="Without --target: objective config file or directory.",
)
@click.option("--user", "user_id", default="")
@click.option("--country", default="")
@click.option("--device", default="")
@click.option("--surface", default="")
@click.option("--context", "context", multiple=True, help="Extra context attribute NAME=VALUE.")
@click.option("--override", default=None)
def explain(
    name: str,
    target: str | None,
    token: str | None,
    cluster_name: str,
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

    attributes = _pairs(context)
    if target is not None:
        request = v1.ExplainRequest(
            objective=name, user_id=user_id, country=country, device=device, surface=surface,
            attributes=attributes, model_override=override or "",
        )  # fmt: skip
        r = admin_call(target, token, cluster_name, lambda c: c.call("explain", request))
        model, cell, shadows, reason = r.model_key, r.cell, list(r.shadows), r.reason
        where = f" (catalog revision {r.revision}; owners {', '.join(r.owners) or 'none'})"
    else:
        try:
            configs = load_objectives(objectives_path)
        except ConfigError as exc:
            err.print(f"[red]invalid objective config[/red]: {exc}")
            sys.exit(2)
        cfg = configs.get(name)
        if cfg is None:
            err.print(f"[red]unknown objective {name!r}[/red]; known: {', '.join(configs)}")
            sys.exit(2)
        ctx = RequestContext(
            user_id=user_id, country=country, device=device, surface=surface,
            attributes=attributes,
        )  # fmt: skip
        try:
            d = evaluate(cfg, ctx, override)
        except OverrideNotAllowed as exc:
            err.print(f"[red]override refused[/red]: {exc}")
            sys.exit(2)
        model, cell, shadows, reason, where = d.model_key, d.cell, list(d.shadows), d.reason, ""
    console.print(f"objective [bold]{name}[/bold] -> model [bold]{model}[/bold]{where}")
    console.print(f"cell: {cell}")
    console.print(f"shadows: {', '.join(shadows) or 'none'}")
    console.print(f"why: {reason}")
