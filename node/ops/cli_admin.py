"""Operator and researcher commands: nodes (join, drain, remove), deploy, objectives,
packages; and what every command shares (the default target, tables that never truncate)."""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
import tomllib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click
from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from shardline.membership.loaded import lazy_there
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
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    *NETWORK_ERRORS, StreamTerminatedError, ProtocolError,
)  # fmt: skip
POLL_ERRORS: tuple[type[BaseException], ...] = (*TRANSPORT_ERRORS, GRPCError)


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


def human_bytes(n: int) -> str:
    """``n`` bytes in binary units, as ``--memory-budget`` takes them: 512 B, 3.2 KiB, 2.0 GiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class TableReader:
    """``Cluster.GetRoutingTable`` of any node, one channel per address for the whole
    command (a poll loop asks every member each round; it must not dial each time)."""

    def __init__(self, timeout_s: float = 5.0) -> None:
        from shardline.node.sdk.tls import TlsFiles

        self.timeout_s = timeout_s
        self._tls = TlsFiles.from_env()
        self._channels: dict[str, Any] = {}

    async def table(self, address: str) -> v1.RoutingTable:
        from grpclib.client import Channel

        from shardline.node.sdk.tls import client_context

        channel = self._channels.get(address)
        if channel is None:
            host, port = parse_target(address)
            ssl_context = client_context(self._tls) if self._tls is not None else None
            channel = self._channels[address] = Channel(host, port, ssl=ssl_context)
        table: v1.RoutingTable = await v1.ClusterStub(channel).get_routing_table(
            v1.GetRoutingTableRequest(), timeout=self.timeout_s
        )
        return table

    async def own_tables(self, addresses: Sequence[str]) -> dict[str, v1.RoutingTable | None]:
        """Each address's own table, asked concurrently; None where it did not answer."""

        async def one(address: str) -> v1.RoutingTable | None:
            try:
                return await self.table(address)
            except POLL_ERRORS:
                return None  # a node leaving, or down: the others still answer

        answers = await asyncio.gather(*(one(a) for a in addresses))
        return dict(zip(addresses, answers, strict=True))

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()


