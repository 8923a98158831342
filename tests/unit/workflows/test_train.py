"""The example training check: portable across CPUs, and still able to fail.

Retraining is not bit-reproducible across CPUs (kernels differ by instruction set), so
`train --check` compares metrics and probe outputs within stated tolerances and keeps the
sha256s as the package integrity check. PyTorch's portable kernels
(``ATEN_CPU_CAPABILITY=default``) stand in for another CPU: they change the retrained bytes
on every machine with SIMD kernels, as a different CPU does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[3]


def run_check(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardline.workflows.examples.train", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
        env={**os.environ, **env},
    )


@pytest.mark.slow
@pytest.mark.parametrize("capability", ["", "default"])
def test_training_check_passes_on_any_cpu_kernels(capability: str) -> None:
    result = run_check(ATEN_CPU_CAPABILITY=capability) if capability else run_check()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: trained in" in result.stdout
    for package in ("payment_fraud/v1", "payment_fraud/v2", "title_ranking/v1"):
        assert f"{package}: probe outputs" in result.stdout
        assert f"{package}: test_auc" in result.stdout or "pairwise_accuracy" in result.stdout


@pytest.mark.slow
def test_training_check_fails_for_other_weights_and_tampered_files(tmp_path: Path) -> None:
    from shardline.workflows.examples import train

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        results = train.train_models()
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    fraud = next(r for r in results if r.rel == "payment_fraud/v1")
    assert train.check([fraud]) == []
    # A model trained differently (weights scaled): outputs and metric move, and it fails.
    scaled = {k: v * 3.0 if k.startswith("model.") else v for k, v in fraud.weights.items()}
    other = train.Trained(
        fraud.rel, scaled, None, fraud.metric_name, fraud.metric + 0.05, fraud.probe
    )
    failures = train.check([other])
    assert any("probe outputs differ" in f for f in failures), failures
    assert any("retrained test_auc" in f for f in failures), failures
    # A committed file that no longer matches its pinned sha256 is reported with both digests.
    shutil.copytree(train.EXAMPLES_DIR / "payment_fraud", tmp_path / "payment_fraud")
    weights = tmp_path / "payment_fraud" / "v1" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    assert train.check_integrity("payment_fraud/v1", tmp_path) != []
    assert train.check_integrity("payment_fraud/v1") == []
