"""The cluster's artifact store: where deployed workflow packages live.

``ArtifactStore`` is the interface (an object store can implement it later);
``DirectoryStore`` keeps packages under ``<root>/<name>/<version>/`` on a filesystem every
node can read (a local disk for ``shardline up``, a shared volume in a deployment). A
put copies into a temporary directory, verifies every digest of the copy against its
manifest, then renames it into place, so a half-copied package is never visible. A
version is immutable: putting different content under an existing version is refused.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from shardline.workflows.integrity import sha256_file, verify_package
from shardline.workflows.manifest import WorkflowManifest

MAX_PACKAGE_BYTES = 256 * 1024 * 1024


class ArtifactError(ValueError):
    """A package could not be stored (invalid, conflicting, unreadable)."""


class ArtifactStore(Protocol):
    def put(self, package_dir: Path) -> tuple[WorkflowManifest, str]:
        """Verify and store a package; returns its manifest and artifact URI."""
        ...

    def local_path(self, uri: str) -> Path:
        """A local directory holding the package behind ``uri``."""
        ...


def _fingerprint(package_dir: Path) -> dict[str, str]:
    return {
        str(p.relative_to(package_dir)): sha256_file(p)
        for p in sorted(package_dir.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


class DirectoryStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def put(self, package_dir: Path) -> tuple[WorkflowManifest, str]:
        try:
            manifest = verify_package(package_dir)
        except Exception as exc:
            raise ArtifactError(f"invalid package {package_dir}: {exc}") from exc
        target = self.root / manifest.name / manifest.version
        if target.exists():
            if _fingerprint(target) != _fingerprint(package_dir):
                raise ArtifactError(
                    f"{manifest.model_key} is already deployed with different content; "
                    "bump the version"
                )
            return manifest, target.as_uri()
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{manifest.version}-", dir=target.parent))
        try:
            copy = staging / "pkg"
            shutil.copytree(package_dir, copy, ignore=shutil.ignore_patterns("__pycache__"))
            verify_package(copy)  # the copy, not the source, is what nodes will load
            copy.rename(target)
        except FileExistsError:
            pass  # a concurrent deploy of the same version won the rename
        except Exception as exc:
            raise ArtifactError(f"storing {manifest.model_key} failed: {exc}") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return manifest, target.as_uri()

    def local_path(self, uri: str) -> Path:
        return artifact_path({"artifact_uri": uri})


def artifact_path(doc: Any) -> Path:
    """The local directory of a workflow document's ``artifact_uri`` (file:// or a path)."""
    uri = doc.get("artifact_uri") if isinstance(doc, dict) else None
    if not isinstance(uri, str) or not uri:
        raise ValueError("workflow document has no artifact_uri")
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path if parsed.scheme else uri))
    raise ValueError(f"unsupported artifact store {parsed.scheme!r} in {uri!r}")


def pack(package_dir: Path) -> bytes:
    """A package directory as a gzip'd tar (what ``shardline deploy`` sends)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(package_dir.rglob("*")):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            tar.add(path, arcname=str(path.relative_to(package_dir)))
    data = buf.getvalue()
    if len(data) > MAX_PACKAGE_BYTES:
        raise ArtifactError(f"package is {len(data)} bytes; the limit is {MAX_PACKAGE_BYTES}")
    return data


def _safe_members(tar: tarfile.TarFile, into: Path) -> list[tarfile.TarInfo]:
    """Every member of a package archive, checked: only regular files and directories, each
    landing inside ``into``; modes without set-id bits (what tarfile's ``data`` filter does,
    which Python before 3.11.4 — Debian 12's 3.11.2 — lacks)."""
    root = into.resolve()
    members = []
    for member in tar.getmembers():
        if not (member.isfile() or member.isdir()):
            raise ArtifactError(f"{member.name!r}: a package holds only files and directories")
        if Path(member.name).is_absolute() or not (into / member.name).resolve().is_relative_to(
            root
        ):
            raise ArtifactError(f"{member.name!r} would land outside the package directory")
        member.mode &= 0o755
        members.append(member)
    return members


def unpack(data: bytes, into: Path) -> Path:
    """Extract a packed package safely (no links, no paths outside ``into``)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = _safe_members(tar, into)
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: belt and braces
                tar.extractall(into, members=members, filter="data")
            else:
                tar.extractall(into, members=members)  # members checked above
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArtifactError(f"not a valid package archive: {exc}") from exc
    return into
