"""``shardline sim``: run a chaos scenario, print its summary, write its report.

``sim`` is a click group (``shardline.node.ops.cli`` attaches it to the main CLI); ``run_command``
is the same thing as a plain function. The exit status is 0 when every check passed, 1 when one
failed (the seed and the command that replays the run are printed), 2 on a bad scenario. While a run
goes, ``run`` shows its progress (virtual time done / total) on stderr: a progress bar on a
terminal, else a line every few seconds and one at the end.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from shardline.sim.report import print_summary, write_report
from shardline.sim.result import RunResult, summarize
from shardline.sim.scenario import Scenario, ScenarioError, load_scenario, scenario_names
from shardline.sim.swarm import random_scenario
from shardline.sim.world import World


def run_with_progress(
    spec: Scenario,
    seed: int | None,
    *,
    progress: Console | None = None,
    interval_s: float = 5.0,
) -> RunResult:
    """``run_scenario(spec, seed)``; with ``progress``, a watcher thread reports the virtual
    time done / total on that console while the run goes (it only reads the clock: the
    run and its trace are the same with or without it)."""
    world = World(spec, seed)
    if progress is None:
        world.run()
        return summarize(world)
    total = world.end_s
    finished = threading.Event()
    started = time.monotonic()

    def line(now: float) -> str:
        share = 100 * min(now, total) / total if total > 0 else 100.0
        return (
            f"sim {spec.name}: {min(now, total):.1f} / {total:.1f} virtual s ({share:.0f} %), "
            f"{time.monotonic() - started:.1f} s elapsed"
        )

    if progress.is_terminal:
        bar = Progress(
            TextColumn(f"sim {spec.name}"),
            BarColumn(),
            TextColumn("{task.completed:.1f} / {task.total:.1f} virtual s"),
            TimeElapsedColumn(),
            console=progress,
            transient=True,
        )

        def watch() -> None:
            with bar:
                task = bar.add_task("run", total=total)
                while not finished.wait(0.1):
                    bar.update(task, completed=min(world.loop.now, total))
    else:

        def watch() -> None:
            while not finished.wait(interval_s):
                progress.print(line(world.loop.now), soft_wrap=True, highlight=False)

    watcher = threading.Thread(target=watch, name="sim-progress", daemon=True)
    watcher.start()
    try:
        world.run()
    finally:
        finished.set()
        watcher.join()
    if not progress.is_terminal:
        progress.print(line(total) + ": done", soft_wrap=True, highlight=False)
    return summarize(world)


def run_command(
    scenario: str,
    seed: int | None = None,
    report_dir: Path | None = None,
    *,
    duration_s: float | None = None,
    console: Console | None = None,
    progress: Console | None = None,
    progress_interval_s: float = 5.0,
) -> int:
    """Run SCENARIO (a name in sim/scenarios or a path); returns the exit status. With
    ``progress`` (a console, e.g. on stderr) the run's progress is shown there."""
    console = console or Console()
    try:
        if scenario == "swarm":  # a random schedule drawn from the seed
            spec = random_scenario(1 if seed is None else seed)
        else:
            spec = load_scenario(scenario)
    except ScenarioError as exc:
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        return 2
    if duration_s is not None:
        spec = spec.with_overrides(duration_s=duration_s)
    result = run_with_progress(spec, seed, progress=progress, interval_s=progress_interval_s)
    print_summary(result, console)
    if report_dir is not None:
        paths = write_report(result, Path(report_dir))
        console.print(f"report: {paths[-1]}", soft_wrap=True)
    return 0 if result.ok else 1


@click.group(name="sim", context_settings={"help_option_names": ["-h", "--help"]})
def sim() -> None:
    """Deterministic chaos simulator over the real membership and routing cores."""


@sim.command("run")
@click.argument("scenario")
@click.option("--seed", type=int, default=None, help="Seed (default: the scenario's own).")
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write report.json, plots and index.html into this directory.",
)
@click.option(
    "--duration", "duration_s", type=float, default=None, help="Cut the run short (seconds)."
)
@click.option(
    "--progress/--no-progress",
    default=True,
    show_default=True,
    help="Show progress on stderr (a bar on a terminal, else a line every --progress-every s).",
)
@click.option(
    "--progress-every",
    "progress_every_s",
    type=click.FloatRange(min=0.01),
    default=5.0,
    show_default=True,
    help="Seconds between progress lines when stderr is not a terminal.",
)
def run(
    scenario: str,
    seed: int | None,
    report_dir: Path | None,
    duration_s: float | None,
    progress: bool,
    progress_every_s: float,
) -> None:
    """Run SCENARIO: a name in sim/scenarios (see `shardline sim list`), a TOML path, or
    `swarm` (a random fault schedule drawn from --seed)."""
    raise SystemExit(
        run_command(
            scenario,
            seed,
            report_dir,
            duration_s=duration_s,
            progress=Console(file=sys.stderr) if progress else None,
            progress_interval_s=progress_every_s,
        )
    )


@sim.command("list")
def list_scenarios() -> None:
    """List the scenarios shipped in sim/scenarios."""
    for name in scenario_names():
        spec = load_scenario(name)
        click.echo(f"{name:28} {spec.description.splitlines()[0] if spec.description else ''}")


if __name__ == "__main__":
    sim()
