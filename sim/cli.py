"""``shardline sim``: run a chaos scenario, print its summary, write its report.

``sim`` is a click group (``node.cli`` attaches it to the main CLI); ``run_command`` is
the same thing as a plain function. The exit status is 0 when every check passed, 1 when
one failed (the seed and the command that replays the run are printed), 2 on a bad
scenario.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from sim.report import print_summary, write_report
from sim.result import run_scenario
from sim.scenario import ScenarioError, load_scenario, scenario_names
from sim.swarm import random_scenario


def run_command(
    scenario: str,
    seed: int | None = None,
    report_dir: Path | None = None,
    *,
    duration_s: float | None = None,
    console: Console | None = None,
) -> int:
    """Run SCENARIO (a name in sim/scenarios or a path); returns the exit status."""
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
    result = run_scenario(spec, seed)
    print_summary(result, console)
    if report_dir is not None:
        paths = write_report(result, Path(report_dir))
        console.print(f"report: {paths[-1]}", soft_wrap=True)
    return 0 if result.ok else 1


@click.group(name="sim")
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
def run(scenario: str, seed: int | None, report_dir: Path | None, duration_s: float | None) -> None:
    """Run SCENARIO: a name in sim/scenarios (see `shardline sim list`), a TOML path, or
    `swarm` (a random fault schedule drawn from --seed)."""
    raise SystemExit(run_command(scenario, seed, report_dir, duration_s=duration_s))


@sim.command("list")
def list_scenarios() -> None:
    """List the scenarios shipped in sim/scenarios."""
    for name in scenario_names():
        spec = load_scenario(name)
        click.echo(f"{name:28} {spec.description.splitlines()[0] if spec.description else ''}")


if __name__ == "__main__":
    sim()
