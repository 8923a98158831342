"""Tests for shardline.workflows.loader: the examples load; broken packages fail with clear
errors."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from shardline.workflows import loader
from shardline.workflows.loader import (
    LoadedWorkflow,
    WorkflowLoadError,
    discover_packages,
    load_package,
    resolve_device,
    sha256_file,
    verify_package,
)
from shardline.workflows.manifest import load_manifest
from shardline.workflows.sdk import Workflow

EXAMPLES = Path(__file__).resolve().parents[3] / "workflows" / "examples"
FRAUD = EXAMPLES / "payment_fraud" / "v1"
RANKING = EXAMPLES / "title_ranking" / "v1"
CPU = torch.device("cpu")


def copy_package(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "pkg"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def edit_toml(package: Path, old: str, new: str) -> None:
    toml = package / "workflow.toml"
    text = toml.read_text()
    assert old in text
    toml.write_text(text.replace(old, new, 1))


def test_discover_packages() -> None:
    found = discover_packages(EXAMPLES)
    rel = [p.relative_to(EXAMPLES).as_posix() for p in found]
    assert rel == ["payment_fraud/v1", "payment_fraud/v2", "title_ranking/v1", "title_ranking/v2"]


@pytest.mark.parametrize(
    "package", discover_packages(EXAMPLES), ids=lambda p: f"{p.parent.name}-{p.name}"
)
def test_examples_load(package: Path) -> None:
    loaded = load_package(package, device=CPU)
    assert isinstance(loaded, LoadedWorkflow)
    assert isinstance(loaded.workflow, Workflow)
    assert loaded.device == CPU
    assert loaded.workflow.device == CPU
    assert loaded.package_dir == package
    assert loaded.manifest.model_key == f"{package.parent.name}@{package.name[1:]}"
    module = type(loaded.workflow).__module__
    assert module.startswith(f"shardline_wf_{package.parent.name}_{package.name[1:]}")


def test_each_load_gets_a_fresh_module() -> None:
    a = load_package(FRAUD, device=CPU).workflow
    b = load_package(FRAUD, device=CPU).workflow
    assert type(a) is not type(b)
    assert type(a).__module__ != type(b).__module__


def test_verify_package_checks_without_importing(tmp_path: Path) -> None:
    pkg = copy_package(FRAUD, tmp_path)
    (pkg / "workflow.py").write_text("raise RuntimeError('imported')\n")
    assert verify_package(pkg).model_key == "payment_fraud@1"


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"shardline" * 1000)
    assert sha256_file(path) == hashlib.sha256(b"shardline" * 1000).hexdigest()


def test_digest_mismatch_is_reported_before_import(tmp_path: Path) -> None:
    pkg = copy_package(FRAUD, tmp_path)
    weights = pkg / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    (pkg / "workflow.py").write_text("raise RuntimeError('must not be imported')\n")
    with pytest.raises(WorkflowLoadError) as info:
        load_package(pkg, device=CPU)
    msg = str(info.value)
    assert msg.startswith(f"{pkg}: weights.safetensors: sha256 mismatch: manifest says ")
    pinned = load_manifest(pkg).weights.sha256
    assert f"manifest says {pinned}, file is {sha256_file(weights)} (" in msg, "full digests"
    assert "workflow.toml" in msg
    assert info.value.package_dir == pkg


def test_missing_data_file(tmp_path: Path) -> None:
    pkg = copy_package(RANKING, tmp_path)
    (pkg / "facts.safetensors").unlink()
    with pytest.raises(WorkflowLoadError, match=r"'facts.safetensors' is missing"):
        load_package(pkg, device=CPU)


def test_data_file_symlink_escaping_package(tmp_path: Path) -> None:
    pkg = copy_package(RANKING, tmp_path)
    outside = tmp_path / "outside.safetensors"
    shutil.move(pkg / "facts.safetensors", outside)
    (pkg / "facts.safetensors").symlink_to(outside)
    with pytest.raises(WorkflowLoadError, match="resolves outside the package"):
        verify_package(pkg)


def test_path_escaping_package_in_manifest(tmp_path: Path) -> None:
    pkg = copy_package(FRAUD, tmp_path)
    edit_toml(pkg, 'path = "weights.safetensors"', 'path = "../weights.safetensors"')
    with pytest.raises(WorkflowLoadError) as info:
        load_package(pkg, device=CPU)
    assert "invalid manifest" in str(info.value)
    assert "weights.path: path must stay inside the package" in str(info.value)


def test_invalid_manifest(tmp_path: Path) -> None:
    pkg = copy_package(FRAUD, tmp_path)
    edit_toml(pkg, "max_batch_size = 64", "max_batch_size = 0")
    with pytest.raises(WorkflowLoadError, match=r"batching\.max_batch_size: must be between"):
        load_package(pkg)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(WorkflowLoadError, match="cannot read manifest"):
        load_package(tmp_path)


def test_missing_entrypoint_class(tmp_path: Path) -> None:
    pkg = copy_package(FRAUD, tmp_path)
    edit_toml(pkg, "workflow.py:FraudWorkflow", "workflow.py:Nope")
    with pytest.raises(WorkflowLoadError, match=r"class 'Nope' not found in workflow\.py"):
        load_package(pkg, device=CPU)


def test_missing_entrypoint_file(tmp_path: Path) -> None:
    pkg = copy_package(FRAUD, tmp_path)
    (pkg / "workflow.py").unlink()
    with pytest.raises(WorkflowLoadError, match=r"entrypoint file 'workflow\.py' is missing"):
        load_package(pkg, device=CPU)


def test_entrypoint_not_a_workflow(tmp_path: Path) -> None:
    pkg = copy_package(FRAUD, tmp_path)
    with (pkg / "workflow.py").open("a") as fh:
        fh.write("\n\nclass NotAWorkflow:\n    pass\n")
    edit_toml(pkg, "workflow.py:FraudWorkflow", "workflow.py:NotAWorkflow")
    not_a_workflow = r"is not a subclass of shardline\.workflows\.sdk\.Workflow"
    with pytest.raises(WorkflowLoadError, match=not_a_workflow):
        load_package(pkg, device=CPU)


def test_import_failure(tmp_path: Path) -> None:
    pkg = copy_package(FRAUD, tmp_path)
    (pkg / "workflow.py").write_text("def broken(:\n")
    with pytest.raises(WorkflowLoadError, match=r"importing workflow\.py failed: SyntaxError"):
        load_package(pkg, device=CPU)


def test_weights_that_fail_to_load(tmp_path: Path) -> None:
    pkg = copy_package(FRAUD, tmp_path)
    old = sha256_file(pkg / "weights.safetensors")
    (pkg / "weights.safetensors").write_bytes(b"not a safetensors file")
    edit_toml(pkg, old, sha256_file(pkg / "weights.safetensors"))
    with pytest.raises(WorkflowLoadError, match=r"weights\.safetensors: cannot load weights"):
        load_package(pkg, device=CPU)


def test_constructor_failure(tmp_path: Path) -> None:
    pkg = copy_package(FRAUD, tmp_path)
    edit_toml(pkg, "review_threshold = 0.2", "review_threshold = 0.9")
    with pytest.raises(WorkflowLoadError, match=r"FraudWorkflow\(...\) raised ValueError"):
        load_package(pkg, device=CPU)


def test_cuda_requested_without_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    pkg = copy_package(FRAUD, tmp_path)
    edit_toml(pkg, 'device = "auto"', 'device = "cuda"')
    with pytest.raises(WorkflowLoadError) as info:
        load_package(pkg)
    assert str(info.value) == f"{pkg}: device 'cuda' requested but CUDA is not available"
    with pytest.raises(WorkflowLoadError, match="manifest requires cuda, but cpu was given"):
        load_package(pkg, device=CPU)


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == CPU
    assert resolve_device("cpu") == CPU
    with pytest.raises(WorkflowLoadError, match="CUDA is not available"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda:0")
    assert resolve_device("cuda") == torch.device("cuda:0")


def test_manifest_cpu_pins_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = copy_package(FRAUD, tmp_path)
    edit_toml(pkg, 'device = "auto"', 'device = "cpu"')
    monkeypatch.setattr(loader, "resolve_device", lambda spec: pytest.fail("not consulted"))
    assert load_package(pkg).device == CPU


@pytest.mark.gpu
def test_loads_on_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    loaded = load_package(RANKING, device=torch.device("cuda:0"))
    assert next(iter(loaded.workflow.weights.values())).device.type == "cuda"


def test_a_package_importing_the_old_sdk_name_is_told_the_new_one(tmp_path: Path) -> None:
    pkg = copy_package(FRAUD, tmp_path)
    (pkg / "workflow.py").write_text("from workflows.sdk import Workflow\n")
    # In a checkout the folder's guard answers; installed, the loader's hint does: both name it.
    with pytest.raises(WorkflowLoadError, match=r"import shardline\.workflows"):
        load_package(pkg, device=CPU)
