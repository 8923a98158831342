"""Tests for the workflow SDK helpers the example packages share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shardline.workflows.manifest import load_manifest, rewrite_digests
from shardline.workflows.sdk import (
    InputError,
    KeyIndex,
    StaticContext,
    Workflow,
    band,
    concat_rows,
    context_one_hot,
    get_float,
    get_ids,
    get_int,
    get_str,
    hash_ids,
    mean_embedding,
    mlp,
    platt,
    row_ids,
    split_rows,
    stable_hash64,
    top_k,
    unique_in_order,
)

FRAUD = Path(__file__).resolve().parents[3] / "workflows" / "examples" / "payment_fraud" / "v1"


def test_top_k_orders_breaks_ties_and_excludes() -> None:
    ids = np.array([5, 3, 9, 1, 7])
    scores = np.array([0.5, 0.9, 0.5, 0.1, 0.9], dtype=np.float32)
    got_ids, got_scores = top_k(ids, scores, 3)
    assert got_ids.tolist() == [3, 7, 5]
    assert got_scores.dtype == np.float32 and got_ids.dtype == np.int64
    assert top_k(ids, scores, 10, exclude={3, 9})[0].tolist() == [7, 5, 1]
    assert top_k(ids, scores, 2, exclude=np.array([7]))[0].tolist() == [3, 5]
    assert top_k(ids[:0], scores[:0], 3)[0].size == 0


def test_stable_hash_and_key_index() -> None:
    assert stable_hash64("u00042") == stable_hash64("u00042") == int(hash_ids(["u00042"])[0])
    assert stable_hash64("") == -5426141060434712860  # fixed across processes and platforms
    ids = ["a", "b", "c", "d"]
    keys = np.sort(hash_ids(ids))
    index = KeyIndex(keys)
    rows = [index.row(i) for i in ids]
    assert sorted(r for r in rows if r is not None) == [0, 1, 2, 3]
    assert index.row("zzz") is None
    with pytest.raises(ValueError, match="strictly increasing"):
        KeyIndex(keys[::-1])
    table = np.full((4, 3), -1, dtype=np.int32)
    table[rows[0], :2] = [7, 8]
    assert row_ids(index, table, "a").tolist() == [7, 8]
    assert row_ids(index, table, "nobody").size == 0


def test_get_ids() -> None:
    inputs = {"ids": np.array([3, 1, 3, 2, 1], dtype=np.int64)}
    assert get_ids(inputs, "ids", 1, 5, 10).tolist() == [3, 1, 2]
    with pytest.raises(InputError, match=r"ids: id 9 is out of range \[1, 5\]"):
        get_ids({"ids": np.array([1, 9])}, "ids", 1, 5, 10)
    with pytest.raises(InputError, match="ids: at most 2 ids, got 3"):
        get_ids({"ids": np.array([1, 2, 3])}, "ids", 1, 5, 2)
    assert unique_in_order(np.array([2, 2, 1])).tolist() == [2, 1]


def test_scalar_getters() -> None:
    inputs = {"x": np.array(2.5, dtype=np.float32), "n": np.array(3), "s": np.array(" ")}
    assert get_float(inputs, "x", 0.0, 3.0) == 2.5
    with pytest.raises(InputError, match=r"x: must be finite and within \[0, 1\], got 2.5"):
        get_float(inputs, "x", 0.0, 1.0)
    assert get_int(inputs, "n", low=0) == 3
    assert get_int(inputs, "missing", default=4) == 4
    with pytest.raises(InputError, match="missing: required input is missing"):
        get_int(inputs, "missing")
    with pytest.raises(InputError, match="s: must not be empty"):
        get_str(inputs, "s")
    assert get_str(inputs, "s", allow_empty=True) == " "


def test_rows_and_context() -> None:
    parts = [np.ones((2, 3)), np.zeros((0, 3)), np.full((1, 3), 2.0)]
    rows, sizes = concat_rows(parts)
    assert rows.shape == (3, 3) and sizes == [2, 0, 1]
    back = split_rows(rows[:, 0], sizes)
    assert [b.tolist() for b in back] == [[1.0, 1.0], [], [2.0]]
    ctx = StaticContext.from_fields({"user_id": "u", "country": "de", "surface": "s", "x": "1"})
    assert (ctx.get("country"), ctx.get("x"), ctx.get("nope")) == ("de", "1", None)
    vocab = {"country": ["US", "DE", "other"], "device": ["tv", "other"]}
    assert context_one_hot(ctx, vocab).tolist() == [0, 1, 0, 0, 1]
    assert mean_embedding(np.ones((4, 2)), np.zeros(0, dtype=np.int64)).tolist() == [0.0, 0.0]


def test_torch_helpers() -> None:
    net = mlp([4, 8, 2])
    assert [type(m).__name__ for m in net] == ["Linear", "ReLU", "Linear"]
    p = platt(torch.tensor([0.0, 1.0]), 2.0, -2.0)
    assert torch.allclose(p, torch.tensor([1 / (1 + np.e**2), 0.5]))
    assert band(0.6, [(0.5, "hi"), (0.2, "mid")], "lo") == "hi"
    assert band(0.3, [(0.5, "hi"), (0.2, "mid")], "lo") == "mid"
    assert band(0.1, [(0.5, "hi"), (0.2, "mid")], "lo") == "lo"


def test_workflow_base_helpers() -> None:
    manifest = load_manifest(FRAUD)
    wf = Workflow(manifest, {}, FRAUD, torch.device("cpu"))
    readonly = np.arange(3, dtype=np.float32)
    readonly.setflags(write=False)
    tensor = wf.to_device(readonly)
    assert tensor.tolist() == [0.0, 1.0, 2.0] and tensor.device.type == "cpu"
    assert wf.param("threshold", float) == 0.5
    assert wf.param_strings("currencies")[-1] == "other"
    with pytest.raises(ValueError, match=r"params\.threshold must be str"):
        wf.param("threshold", str)
    with pytest.raises(ValueError, match=r"params\.nope is required"):
        wf.param("nope", int)
    with pytest.raises(ValueError, match="not listed in"):
        wf.load_data("weights.safetensors")
    with pytest.raises(NotImplementedError):
        wf.example_request()


def test_rewrite_digests_keeps_layout() -> None:
    text = (FRAUD / "workflow.toml").read_text()
    new = rewrite_digests(text, {"weights.safetensors": "ef" * 32, "other": "00" * 32})
    assert new.count("\n") == text.count("\n")
    assert f'sha256 = "{"ef" * 32}"' in new
    assert new.replace("ef" * 32, load_manifest(FRAUD).weights.sha256) == text
