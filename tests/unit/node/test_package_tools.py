"""``shardline package hash|check DIR``: pin digests in workflow.toml, validate a package
without deploying it (through the real command, in a subprocess)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from shardline.node.ops.package_tools import PackageError, rewrite_digests, verify_digests
from shardline.workflows.loader import sha256_file
from tests.procs import EXAMPLES, REPO

FRAUD_V1 = EXAMPLES / "payment_fraud" / "v1"


def shardline(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardline", *args],
        cwd=REPO, capture_output=True, text=True, timeout=180, check=False,
        env={**os.environ, "COLUMNS": "80"},
    )  # fmt: skip


def copy_package(tmp_path: Path) -> Path:
    dst = tmp_path / "fraud"
    shutil.copytree(FRAUD_V1, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def test_hash_writes_the_digests_and_keeps_comments(tmp_path: Path) -> None:
    pkg = copy_package(tmp_path)
    toml = pkg / "workflow.toml"
    real = sha256_file(pkg / "weights.safetensors")
    text = toml.read_text().replace(real, "0" * 64)
    text = text.replace("[weights]", "# the model's weights\n[weights]  # pinned")
    toml.write_text(text)
    done = shardline("package", "hash", str(pkg))
    assert done.returncode == 0, done.stderr
    assert f"weights.safetensors: sha256 {real} (updated)" in done.stdout
    written = toml.read_text()
    assert "# the model's weights\n[weights]  # pinned\n" in written
    assert tomllib.loads(written)["weights"]["sha256"] == real
    assert written == text.replace("0" * 64, real)  # nothing else changed
    again = shardline("package", "hash", str(pkg))
    assert again.returncode == 0 and "up to date" in again.stdout


def test_hash_adds_a_missing_sha256_line() -> None:
    text = '[weights]\npath = "w.safetensors"\n\n[[files]]\npath = "vocab.txt"\nsha256 = "x"\n'
    out = rewrite_digests(text, {"w.safetensors": "a" * 64, "vocab.txt": "b" * 64})
    parsed = tomllib.loads(out)
    assert parsed["weights"]["sha256"] == "a" * 64
    assert parsed["files"][0]["sha256"] == "b" * 64


def test_digest_mismatch_names_both_full_digests(tmp_path: Path) -> None:
    pkg = copy_package(tmp_path)
    real = sha256_file(pkg / "weights.safetensors")
    toml = pkg / "workflow.toml"
    toml.write_text(toml.read_text().replace(real, "f" * 64))
    with pytest.raises(PackageError) as err:
        verify_digests(pkg)
    assert "f" * 64 in str(err.value) and real in str(err.value)
    done = shardline("package", "check", str(pkg))
    assert done.returncode == 1
    assert real in done.stderr and "f" * 64 in done.stderr
    assert "Traceback" not in done.stderr


def test_check_loads_and_runs_the_example_request() -> None:
    done = shardline("package", "check", str(FRAUD_V1))
    assert done.returncode == 0, done.stderr
    assert "payment_fraud@1 passes" in done.stdout
    assert "ok  example request" in done.stdout
    assert re.search(r"probability = [\d.]+", done.stdout)


def test_check_reports_a_broken_entrypoint_in_one_line(tmp_path: Path) -> None:
    pkg = copy_package(tmp_path)
    code = pkg / "workflow.py"
    code.write_text(code.read_text() + "\nraise ImportError('a missing dependency')\n")
    done = shardline("package", "check", str(pkg))
    assert done.returncode == 1
    assert "a missing dependency" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_check_warns_when_there_is_no_example_request(tmp_path: Path) -> None:
    pkg = copy_package(tmp_path)
    code = pkg / "workflow.py"
    code.write_text(
        code.read_text()
        + "\nfrom shardline.workflows.sdk import Workflow as _Base\n"
        + "FraudWorkflow.example_request = _Base.example_request  # type: ignore\n"
    )
    done = shardline("package", "check", str(pkg))
    assert done.returncode == 0, done.stderr
    assert "no example_request()" in done.stderr
