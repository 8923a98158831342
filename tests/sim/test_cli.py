"""``shardline sim``: the click group, the exit status, the report files."""

from __future__ import annotations

import io
import itertools
import json
import re
from pathlib import Path

from click.testing import CliRunner
from rich.console import Console

from shardline.sim.cli import run_command, run_with_progress, sim
from shardline.sim.report import fault_labels, node_order, write_report
from shardline.sim.scenario import load_scenario

TINY = """
name = "tiny"
duration_s = 12.0
[cluster]
nodes = 3
[[faults]]
at_s = 5.0
op = "crash"
node = "n01"
"""

IMPOSSIBLE = (
    TINY
    + """
[checks]
min_success_rate = 1.0
convergence_bound_s = 0.0
"""
)


def test_run_writes_a_report(tmp_path: Path) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    console = Console(record=True, width=120)
    status = run_command(str(scenario), seed=3, report_dir=tmp_path / "out", console=console)
    text = console.export_text()
    assert status == 0, text
    assert "success rate" in text and "convergence after heal" in text
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["seed"] == 3 and report["ok"]
    assert report["summary"]["requests"] > 0
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {
        "report.json",
        "index.html",
        "timeline.png",
        "ownership.png",
    }


def test_a_failing_check_prints_the_seed_and_the_replay_command(tmp_path: Path) -> None:
    scenario = tmp_path / "impossible.toml"
    scenario.write_text(IMPOSSIBLE)
    console = Console(record=True, width=200)
    assert run_command(str(scenario), seed=5, console=console) == 1
    text = console.export_text()
    assert "seed 5" in text
    assert f"shardline sim run {scenario} --seed 5" in text


def test_click_group_runs_by_name_and_reports_bad_scenarios() -> None:
    runner = CliRunner()
    listed = runner.invoke(sim, ["list"])
    assert listed.exit_code == 0 and "churn_100_nodes" in listed.output
    bad = runner.invoke(sim, ["run", "no_such_scenario"])
    assert bad.exit_code == 2
    assert "no scenario" in bad.output


def test_sim_help_works_through_the_main_cli() -> None:
    """`shardline sim -h` shows the simulator's help (it used to pass -h through)."""
    from shardline.node.ops.cli import main

    runner = CliRunner()
    for args in (["sim", "-h"], ["sim", "--help"]):
        done = runner.invoke(main, args)
        assert done.exit_code == 0, done.output
        assert "run" in done.output and "list" in done.output
    run_help = runner.invoke(main, ["sim", "run", "-h"])
    assert run_help.exit_code == 0 and "--seed" in run_help.output
    assert "--progress" in run_help.output


def test_run_shows_progress_lines_when_not_a_terminal(tmp_path: Path) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    stream = io.StringIO()
    progress = Console(file=stream, force_terminal=False, width=200)
    status = run_command(
        str(scenario), seed=3, console=Console(record=True), progress=progress,
        progress_interval_s=0.01,
    )  # fmt: skip
    assert status == 0
    lines = stream.getvalue().splitlines()
    assert lines and lines[-1].endswith(": done")
    total = float(re.search(r"/ ([\d.]+) virtual s", lines[-1]).group(1))  # type: ignore[union-attr]
    assert total >= 12.0 and "(100 %)" in lines[-1]
    for line in lines:
        assert re.fullmatch(
            r"sim tiny: [\d.]+ / [\d.]+ virtual s \(\d+ %\), [\d.]+ s elapsed.*", line
        )


def test_run_trace_is_the_same_with_and_without_progress(tmp_path: Path) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    spec = load_scenario(str(scenario))
    quiet = run_with_progress(spec, 4)
    watched = run_with_progress(
        spec, 4, progress=Console(file=io.StringIO(), force_terminal=True), interval_s=0.01
    )
    assert quiet.trace_hash == watched.trace_hash


def test_fault_labels_are_grouped_so_they_cannot_overlap() -> None:
    faults = [(10.0 + 0.5 * i, f"crash n{i:02d}") for i in range(100)]  # 100 faults in 50 s
    labels = fault_labels(faults, span_s=600.0, slots=60)
    gap = 600.0 / 60
    assert len(labels) <= 60
    assert all(b[0] - a[0] >= gap for a, b in itertools.pairwise(labels))
    assert labels[0] == (10.0, "crash n00 (+19)")
    assert sum(1 + int(re.search(r"\+(\d+)", w).group(1)) for _, w in labels) == 100  # type: ignore[union-attr]
    few = [(5.0, "crash n01"), (300.0, "join n02")]
    assert fault_labels(few, 600.0) == few


def test_ownership_rows_are_node_ids_in_natural_order(tmp_path: Path) -> None:
    assert node_order(["n10", "n2", "n1", "n2"]) == ["n1", "n2", "n10"]
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    result = run_with_progress(load_scenario(str(scenario)), 3)
    import matplotlib.pyplot as plt

    captured: list[list[str]] = []
    original = plt.Figure.savefig

    def capture(fig: plt.Figure, *args: object, **kwargs: object) -> None:
        captured.extend(
            [t.get_text() for t in ax.get_yticklabels()]
            for ax in fig.axes
            if ax.get_ylabel() == "node"
        )
        original(fig, *args, **kwargs)

    plt.Figure.savefig = capture  # type: ignore[method-assign]
    try:
        write_report(result, tmp_path / "out")
    finally:
        plt.Figure.savefig = original  # type: ignore[method-assign]
    assert captured == [node_order([n for _, owned in result.ownership for n in owned])]
    assert all(label.startswith("n") for label in captured[0])
