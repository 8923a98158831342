"""``shardline package hash|check DIR``: pin a workflow package's digests, and validate a
package without deploying it.

``hash`` computes the sha256 of the weights and every ``[[files]]`` entry and writes them
into ``workflow.toml`` in place (comments and layout kept; a missing ``sha256`` line is
added after the entry's ``path``). ``check`` does what a node does before serving a
package — manifest, digests, weights, entrypoint import, the workflow's constructor — and
runs the workflow's ``example_request()`` through it when it has one.

Reading manifests and digests needs no torch; ``check`` imports torch (it runs the model).
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardline.workflows.integrity import (
    WorkflowLoadError,
    package_file,
    sha256_file,
    verify_package,
)
from shardline.workflows.manifest import (
    MANIFEST_FILE,
    ManifestError,
    WorkflowManifest,
    rewrite_digests,
)


class PackageError(Exception):
    """A package that cannot be hashed or does not pass the check; one line."""


def _inside(package_dir: Path, rel: str) -> Path:
    try:
        return package_file(package_dir, rel, "file")
    except WorkflowLoadError as exc:
        raise PackageError(exc.problem) from None


def pinned_paths(text: str, where: str = MANIFEST_FILE) -> list[str]:
    """The paths of ``[weights]`` and every ``[[files]]`` entry of a workflow.toml text
    (read without validating the digests, which may still be placeholders)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PackageError(f"{where}: not valid TOML: {exc}") from None
    refs: list[Any] = [raw.get("weights"), *(raw.get("files") or [])]
    paths = []
    for ref in refs:
        if not isinstance(ref, dict) or not isinstance(ref.get("path"), str):
            raise PackageError(f'{where}: [weights] and each [[files]] need a path = "..."')
        paths.append(ref["path"])
    return paths


@dataclass
class HashResult:
    digests: dict[str, str]
    changed: list[str]


def hash_package(package_dir: Path) -> HashResult:
    """Compute the pinned files' sha256 and write them into ``workflow.toml``."""
    toml = Path(package_dir) / MANIFEST_FILE
    try:
        text = toml.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PackageError(f"cannot read {toml}: {exc}") from None
    digests = {rel: sha256_file(_inside(Path(package_dir), rel)) for rel in pinned_paths(text)}
    before = _current_digests(text)
    new_text = rewrite_digests(text, digests)
    try:
        load_manifest_text(new_text, str(toml))
    except ManifestError as exc:
        raise PackageError(f"{toml}: {exc} (digests not written)") from None
    if new_text != text:
        toml.write_text(new_text, encoding="utf-8")
    changed = [rel for rel, d in digests.items() if before.get(rel) != d]
    return HashResult(digests, changed)


def _current_digests(text: str) -> dict[str, str]:
    raw = tomllib.loads(text)
    out = {}
    for ref in [raw.get("weights"), *(raw.get("files") or [])]:
        if isinstance(ref, dict) and isinstance(ref.get("path"), str):
            out[ref["path"]] = str(ref.get("sha256", ""))
    return out


def load_manifest_text(text: str, where: str) -> WorkflowManifest:
    return WorkflowManifest.from_toml(text, where)


def verify_digests(package_dir: Path) -> WorkflowManifest:
    """The manifest, after checking every pinned file's sha256 (both digests in full on a
    mismatch) and that the entrypoint file exists; imports no code and no torch."""
    try:
        return verify_package(Path(package_dir))
    except WorkflowLoadError as exc:
        raise PackageError(exc.problem) from None


@dataclass
class CheckReport:
    manifest: WorkflowManifest
    device: str
    steps: list[tuple[str, str]] = field(default_factory=list)  # (what, detail)
    example_outputs: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)


def check_package(package_dir: Path, say: Callable[[str, str], None] | None = None) -> CheckReport:
    """Everything a node does with a package before it serves it, on this machine's CPU
    (or GPU for ``device = "cuda"``); raises ``PackageError`` with the first problem."""
    from shardline.workflows.loader import WorkflowLoadError, load_package
    from shardline.workflows.sdk import example_batch, run_batch

    package_dir = Path(package_dir)

    def step(what: str, detail: str) -> None:
        report.steps.append((what, detail))
        if say is not None:
            say(what, detail)

    manifest = verify_digests(package_dir)
    report = CheckReport(manifest, device="")
    step("manifest", f"{manifest.model_key}: {len(manifest.inputs)} inputs, "
         f"{len(manifest.outputs)} outputs, device {manifest.device}")  # fmt: skip
    step("digests", f"{1 + len(manifest.files)} files match their sha256")
    started = time.perf_counter()
    try:
        loaded = load_package(package_dir)
    except WorkflowLoadError as exc:
        raise PackageError(str(exc)) from None
    report.device = str(loaded.device)
    step("load", f"weights, {manifest.entrypoint} imported and constructed on {loaded.device} "
         f"in {1000 * (time.perf_counter() - started):.0f} ms")  # fmt: skip
    try:
        batch = example_batch(loaded.workflow)
    except NotImplementedError:
        report.warnings.append(
            f"{manifest.entrypoint_class} has no example_request(): nodes warm a model with "
            "it before serving it; implement it (a valid request) so the package can be deployed"
        )
        return report
    except Exception as exc:
        raise PackageError(f"example_request() raised {exc!r}") from None
    started = time.perf_counter()
    try:
        (outputs,) = run_batch(loaded.workflow, batch)
    except Exception as exc:
        raise PackageError(f"the example request failed: {type(exc).__name__}: {exc}") from None
    report.example_outputs = dict(outputs)
    step("example request", f"answered in {1000 * (time.perf_counter() - started):.1f} ms, "
         "outputs match the declared schema")  # fmt: skip
    return report
