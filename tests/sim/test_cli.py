"""``shardline sim``: the click group, the exit status, the report files."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from rich.console import Console

from sim.cli import run_command, sim

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
