"""Operator and researcher commands: nodes (join, drain, remove), deploy, objectives,
packages; and what every command shares (the default target, tables that never truncate)."""

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
from rich.text import Text

from shardline.node._proto.shardline import v1
from shardline.node.sdk.admin_client import (
    STATE_DIR_ENV,
    TARGET_ENV,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    AdminClient,
    AdminError,
    TokenLookup,
    resolve_token,
    unreachable,
)
from shardline.node.sdk.targets import DEFAULT_TARGET, parse_target

T = TypeVar("T")
console = Console()
err = Console(stderr=True)
EXAMPLES_OBJECTIVES = Path(__file__).resolve().parents[2] / "workflows/examples/objectives"
NETWORK_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError)


def _check_target(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        parse_target(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value.strip()


target_option = click.option(
    "--target",
    envvar=TARGET_ENV,
    show_envvar=True,
    default=DEFAULT_TARGET,
    show_default=True,
    callback=_check_target,
    help="Any node's gRPC address, HOST:PORT (node-1 of `shardline up`, or `shardline serve`).",
)
token_option = click.option(
    "--token",
    default=None,
    help=f"Admin token [default: ${TOKEN_ENV}, else the file ${TOKEN_FILE_ENV} names, "
    "else STATE/<cluster>/admin-token written by `shardline up`].",
)
cluster_option = click.option("--cluster", "cluster_name", default="local", show_default=True)
state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar=STATE_DIR_ENV,
    show_envvar=True,
    default=None,
    help="Where `shardline up` keeps local clusters [default: the repository's .state].",
)


def _pairs(values: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}")
        out[key] = value
    return out


Cell = str | Text


def print_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Cell]],
    *,
    title: str | None = None,
    out: Console | None = None,
) -> None:
    """A table that never truncates: as a grid when it fits the console's width (a pipe
    counts as $COLUMNS, else 80 columns), else one ``header: value`` line per cell, each
    value whole on its line. ``str`` cells are plain text (no markup); pass ``Text`` to
    style one."""
    out = out or console
    table = Table(*headers, title=title)
    for column in table.columns:
        column.overflow = "fold"
    cells = [[c if isinstance(c, Text) else Text(c) for c in row] for row in rows]
    for row in cells:
        table.add_row(*row)
    natural = out.measure(table, options=out.options.update_width(1 << 20)).maximum
    if natural <= out.width:
        out.print(table)
        return
    if title:
        out.print(Text(title, style="bold"), soft_wrap=True)
    width = max((len(h) for h in headers), default=0)
    for i, row in enumerate(cells):
        if i:
            out.print()
        for header, cell in zip(headers, row, strict=True):
            out.print(Text(f"{header:>{width}}: ") + cell, soft_wrap=True)


def admin_call(
    target: str,
    token: str | None,
    cluster: str,
    call: Callable[[AdminClient], Awaitable[T]],
    *,
    state_dir: Path | None = None,
    needs_token: bool = True,
) -> T:
    """Run one admin conversation; errors print as one line and exit non-zero."""
    lookup: TokenLookup | str = (
        resolve_token(token, cluster, state_dir) if needs_token else (token or "")
    )

    async def run() -> T:
        async with AdminClient(target, lookup) as client:
            return await call(client)

    try:
        return asyncio.run(run())
    except AdminError as exc:
        err.print(Text(f"{exc.status.name}: {exc.message}", style="red"), soft_wrap=True)
        sys.exit(2)
    except ValueError as exc:  # TLS files from the environment, the target
        err.print(Text(f"error: {exc}", style="red"), soft_wrap=True)
        sys.exit(2)


def fail(message: str, code: int) -> None:
    """One red line on stderr, then exit ``code``."""
    err.print(Text(message, style="red"), soft_wrap=True)
    sys.exit(code)


def register_admin_commands(main: click.Group) -> None:
    main.add_command(node_group)
    main.add_command(deploy)
    main.add_command(undeploy)
    main.add_command(objective)
    main.add_command(package)


