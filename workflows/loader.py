"""Loading workflow packages: verify the manifest and every digest, then import and build.

`verify_package` (``shardline.workflows.integrity``, torch-free) reads the manifest and checks every
pinned file (weights, data files) against its sha256 without importing any code;
`load_package` does that first, then loads
the weights with safetensors onto the chosen device, imports the entrypoint module by file
path under a unique module name and instantiates the `Workflow` subclass. Every failure is a
`WorkflowLoadError` naming the package directory and the problem.
"""

from __future__ import annotations

import importlib.util
import itertools
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from safetensors.torch import load_file as load_torch_file

from shardline.workflows.integrity import (
    WorkflowLoadError,
    discover_packages,
    package_file,
    sha256_file,
    verify_package,
)
from shardline.workflows.manifest import WorkflowManifest
from shardline.workflows.sdk import Workflow

_module_lock = threading.Lock()
_module_counter = itertools.count(2)


@dataclass(frozen=True)
class LoadedWorkflow:
    """A verified, instantiated workflow and where it runs."""

    manifest: WorkflowManifest
    workflow: Workflow
    package_dir: Path
    device: torch.device
    footprint_bytes: int = 0
    """Bytes its weights take once loaded (distinct tensor storages: held once, not twice)."""


def tensor_bytes(tensors: Any) -> int:
    """The bytes of the distinct storages behind a mapping (or sequence) of tensors."""
    values = tensors.values() if isinstance(tensors, dict) else tensors
    seen: dict[int, int] = {}
    for t in values:
        if isinstance(t, torch.Tensor):
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def resolve_device(spec: str) -> torch.device:
    """`auto` -> cuda:0 when CUDA is available, else cpu; `cuda` without CUDA is an error."""
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if spec == "cuda":
        if not torch.cuda.is_available():
            raise WorkflowLoadError("<device>", "device 'cuda' requested but CUDA is not available")
        return torch.device("cuda:0")
    raise WorkflowLoadError("<device>", f"unknown device spec {spec!r}")


def _choose_device(package_dir: Path, spec: str, device: torch.device | None) -> torch.device:
    """The manifest's `cpu` pins cpu; `cuda` needs a CUDA device; `auto` takes `device`."""
    try:
        if spec == "cpu":
            return torch.device("cpu")
        if device is None:
            return resolve_device(spec)
        if spec == "cuda" and device.type != "cuda":
            raise WorkflowLoadError(package_dir, f"manifest requires cuda, but {device} was given")
        return device
    except WorkflowLoadError as exc:
        raise WorkflowLoadError(package_dir, exc.problem) from None


def _module_name(manifest: WorkflowManifest) -> str:
    base = "shardline_wf_" + re.sub(r"\W", "_", f"{manifest.name}_{manifest.version}")
    name = base
    while name in sys.modules:
        name = f"{base}_{next(_module_counter)}"
    return name


def import_entrypoint(package_dir: Path, manifest: WorkflowManifest) -> type[Workflow]:
    """Import the entrypoint file under a unique module name; return its Workflow class."""
    package_dir = Path(package_dir)
    path = package_file(package_dir, manifest.entrypoint_file, "entrypoint file")
    with _module_lock:
        name = _module_name(manifest)
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise WorkflowLoadError(package_dir, f"cannot import {manifest.entrypoint_file}")
        module: ModuleType = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            hint = ""
            if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in (
                "workflows",
                "node",
                "router",
                "membership",
            ):
                hint = (
                    f" (shardline installs under one import name: import "
                    f"shardline.{exc.name}, e.g. `from shardline.workflows.sdk import Workflow`)"
                )
            raise WorkflowLoadError(
                package_dir, f"importing {manifest.entrypoint_file} failed: {exc!r}{hint}"
            ) from exc
    cls = getattr(module, manifest.entrypoint_class, None)
    if cls is None:
        raise WorkflowLoadError(
            package_dir,
            f"entrypoint class {manifest.entrypoint_class!r} not found in "
            f"{manifest.entrypoint_file}",
        )
    if not (isinstance(cls, type) and issubclass(cls, Workflow)) or cls is Workflow:
        raise WorkflowLoadError(
            package_dir,
            f"entrypoint {manifest.entrypoint!r} is not a subclass of "
            "shardline.workflows.sdk.Workflow",
        )
    return cls


def load_package(package_dir: Path, device: torch.device | None = None) -> LoadedWorkflow:
    """Verify, then load weights, import the entrypoint and instantiate the workflow.

    `device` is the node's choice for `device = "auto"` manifests (default: `resolve_device`);
    a manifest saying `cpu` always runs on cpu, one saying `cuda` needs a CUDA device.
    """
    package_dir = Path(package_dir)
    manifest = verify_package(package_dir)
    chosen = _choose_device(package_dir, manifest.device, device)
    weights_path = package_dir / manifest.weights.path
    try:
        weights = load_torch_file(str(weights_path), device=str(chosen))
    except Exception as exc:
        raise WorkflowLoadError(
            package_dir, f"{manifest.weights.path}: cannot load weights: {exc}"
        ) from exc
    cls = import_entrypoint(package_dir, manifest)
    try:
        workflow = cls(manifest, weights, package_dir, chosen)
    except Exception as exc:
        raise WorkflowLoadError(
            package_dir, f"{manifest.entrypoint_class}(...) raised {exc!r}"
        ) from exc
    return LoadedWorkflow(
        manifest=manifest,
        workflow=workflow,
        package_dir=package_dir,
        device=chosen,
        footprint_bytes=tensor_bytes(weights),
    )


__all__ = [
    "LoadedWorkflow",
    "WorkflowLoadError",
    "discover_packages",
    "import_entrypoint",
    "load_package",
    "package_file",
    "resolve_device",
    "sha256_file",
    "verify_package",
]
