"""One seed gives one trace; another seed gives another (in and across processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from shardline.sim.result import run_scenario
from shardline.sim.scenario import Scenario, parse_scenario

ROOT = Path(__file__).resolve().parents[2]

DOC = {
    "name": "determinism",
    "duration_s": 25.0,
    "cluster": {"nodes": 5},
    "network": {"loss": 0.02, "duplicate": 0.01, "reorder": 0.02},
    "faults": [
        {"at_s": 6.0, "op": "crash", "node": "random"},
        {"at_s": 8.0, "op": "partition", "isolate": ["n01"], "asymmetric": True, "duration_s": 4.0},
        {"at_s": 12.0, "op": "join", "node": "j01"},
        {"at_s": 14.0, "op": "pause", "node": "n02", "duration_s": 2.0},
    ],
}


def scenario() -> Scenario:
    return parse_scenario(DOC).with_overrides(rate_scale=0.5)


def test_same_seed_same_trace() -> None:
    first = run_scenario(scenario(), seed=7)
    second = run_scenario(scenario(), seed=7)
    assert first.trace_hash == second.trace_hash
    assert first.summary == second.summary
    assert first.summary["requests"] > 1000


def test_different_seed_different_trace() -> None:
    assert (
        run_scenario(scenario(), seed=7).trace_hash != run_scenario(scenario(), seed=8).trace_hash
    )


def test_trace_does_not_depend_on_the_process_hash_seed() -> None:
    """Set iteration order of strings changes with PYTHONHASHSEED; the trace must not."""
    code = (
        "from tests.sim.test_determinism import scenario\n"
        "from shardline.sim.result import run_scenario\n"
        "print(run_scenario(scenario(), seed=7).trace_hash)\n"
    )
    hashes = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        hashes.add(out.stdout.strip())
    assert len(hashes) == 1, hashes
    assert hashes == {run_scenario(scenario(), seed=7).trace_hash}
