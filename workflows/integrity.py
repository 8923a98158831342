"""A workflow package's integrity, checked without importing its code or torch.

`verify_package` validates the manifest and every pinned file (weights, data files)
against its sha256 — what a node checks before it loads a package, what `shardline deploy`
and `shardline package check` check before anything leaves the machine. Light enough for
the CLI and the artifact store: no torch, no workflow code.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from shardline.workflows.manifest import (
    MANIFEST_FILE,
    ManifestError,
    WorkflowManifest,
    load_manifest,
)

_CHUNK_BYTES = 1 << 20


class WorkflowLoadError(Exception):
    """A workflow package could not be verified or loaded."""

    def __init__(self, package_dir: Path | str, problem: str) -> None:
        self.package_dir = Path(package_dir)
        self.problem = problem
        super().__init__(f"{package_dir}: {problem}")


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file's contents."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def package_file(package_dir: Path, rel: str, what: str) -> Path:
    """`package_dir/rel` as a regular file whose real path stays inside the package."""
    root = package_dir.resolve()
    full = (package_dir / rel).resolve()
    if not full.is_relative_to(root):
        raise WorkflowLoadError(package_dir, f"{what} {rel!r} resolves outside the package")
    if not full.is_file():
        raise WorkflowLoadError(package_dir, f"{what} {rel!r} is missing (or not a file)")
    return full


def verify_package(package_dir: Path) -> WorkflowManifest:
    """Validate the manifest and every pinned file's sha256; imports no code."""
    package_dir = Path(package_dir)
    try:
        manifest = load_manifest(package_dir)
    except ManifestError as exc:
        raise WorkflowLoadError(package_dir, f"invalid manifest: {exc}") from None
    for ref in (manifest.weights, *manifest.files):
        full = package_file(package_dir, ref.path, "file")
        actual = sha256_file(full)
        if actual != ref.sha256:
            raise WorkflowLoadError(
                package_dir,
                f"{ref.path}: sha256 mismatch: manifest says {ref.sha256}, "
                f"file is {actual} (if this file is the one to ship, put its sha256 in "
                f"{MANIFEST_FILE}: `shardline package hash {package_dir}` does it; "
                "otherwise restore the file the manifest pins)",
            )
    package_file(package_dir, manifest.entrypoint_file, "entrypoint file")
    return manifest


def discover_packages(root: Path) -> list[Path]:
    """Every directory at or below `root` holding a `workflow.toml`, sorted."""
    return sorted(p.parent for p in Path(root).rglob(MANIFEST_FILE) if p.is_file())
