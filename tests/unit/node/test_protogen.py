"""The committed generated code matches the .proto files (fails when not regenerated)."""

from __future__ import annotations

from shardline.node.ops import protogen


def test_generated_code_is_current() -> None:
    assert protogen.stale_files() == [], "run `python -m node.protogen` and commit the result"
