"""bench/residency_hits.py runs (``--quick``, as a user would: ``python -m`` in a subprocess)
and prints a table with the three budgets, hit rates in [0, 1] that grow with the budget
for both policies, and a plan() time for the LRU."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_quick_run_prints_hit_rates_growing_with_budget() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "SHARDLINE_NATIVE": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "bench.residency_hits", "--quick"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,  # it takes well under a second alone; the machine may be contended
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Zipf s=1.0" in out and "lognormal, median 100 MB, sigma 1.0" in out, out
    rows: dict[str, list[tuple[str, float, str]]] = {}
    for line in out.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]
        if len(cells) != 9 or not cells[0].endswith("%"):
            continue
        budget, _, policy, hit_rate, _, plan_mean, *_ = cells
        rows.setdefault(policy, []).append((budget, float(hit_rate), plan_mean))
    assert set(rows) == {"LRU (Residency)", "pin top-k (static)"}, out
    for policy, results in rows.items():
        assert [b for b, _, _ in results] == ["10 %", "25 %", "50 %"], out
        rates = [rate for _, rate, _ in results]
        assert all(0.0 < rate < 1.0 for rate in rates), (policy, rates)
        assert rates == sorted(rates) and len(set(rates)) == 3, (policy, rates)
    for _, _, plan_mean in rows["LRU (Residency)"]:
        assert float(plan_mean) > 0, out
