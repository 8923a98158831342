"""Reproducibility of the example training: retraining gives the committed digests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_training_reproduces_committed_digests() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "workflows.examples.train", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: trained in" in result.stdout
