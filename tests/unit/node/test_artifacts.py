"""Packing and unpacking deployed packages: safe on every Python the project supports.

Python before 3.11.4 (Debian 12's system Python is 3.11.2) has no tarfile extraction
filters; `unpack` used ``filter="data"`` and every deploy failed there with UNKNOWN.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from shardline.node.cluster.artifacts import ArtifactError, pack, unpack
from tests.procs import EXAMPLES


def _archive(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


@pytest.mark.parametrize("has_filters", [True, False])
def test_a_package_round_trips_with_and_without_extraction_filters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, has_filters: bool
) -> None:
    if not has_filters:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    src = EXAMPLES / "payment_fraud" / "v1"
    out = unpack(pack(src), tmp_path / "out")
    for name in ("workflow.toml", "workflow.py", "weights.safetensors"):
        assert (out / name).read_bytes() == (src / name).read_bytes()


@pytest.mark.parametrize("has_filters", [True, False])
def test_links_and_paths_outside_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, has_filters: bool
) -> None:
    if not has_filters:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    link = tarfile.TarInfo("weights.safetensors")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(ArtifactError, match="only files and directories"):
        unpack(_archive((link, None)), tmp_path / "a")
    escape = tarfile.TarInfo("../escaped.txt")
    escape.size = 2
    with pytest.raises(ArtifactError, match="outside the package"):
        unpack(_archive((escape, b"hi")), tmp_path / "b")
    assert not (tmp_path / "escaped.txt").exists()