class _Progress:
    """Progress of a long phase: a rich bar on a terminal, else a line every ``step``
    items (never a line per package: a deploy of 1 000 packages prints a dozen lines)."""

    def __init__(self, what: str, total: int) -> None:
        self.what, self.total, self.done = what, total, 0
        self.step = max(1, math.ceil(total / 10))
        self.started = time.monotonic()
        self._bar: Any = None
        if console.is_terminal and total > 1:
            from rich.progress import Progress

            self._bar = Progress(console=console, transient=False)
            self._bar.start()
            self._task = self._bar.add_task(what, total=total)

    def advance(self, n: int = 1) -> None:
        before, self.done = self.done, self.done + n
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
        elif self.total > 1 and (
            self.done // self.step != before // self.step or self.done == self.total
        ):
            console.print(
                f"{self.what}: {self.done}/{self.total} ({time.monotonic() - self.started:.1f}s)",
                soft_wrap=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


@dataclass
class _Package:
    """One package of a deploy: where it is, its key, and what became of it."""

    path: Path
    key: str
    footprint: int
    """The declared footprint (``[memory] host_bytes``, else the weights file's size)."""
    revision: int = 0
    outcome: str = ""
    """"" while pending, then warm, lazy, loading (at the timeout) or failed."""
    failures: dict[str, str] = field(default_factory=dict)
    """Node id ("" for the package as a whole) -> why it failed there."""


# Upload refusals that concern one package (the others still go): anything else (no
# token, node down) stops the deploy, as every package would meet it.
_PER_PACKAGE = frozenset({"INVALID_ARGUMENT", "FAILED_PRECONDITION", "ALREADY_EXISTS",
                          "RESOURCE_EXHAUSTED", "OUT_OF_RANGE"})  # fmt: skip
IDLE_ROUNDS = 5
"""Rounds (>= 1 s) an owner that applied a deploy must be seen loading nothing before a
model it neither holds nor loads counts as lazy there although its bytes would fit (a node
keeps it lazy for a reason the routing table does not show, e.g. --max-resident-models)."""


def _owner_state(
    key: str, pinned: bool, footprint: int, member: v1.MemberInfo, idle_rounds: int
) -> str:
    """What ``key`` is on one owner: resident, loading, lazy (loads on first request),
    too_big (can never fit this owner's budget) or waiting (the owner should load it now)."""
    if key in member.models:
        return "resident"
    if key in member.loading:
        return "loading"
    budget = member.budget_bytes
    if budget and footprint > budget:
        return "too_big"
    if pinned:
        return "waiting"  # a pinned model is loaded at once, evicting others
    # (Not ``settled``: it may predate this deploy; the idle rounds stand in for it.)
    if lazy_there(footprint, budget, member.resident_bytes, settled=False):
        return "lazy"
    return "lazy" if idle_rounds >= IDLE_ROUNDS else "waiting"


class _Follow:
    """Poll the cluster until every deployed package is loadable or failed (see
    ``deploy``): each round reads the target's table (placements) and every member's
    own table (its resident set, loads and load failures) once, at most every 0.2 s."""

    def __init__(self, target: str, packages: list[_Package], reader: TableReader) -> None:
        self.target = target
        self.packages = packages
        self.reader = reader
        self.idle: dict[str, int] = {}
        self.detail: dict[str, str] = {}

    async def run(self, timeout_s: float, progress: _Progress) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            started = time.monotonic()
            await self.round()
            pending = [p for p in self.packages if not p.outcome]
            progress.advance(len(self.packages) - len(pending) - progress.done)
            if not pending:
                return
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(max(0.0, 0.2 - (time.monotonic() - started)))
        for p in pending:
            if self.detail.get(p.key) == "loading":
                p.outcome = "loading"  # loadable: on its way in; not a failure
            else:
                why = self.detail.get(p.key, "no answer")
                p.outcome = "failed"
                p.failures[""] = f"not warm on its owners after {timeout_s:.0f}s ({why})"

    async def round(self) -> None:
        table = await self.reader.table(self.target)
        own = await self.reader.own_tables([m.grpc_address for m in table.members])
        members: dict[str, v1.MemberInfo] = {}
        failures: dict[str, dict[str, str]] = {}  # key -> node -> why
        revision: dict[str, int] = {}
        for m in table.members:
            mine = own.get(m.grpc_address)
            fresh = (
                next((x for x in mine.members if x.node_id == m.node_id), None) if mine else None
            )
            members[m.node_id] = fresh or m
            if mine is not None:
                revision[m.node_id] = mine.revision
                for key, why in mine.load_failures.items():
                    failures.setdefault(key, {})[m.node_id] = why
        oldest = min((p.revision for p in self.packages if not p.outcome), default=0)
        for node_id, m in members.items():
            busy = bool(m.loading) or revision.get(node_id, 0) < oldest
            self.idle[node_id] = 0 if busy else self.idle.get(node_id, 0) + 1
        placements = {p.model_key: p for p in table.placements}
        for package in self.packages:
            if not package.outcome:
                self._judge(package, placements.get(package.key), members, failures, revision)

    def _judge(
        self,
        package: _Package,
        placement: v1.ModelPlacement | None,
        members: dict[str, v1.MemberInfo],
        failures: dict[str, dict[str, str]],
        revision: dict[str, int],
    ) -> None:
        key = package.key
        if key in failures:
            package.outcome, package.failures = "failed", dict(failures[key])
            return
        if placement is None or not placement.owners:
            self.detail[key] = "not placed on any node yet"
            return
        footprint = placement.footprint_bytes or package.footprint
        states: dict[str, str] = {}
        for owner in placement.owners:
            member = members.get(owner)
            if member is None:
                states[owner] = "waiting"
                continue
            idle = self.idle.get(owner, 0) if revision.get(owner, 0) >= package.revision else 0
            states[owner] = _owner_state(key, placement.pinned, footprint, member, idle)
        if all(s == "too_big" for s in states.values()):
            budgets = ", ".join(
                f"{o} {human_bytes(members[o].budget_bytes)}" for o in placement.owners
            )
            package.outcome = "failed"
            package.failures[""] = (
                f"it needs {human_bytes(footprint)} ({footprint} bytes) and fits no owner's "
                f"memory budget ({budgets})"
            )
            return
        usable = {o: s for o, s in states.items() if s != "too_big"}
        self.detail[key] = ", ".join(f"{o}: {s}" for o, s in sorted(states.items()))
        if all(s == "resident" for s in usable.values()):
            package.outcome = "warm"
        elif all(s in ("resident", "lazy") for s in usable.values()):
            package.outcome = "lazy"
        elif all(s in ("resident", "lazy", "loading") for s in usable.values()):
            self.detail[key] = "loading"


def _discover(path: Path) -> list[Path]:
    """``path`` itself when it holds a workflow.toml, else every package found below it."""
    from shardline.workflows.integrity import discover_packages
    from shardline.workflows.manifest import MANIFEST_FILE

    return [path] if (path / MANIFEST_FILE).is_file() else discover_packages(path)


def _verify_all(paths: list[Path]) -> tuple[list[_Package], list[str]]:
    """Every package checked locally (manifest, digests) before anything is sent."""
    from shardline.node.cluster.catalog_ops import declared_footprint
    from shardline.node.ops.package_tools import PackageError, verify_digests

    packages: list[_Package] = []
    problems: list[str] = []
    seen: dict[str, Path] = {}
    for path in paths:
        try:
            manifest = verify_digests(path)
            footprint = declared_footprint(path, manifest)
        except (PackageError, OSError) as exc:
            problems.append(f"invalid package {path}: {exc}")
            continue
        key = manifest.model_key
        if key in seen:
            problems.append(f"{path} and {seen[key]} are both {key}")
            continue
        seen[key] = path
        packages.append(_Package(path, key, footprint))
    return packages, problems


@click.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@target_option
@token_option
@cluster_option
@state_dir_option
@click.option("--timeout", "timeout_s", default=120.0, show_default=True,
              help="How long to wait for every deployed model to be loadable.")  # fmt: skip
@click.option("--parallel", default=4, show_default=True, type=click.IntRange(1, 64),
              help="Uploads in flight at once (over one connection).")  # fmt: skip
def deploy(
    path: Path,
    target: str,
    token: str | None,
    cluster_name: str,
    state_dir: Path | None,
    timeout_s: float,
    parallel: int,
) -> None:
    """Deploy PATH: one workflow package, or every package found below PATH (a directory
    without workflow.toml). Each is validated here, stored in the artifact store and
    registered; then the command waits until each is loadable: placed, and on every owner
    resident (warm), or lazy (it loads on its first request: the owner's memory budget is
    full of other models, never smaller than the model itself). Exit 1 if any failed (each
    node's reason is printed), 2 if a package is invalid (then nothing is deployed).

    Check a package first, without a cluster: `shardline package check PACKAGE_DIR`."""
    started = time.monotonic()
    single = (path / "workflow.toml").is_file()
    packages, problems = _verify_all(_discover(path))
    if problems:
        if single:
            fail(problems[0].replace(f"invalid package {path}: ", "invalid package: "), 2)
        for line in problems:
            err.print(Text(line, style="red"), soft_wrap=True)
        fail(f"{len(problems)} invalid package(s) under {path}; nothing was deployed", 2)
    if not packages:
        fail(f"no workflow packages (workflow.toml) under {path}", 2)

    async def run(client: AdminClient) -> str | None:
        """None, or why the loads could not be followed after the uploads."""
        reader = TableReader()
        try:
            await _upload_all(client, reader, target, packages, parallel, single)
            stored = [p for p in packages if not p.outcome]
            if stored:
                progress = _Progress("loadable", len(stored))
                try:
                    await _Follow(target, stored, reader).run(timeout_s, progress)
                except GRPCError as exc:
                    return f"{exc.status.name} from {target}: {exc.message or ''}"
                except TRANSPORT_ERRORS as exc:
                    return unreachable(target, exc)
                finally:
                    progress.close()
            return None
        finally:
            reader.close()

    lost = admin_call(target, token, cluster_name, run, state_dir=state_dir)
    if lost is not None:
        what = packages[0].key if single else f"{len(packages)} packages"
        fail(f"{what} stored, but the loads could not be followed: {lost}", 1)
    _report(packages, path, single, time.monotonic() - started)


async def _upload_all(
    client: AdminClient,
    reader: TableReader,
    target: str,
    packages: list[_Package],
    parallel: int,
    single: bool,
) -> None:
    """Upload every package over the one admin connection, ``parallel`` at a time; a
    package that fits no node's memory budget is refused here, with the numbers."""
    from shardline.node.cluster.artifacts import ArtifactError, pack

    try:
        table = await reader.table(target)
    except GRPCError as exc:
        raise AdminError(exc.status, exc.message or "") from None
    except TRANSPORT_ERRORS as exc:
        raise AdminError(Status.UNAVAILABLE, unreachable(target, exc)) from None
    budgets = {m.node_id: m.budget_bytes for m in table.members if m.budget_bytes}
    if budgets:
        largest = max(budgets, key=lambda n: budgets[n])
        for p in packages:
            if p.footprint > budgets[largest]:
                p.outcome = "failed"
                p.failures[""] = (
                    f"it needs {human_bytes(p.footprint)} ({p.footprint} bytes) and fits no "
                    f"node's memory budget (the largest: {largest} "
                    f"{human_bytes(budgets[largest])}); nothing was stored"
                )
    todo = [p for p in packages if not p.outcome]
    progress = _Progress("uploaded", len(todo))
    gate = asyncio.Semaphore(parallel)

    async def one(p: _Package) -> None:
        async with gate:
            try:
                data = await asyncio.to_thread(pack, p.path)
            except (ArtifactError, OSError) as exc:
                p.outcome, p.failures[""] = "failed", f"invalid package: {exc}"
                return
            try:
                reply = await client.call("deploy", v1.DeployRequest(package_tar_gz=data))
            except AdminError as exc:
                if single or exc.status.name not in _PER_PACKAGE:
                    raise
                p.outcome, p.failures[""] = "failed", f"{exc.status.name}: {exc.message}"
                return
            p.revision = reply.revision
            if single:
                console.print(
                    f"stored {reply.model_key} at {reply.artifact_uri} "
                    f"(catalog revision {reply.revision})",
                    soft_wrap=True,
                )
            progress.advance()

    tasks = [asyncio.create_task(one(p)) for p in todo]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        progress.close()


def _report(packages: list[_Package], path: Path, single: bool, elapsed_s: float) -> None:
    counts = {o: sum(p.outcome == o for p in packages) for o in ("warm", "lazy", "loading")}
    failed = [p for p in packages if p.outcome == "failed"]
    for p in failed:
        for node_id, reason in sorted(p.failures.items()):
            where = f" on {node_id}" if node_id else ""
            why = reason.strip() or "the node gave no reason; see its log"
            err.print(Text(f"{p.key} failed to load{where}: {why}", style="red"), soft_wrap=True)
    if failed:
        first = failed[0]
        err.print(
            f"routing is unchanged. Check the package locally with `shardline package check "
            f"{first.path}`, then remove this version with `shardline undeploy {first.key}` "
            "and deploy a fixed one (a new version).",
            soft_wrap=True,
        )
    if single:
        p = packages[0]
        if p.outcome == "warm":
            console.print(
                f"{p.key} is warm on its owners; route to it with `shardline objective set`"
            )
        elif p.outcome in ("lazy", "loading"):
            state = "lazy (it loads on its first request)" if p.outcome == "lazy" else "loading"
            console.print(
                f"{p.key} is loadable: placed, and {state} where not warm; route to it with "
                "`shardline objective set`",
                soft_wrap=True,
            )
    else:
        console.print(
            f"deployed {len(packages)} packages from {path} in {elapsed_s:.1f}s: "
            f"{counts['warm']} warm, {counts['lazy']} lazy"
            + (f", {counts['loading']} loading" if counts["loading"] else "")
            + f", {len(failed)} failed",
            soft_wrap=True,
        )
    if failed:
        sys.exit(1)


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
