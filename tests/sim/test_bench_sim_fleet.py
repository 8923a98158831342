"""bench/sim_fleet.py --quick: the fleet scenario (zones, R=3, a zone crash, memory budgets,
lazy loads, hot copies) at 30 nodes x 2 000 models for 10 s of traffic, in a subprocess:
0 failed requests, every check passes, the numbers are printed and written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_sim_fleet_quick(tmp_path: Path) -> None:
    out = tmp_path / "fleet.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.sim_fleet", "--quick", "--json", str(out)],
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for row in ("wall time", "failed", "hit rate", "cold starts", "failure detection",
                "false positives", "check: safety", "check: liveness"):  # fmt: skip
        assert row in proc.stdout, proc.stdout
    numbers = json.loads(out.read_text())
    assert numbers["nodes"] == 30 and numbers["models"] == 2000
    assert numbers["requests"] > 1000
    assert numbers["failed"] == 0, numbers["statuses"]
    assert numbers["false_dead"] == 0
    assert all(numbers["checks"].values()), numbers["check_details"]
    assert numbers["checks"].keys() >= {"safety", "liveness", "residency", "failed_requests"}
    assert numbers["detection_pairs"] > 0 and numbers["detection_missing"] == 0
    assert 0.0 < numbers["hit_rate"] <= 1.0
    assert numbers["cold_starts"] > 0 and numbers["cold_wait_p99_ms"] >= numbers["cold_wait_p50_ms"]


def test_the_sim_client_retries_as_the_sdk_client() -> None:
    """The simulated clients' retry constants are the SDK client's."""
    from shardline.node.sdk import client
    from shardline.sim import serving

    assert serving.MAX_ATTEMPTS == client.MAX_ATTEMPTS
    assert serving.DOWN_FOR_S == client.DOWN_FOR_S