@click.group("node")
def node_group() -> None:
    """Join, drain and remove cluster nodes."""


@node_group.command("join", context_settings={"ignore_unknown_options": True})
@click.argument("serve_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def node_join(ctx: click.Context, serve_args: tuple[str, ...]) -> None:
    """Start a node that joins a cluster: registers `joining`, loads and warms its share of
    the ring, then turns `active`. Takes the options of `shardline serve --etcd …`."""
    if "--etcd" not in serve_args:
        raise click.UsageError(
            "node join needs --etcd HOST:PORT (and usually --cluster, --node-id)"
        )
    # `serve` from the root command group (shardline.node.ops.cli registers these commands there; no
    # import back into shardline.node.ops.cli).
    root = ctx.find_root().command
    serve = root.get_command(ctx, "serve") if isinstance(root, click.Group) else None
    if serve is None:
        raise click.UsageError("node join runs within `shardline`, which has a serve command")
    serve.main(list(serve_args), standalone_mode=True, prog_name="shardline node join")


@node_group.command("drain")
@click.argument("node_id")
@target_option
@token_option
@cluster_option
@state_dir_option
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until it left.")
@click.option("--timeout", "timeout_s", default=300.0, show_default=True)
def node_drain(
    node_id: str,
    target: str,
    token: str | None,
    cluster_name: str,
    state_dir: Path | None,
    wait: bool,
    timeout_s: float,
) -> None:
    """Drain NODE: its successors load and warm its models, then it leaves and exits."""
    from grpclib.exceptions import GRPCError

    from shardline.node.ops.localcluster import routing_table

    started = time.monotonic()
    reply = admin_call(
        target, token, cluster_name,
        lambda c: c.call("drain_node", v1.DrainNodeRequest(node_id=node_id)),
        state_dir=state_dir,
    )  # fmt: skip
    console.print(reply.message, soft_wrap=True)
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
                console.print(f"  {node_id}: {now}", soft_wrap=True)
                state = now
            await asyncio.sleep(0.2)  # polling another process's state over gRPC
        raise TimeoutError(f"{node_id} still in the cluster after {timeout_s:.0f}s")

    try:
        asyncio.run(gone())
    except (TimeoutError, OSError, GRPCError) as exc:
        fail(f"drain not finished: {exc}", 1)
    console.print(f"{node_id} drained and left in {time.monotonic() - started:.1f}s")


@node_group.command("remove")
@click.argument("node_id")
@target_option
@token_option
@cluster_option
@state_dir_option
@click.option("--force", is_flag=True, help="Even if gossip still sees it alive.")
def node_remove(
    node_id: str,
    target: str,
    token: str | None,
    cluster_name: str,
    state_dir: Path | None,
    force: bool,
) -> None:
    """Forget a dead node's record."""
    reply = admin_call(
        target, token, cluster_name,
        lambda c: c.call("remove_node", v1.RemoveNodeRequest(node_id=node_id, force=force)),
        state_dir=state_dir,
    )  # fmt: skip
    console.print(f"{node_id}: {'removed' if reply.removed else 'no record'}")


@click.command()
@click.argument("package_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@target_option
@token_option
@cluster_option
@state_dir_option
@click.option("--timeout", "timeout_s", default=120.0, show_default=True,
              help="How long to wait for the owners to load and warm it.")  # fmt: skip
def deploy(
    package_dir: Path,
    target: str,
    token: str | None,
    cluster_name: str,
    state_dir: Path | None,
    timeout_s: float,
) -> None:
    """Validate PACKAGE_DIR, store it in the artifact store, register it, and wait until
    its owners have it warm (exit 1 with each node's reason if they cannot load it).

    Check a package first, without a cluster: `shardline package check PACKAGE_DIR`."""
    from grpclib.exceptions import GRPCError

    from shardline.node.cluster.artifacts import ArtifactError, pack
    from shardline.node.ops.localcluster import routing_table
    from shardline.node.ops.package_tools import PackageError, verify_digests

    try:
        verify_digests(package_dir)
        data = pack(package_dir)
    except (PackageError, ArtifactError, OSError) as exc:
        fail(f"invalid package: {exc}", 2)
    reply = admin_call(
        target, token, cluster_name,
        lambda c: c.call("deploy", v1.DeployRequest(package_tar_gz=data)),
        state_dir=state_dir,
    )  # fmt: skip
    key = reply.model_key
    console.print(
        f"stored {key} at {reply.artifact_uri} (catalog revision {reply.revision})", soft_wrap=True
    )

    async def warm() -> dict[str, str] | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            table = await routing_table(target, timeout_s=5)
            failures: dict[str, str] = {}
            for m in table.members:
                try:
                    node_table = await routing_table(m.grpc_address, timeout_s=5)
                except (OSError, TimeoutError, GRPCError):
                    continue  # a node leaving; the others still answer
                if key in node_table.load_failures:
                    failures[m.node_id] = node_table.load_failures[key]
            if failures:
                return failures
            placement = next((p for p in table.placements if p.model_key == key), None)
            warm_on = {m.node_id for m in table.members if key in m.models}
            if placement and placement.owners and set(placement.owners) <= warm_on:
                return None
            await asyncio.sleep(0.2)  # polling other processes' state over gRPC
        return {"": f"not warm on its owners after {timeout_s:.0f}s"}

    try:
        failures = asyncio.run(warm())
    except (OSError, TimeoutError, GRPCError) as exc:
        fail(f"{key} stored, but its load could not be followed: {unreachable(target, exc)}", 1)
    if failures:
        for node_id, reason in sorted(failures.items()):
            where = f" on {node_id}" if node_id else ""
            why = reason.strip() or "the node gave no reason; see its log"
            err.print(Text(f"{key} failed to load{where}: {why}", style="red"), soft_wrap=True)
        err.print(
            f"routing is unchanged. Check the package locally with `shardline package check "
            f"{package_dir}`, then remove this version with `shardline undeploy {key}` "
            "and deploy a fixed one (a new version).",
            soft_wrap=True,
        )
        sys.exit(1)
    console.print(f"{key} is warm on its owners; route to it with `shardline objective set`")


@click.command()
@click.argument("model_key")
@target_option
@token_option
@cluster_option
@state_dir_option
def undeploy(
    model_key: str, target: str, token: str | None, cluster_name: str, state_dir: Path | None
) -> None:
    """Remove NAME@VERSION from the catalog (refused while an objective routes to it)."""
    reply = admin_call(
        target, token, cluster_name,
        lambda c: c.call("undeploy", v1.UndeployRequest(model_key=model_key)),
        state_dir=state_dir,
    )  # fmt: skip
    console.print(f"{model_key}: {'undeployed' if reply.removed else 'was not deployed'}")


@click.group()
def objective() -> None:
    """Objective configs: set, show, history, rollback, explain."""


def _print_revision(info: Any) -> None:
    console.print(
        Text.assemble(
            "objective ",
            (info.name, "bold"),
            f" revision {info.revision} ({info.updated_at or '-'} by {info.author or '-'})",
        ),
        soft_wrap=True,
    )


@objective.command("set")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@target_option
@token_option
@cluster_option
@state_dir_option
@click.option("--author", default="", help="Recorded in the history.")
@click.option("--force", is_flag=True, help="Allow models that are not warm anywhere yet.")
def objective_set(
    file: Path,
    target: str,
    token: str | None,
    cluster_name: str,
    state_dir: Path | None,
    author: str,
    force: bool,
) -> None:
    """Store FILE (TOML or JSON) as the objective's new revision; every node applies it."""
    from shardline.router.objectives import ConfigError, ObjectiveConfig

    try:
        text = file.read_text()
        raw = json.loads(text) if file.suffix == ".json" else tomllib.loads(text)
        config = ObjectiveConfig.from_dict(raw)
    except (ConfigError, ValueError, OSError) as exc:
        fail(f"invalid objective config {file}: {exc}", 2)
    request = v1.SetObjectiveRequest(
        config_json=json.dumps(config.to_dict()), author=author, force=force
    )
    _print_revision(
        admin_call(
            target,
            token,
            cluster_name,
            lambda c: c.call("set_objective", request),
            state_dir=state_dir,
        )
    )


@objective.command("show")
@click.argument("name")
@target_option
@token_option
@cluster_option
@state_dir_option
def objective_show(
    name: str, target: str, token: str | None, cluster_name: str, state_dir: Path | None
) -> None:
    """The objective's current config."""
    info = admin_call(
        target, token, cluster_name,
        lambda c: c.call("get_objective", v1.GetObjectiveRequest(name=name)),
        state_dir=state_dir,
    )  # fmt: skip
    _print_revision(info)
    console.print_json(info.config_json)


@objective.command("history")
@click.argument("name")
@target_option
@token_option
@cluster_option
@state_dir_option
def objective_history(
    name: str, target: str, token: str | None, cluster_name: str, state_dir: Path | None
) -> None:
    """Every stored revision of the objective."""
    reply = admin_call(
        target, token, cluster_name,
        lambda c: c.call("objective_history", v1.GetObjectiveRequest(name=name)),
        state_dir=state_dir,
    )  # fmt: skip
    rows = []
    for r in reply.revisions:
        cfg = json.loads(r.config_json)
        canary = cfg.get("canary")
        rows.append((
            str(r.revision), r.updated_at, r.author or "-", cfg.get("default", ""),
            f"{canary['model']} {canary['percent']}%" if canary else "-",
            ", ".join(e["id"] for e in cfg.get("experiments", [])) or "-",
        ))  # fmt: skip
    print_table(("revision", "updated", "author", "default", "canary", "experiments"), rows)


@objective.command("rollback")
@click.argument("name")
@click.option(
    "--to", "to_revision", type=click.IntRange(min=0), default=0,
    help="Store this revision's config as the new revision [default: walk back: the "
    "revision before the one the current revision replaced, so repeated rollbacks keep "
    "going back through the history instead of undoing each other].",
)  # fmt: skip
@click.option(
    "--force", is_flag=True,
    help="Roll back even to models that are not deployed and warm (refused otherwise, as "
    "for `objective set`).",
)  # fmt: skip
@target_option
@token_option
@cluster_option
@state_dir_option
def objective_rollback(
    name: str,
    to_revision: int,
    force: bool,
    target: str,
    token: str | None,
    cluster_name: str,
    state_dir: Path | None,
) -> None:
    """Store an earlier revision's config as the new revision (history stays append-only).

    The same checks as `objective set` apply: every model the old config routes to must be
    deployed and warm, unless --force."""
    request = v1.RollbackObjectiveRequest(name=name, to_revision=to_revision, force=force)
    info = admin_call(
        target, token, cluster_name, lambda c: c.call("rollback_objective", request),
        state_dir=state_dir,
    )  # fmt: skip
    _print_revision(info)


@objective.command("explain")
@click.argument("name")
@click.option(
    "--target", default=None, callback=_check_target,
    help="Ask this node (the cluster's config) instead of reading files. Read-only: needs "
    "no admin token.",
)  # fmt: skip
@click.option("--token", default=None, hidden=True)  # older nodes asked for one
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
    objectives_path: Path,
    user_id: str,
    country: str,
    device: str,
    surface: str,
    context: Sequence[str],
    override: str | None,
) -> None:
    """Print which model version NAME picks for a request context, and why."""
    from shardline.router.objectives import ConfigError, load_objective_file, load_objectives_dir
    from shardline.router.rules import OverrideNotAllowed, RequestContext, evaluate

    attributes = _pairs(context)
    if target is not None:
        request = v1.ExplainRequest(
            objective=name, user_id=user_id, country=country, device=device, surface=surface,
            attributes=attributes, model_override=override or "",
        )  # fmt: skip
        r = admin_call(target, token, "", lambda c: c.call("explain", request), needs_token=False)
        model, cell, shadows, reason = r.model_key, r.cell, list(r.shadows), r.reason
        where = f" (catalog revision {r.revision}; owners {', '.join(r.owners) or 'none'})"
    else:
        try:
            if objectives_path.is_dir():
                configs = dict(load_objectives_dir(objectives_path))
            else:
                cfg = load_objective_file(objectives_path)
                configs = {cfg.name: cfg}
        except ConfigError as exc:
            fail(f"invalid objective config: {exc}", 2)
        chosen = configs.get(name)
        if chosen is None:
            fail(f"unknown objective {name!r}; known: {', '.join(configs)}", 2)
        assert chosen is not None
        ctx = RequestContext(
            user_id=user_id, country=country, device=device, surface=surface,
            attributes=attributes,
        )  # fmt: skip
        try:
            d = evaluate(chosen, ctx, override)
        except OverrideNotAllowed as exc:
            fail(f"override refused: {exc}", 2)
        model, cell, shadows, reason, where = d.model_key, d.cell, list(d.shadows), d.reason, ""
    console.print(
        Text.assemble("objective ", (name, "bold"), " -> model ", (model, "bold"), where),
        soft_wrap=True,
    )
    console.print(Text(f"cell: {cell}"), soft_wrap=True)
    console.print(Text(f"shadows: {', '.join(shadows) or 'none'}"), soft_wrap=True)
    console.print(Text(f"why: {reason}"), soft_wrap=True)


@click.group()
def package() -> None:
    """Workflow packages: pin their digests, check them without a cluster."""


@package.command("hash")
@click.argument("package_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def package_hash(package_dir: Path) -> None:
    """Compute the sha256 of the weights and every [[files]] entry and write them into
    PACKAGE_DIR/workflow.toml (comments and layout kept)."""
    from shardline.node.ops.package_tools import PackageError, hash_package

    try:
        result = hash_package(package_dir)
    except (PackageError, OSError) as exc:
        fail(f"cannot hash {package_dir}: {exc}", 1)
    for rel, digest in result.digests.items():
        mark = "updated" if rel in result.changed else "unchanged"
        console.print(f"{rel}: sha256 {digest} ({mark})", soft_wrap=True)
    console.print(
        f"wrote {package_dir / 'workflow.toml'}"
        if result.changed
        else "workflow.toml is up to date",
        soft_wrap=True,
    )


@package.command("check")
@click.argument("package_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def package_check(package_dir: Path) -> None:
    """Validate PACKAGE_DIR as a node would before serving it, without deploying it:
    the manifest, every sha256, the weights, the entrypoint (imported and constructed)
    and its example request run once. Exit 1 with the first problem."""
    import numpy as np

    from shardline.node.ops.package_tools import PackageError, check_package

    def say(what: str, detail: str) -> None:
        console.print(Text.assemble((f"ok  {what}: ", "green"), detail), soft_wrap=True)

    try:
        report = check_package(package_dir, say)
    except (PackageError, OSError) as exc:
        fail(f"package check failed: {exc}", 1)
    for name, value in (report.example_outputs or {}).items():
        shown = np.array2string(np.asarray(value), precision=4, threshold=20)
        console.print(Text(f"    {name} = {shown}"), soft_wrap=True)
    for line in report.warnings:
        err.print(Text(f"warning: {line}", style="yellow"), soft_wrap=True)
    m = report.manifest
    console.print(
        Text(f"{m.model_key} passes: deploy it with `shardline deploy {package_dir}`"),
        soft_wrap=True,
    )
