"""Where the CLI finds the admin token: --token, $SHARDLINE_ADMIN_TOKEN,
$SHARDLINE_ADMIN_TOKEN_FILE, then STATE/<cluster>/admin-token — never the current
directory — and the lookup can say where it looked."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardline.node.sdk.admin_client import REPO, resolve_token, state_root


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SHARDLINE_ADMIN_TOKEN", "SHARDLINE_ADMIN_TOKEN_FILE", "SHARDLINE_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)


def test_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "admin-token").write_text("from-state\n")
    (tmp_path / "file").write_text("from-file\n")
    assert resolve_token(None, "local", tmp_path).token == "from-state"
    monkeypatch.setenv("SHARDLINE_ADMIN_TOKEN_FILE", str(tmp_path / "file"))
    assert resolve_token(None, "local", tmp_path).token == "from-file"
    monkeypatch.setenv("SHARDLINE_ADMIN_TOKEN", "from-env")
    assert resolve_token(None, "local", tmp_path).source == "$SHARDLINE_ADMIN_TOKEN"
    assert resolve_token("flag", "local", tmp_path).token == "flag"


def test_not_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".state" / "local").mkdir(parents=True)
    (tmp_path / ".state" / "local" / "admin-token").write_text("cwd-token")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SHARDLINE_STATE_DIR", str(tmp_path / "elsewhere"))
    lookup = resolve_token(None, "local")
    assert lookup.token == ""
    where = lookup.where()
    assert "--token" in where and "$SHARDLINE_ADMIN_TOKEN_FILE" in where
    assert str(tmp_path / "elsewhere" / "local" / "admin-token") in where
    monkeypatch.delenv("SHARDLINE_STATE_DIR")
    assert state_root() == REPO / ".state"  # the checkout's, wherever the command runs
