"""Tests for the example workflows: schemas, ranking rules, batching invariance, usefulness."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from shardline.workflows.examples import synthetic
from shardline.workflows.loader import discover_packages, load_package
from shardline.workflows.sdk import (
    Array,
    ContextLike,
    InputError,
    Inputs,
    StaticContext,
    Workflow,
    real_ids,
    run_batch,
    stable_hash64,
)

EXAMPLES = Path(__file__).resolve().parents[3] / "workflows" / "examples"
RANKING = ["title_ranking@1", "title_ranking@2"]
FRAUD = ["payment_fraud@1", "payment_fraud@2"]


@pytest.fixture(scope="module")
def loaded() -> dict[str, Workflow]:
    cpu = torch.device("cpu")
    out = {}
    for package in discover_packages(EXAMPLES):
        lw = load_package(package, device=cpu)
        out[lw.manifest.model_key] = lw.workflow
    return out


@pytest.fixture(scope="module")
def world() -> synthetic.TitleWorld:
    return synthetic.title_world()


def auc(labels: Array, scores: Array) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    pos, neg = scores[labels > 0.5], scores[labels <= 0.5]
    neg_sorted = np.sort(neg)
    below = np.searchsorted(neg_sorted, pos, side="left")
    ties = np.searchsorted(neg_sorted, pos, side="right") - below
    return float((below + 0.5 * ties).sum() / (pos.size * neg.size))


def forward_values(raw: list[Any]) -> list[Array]:
    return [np.atleast_1d(np.asarray(getattr(r, "scores", r), dtype=np.float64)) for r in raw]


def ranking_requests(world: synthetic.TitleWorld) -> list[tuple[ContextLike, Inputs]]:
    """Known users (finished titles among the candidates), a cold-start user, varied sizes."""
    rng = np.random.default_rng(5)
    with_finished = np.flatnonzero((world.user_finished >= 0).sum(axis=1) >= 3)
    requests: list[tuple[ContextLike, Inputs]] = []
    for i, size in enumerate([0, 1, 3, 12, 40, 250, 1000]):
        row = int(with_finished[i])
        finished = real_ids(world.user_finished[row]).astype(np.int64)
        others = rng.choice(np.arange(1, synthetic.N_TITLES + 1), size=size, replace=False)
        candidates = np.concatenate([finished, others])[:size]
        ctx = StaticContext(world.user_ids[row], country="DE", device="mobile", surface="home")
        requests.append((ctx, {"candidates": candidates, "k": np.array(7 + i, dtype=np.int64)}))
    cold = StaticContext("never-seen-user", country="zz", device="fridge")
    requests.append((cold, {"candidates": np.arange(1, 30, dtype=np.int64)}))
    return requests


def fraud_requests(columns: dict[str, Array], rows: range) -> list[tuple[ContextLike, Inputs]]:
    ctx = StaticContext("u1", country="US", device="web", surface="checkout")
    return [(ctx, {name: np.array(col[i]) for name, col in columns.items()}) for i in rows]


@pytest.mark.parametrize("key", RANKING + FRAUD)
def test_example_request_end_to_end(loaded: dict[str, Workflow], key: str) -> None:
    workflow = loaded[key]
    fields, inputs = workflow.example_request()
    assert fields["user_id"]
    workflow.manifest.check_inputs(inputs)
    ctx = StaticContext.from_fields(fields)
    prepared = workflow.preprocess(ctx, inputs)
    with torch.inference_mode():
        (raw,) = workflow.forward([prepared])
    outputs = workflow.postprocess(ctx, inputs, raw)
    workflow.manifest.check_outputs(outputs)
    assert workflow.forward([]) == []


@pytest.mark.parametrize("key", RANKING)
def test_ranking_batch_respects_rules(
    loaded: dict[str, Workflow], world: synthetic.TitleWorld, key: str
) -> None:
    requests = ranking_requests(world)
    outputs = run_batch(loaded[key], requests)  # checks the output schema too
    dropped = 0
    for (ctx, inputs), out in zip(requests, outputs, strict=True):
        ids, scores = out["title_ids"], out["scores"]
        row = np.searchsorted(world.user_keys, stable_hash64(ctx.user_id))
        known = row < synthetic.N_USERS and world.user_ids[row] == ctx.user_id
        finished = set(real_ids(world.user_finished[row]).tolist()) if known else set()
        candidates = set(inputs["candidates"].tolist())
        k = int(inputs["k"]) if "k" in inputs else 10
        assert not set(ids.tolist()) & finished
        assert set(ids.tolist()) <= candidates
        assert len(set(ids.tolist())) == len(ids) == min(k, len(candidates - finished))
        assert np.all(np.diff(scores) <= 0)
        dropped += len(candidates & finished)
    assert dropped > 0  # the finished-title rule was actually exercised


@pytest.mark.parametrize("key", RANKING + FRAUD)
def test_batching_does_not_change_answers(
    loaded: dict[str, Workflow], world: synthetic.TitleWorld, key: str
) -> None:
    workflow = loaded[key]
    if key in RANKING:
        requests = ranking_requests(world)
    else:
        columns, _ = synthetic.transactions(40, seed=3)
        requests = fraud_requests(columns, range(40))
    prepared = [workflow.preprocess(ctx, inputs) for ctx, inputs in requests]
    with torch.inference_mode():
        batched = forward_values(workflow.forward(prepared))
        single = [forward_values(workflow.forward([p]))[0] for p in prepared]
    for b, s in zip(batched, single, strict=True):
        np.testing.assert_allclose(b, s, rtol=0, atol=1e-5)


@pytest.mark.parametrize("key", RANKING)
def test_ranking_model_is_useful(
    loaded: dict[str, Workflow], world: synthetic.TitleWorld, key: str
) -> None:
    """On fresh requests the viewed title outscores random ones far more often than chance."""
    fresh = synthetic.ranking_requests(world, seed=777, per_user=1)
    rows = range(0, synthetic.N_USERS, 5)
    workflow = loaded[key]
    prepared = []
    for r in rows:
        user = int(fresh["users"][r])
        ctx = StaticContext(
            world.user_ids[user],
            country=synthetic.COUNTRIES[int(fresh["countries"][r])],
            device=synthetic.DEVICES[int(fresh["devices"][r])],
        )
        candidates = fresh["candidates"][r]  # column 0 is the viewed title
        if np.unique(candidates).size == candidates.size:  # no repeats to drop
            prepared.append(workflow.preprocess(ctx, {"candidates": candidates}))
    with torch.inference_mode():
        scores = np.stack(forward_values(workflow.forward(prepared)))
    accuracy = float((scores[:, :1] > scores[:, 1:]).mean())
    assert accuracy > 0.7, accuracy


@pytest.mark.parametrize("key", RANKING)
def test_ranking_input_errors(loaded: dict[str, Workflow], key: str) -> None:
    workflow = loaded[key]
    ctx = StaticContext("u1")
    bad: list[tuple[dict[str, Any], str, str]] = [
        ({"candidates": np.array([1, 0])}, "candidates", "out of range"),
        ({"candidates": np.array([1001])}, "candidates", "out of range"),
        ({"candidates": np.ones(1001, dtype=np.int64)}, "candidates", "at most 1000"),
        ({"candidates": np.array([1, 2], dtype=np.int32)}, "candidates", "expected int64"),
        ({"candidates": np.array(3)}, "candidates", r"shape \[-1\]"),
        ({"candidates": np.array([1]), "k": np.array(0)}, "k", r"within \[1, 100\]"),
        ({"candidates": np.array([1]), "k": np.array([3])}, "k", "expected int64 of shape"),
        ({}, "candidates", "required input is missing"),
        ({"candidates": np.array([1]), "extra": np.array(1)}, "extra", "unknown input"),
    ]
    for inputs, field, message in bad:
        with pytest.raises(InputError, match=message) as info:
            workflow.check_inputs(inputs)  # schema first, as the node does
            workflow.preprocess(ctx, inputs)
        assert info.value.field == field
        assert str(info.value).startswith(field)


@pytest.mark.parametrize("key", RANKING)
def test_ranking_dedupes_and_defaults_k(loaded: dict[str, Workflow], key: str) -> None:
    ctx = StaticContext("cold-user", country="US", device="tv")
    candidates = np.array([5, 5, 9, 9, 9, *range(20, 40)], dtype=np.int64)
    (out,) = run_batch(loaded[key], [(ctx, {"candidates": candidates})])
    assert len(out["title_ids"]) == 10
    assert len(set(out["title_ids"].tolist())) == 10


@pytest.mark.parametrize("key", FRAUD)
def test_fraud_model_is_useful_and_calibrated(loaded: dict[str, Workflow], key: str) -> None:
    columns, labels = synthetic.transactions(4000, seed=2024)
    workflow = loaded[key]
    requests = fraud_requests(columns, range(len(labels)))
    prepared = [workflow.preprocess(ctx, inputs) for ctx, inputs in requests]
    probabilities: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(prepared), 64):
            probabilities.extend(workflow.forward(prepared[start : start + 64]))
    p = np.array(probabilities)
    assert auc(labels, p) > 0.8
    assert abs(p.mean() - labels.mean()) < 0.03


@pytest.mark.parametrize("key", FRAUD)
def test_fraud_decisions_follow_thresholds(loaded: dict[str, Workflow], key: str) -> None:
    workflow = loaded[key]
    columns, _ = synthetic.transactions(300, seed=9)
    outputs = run_batch(workflow, fraud_requests(columns, range(300)))
    threshold = workflow.params["threshold"]
    review = workflow.params["review_threshold"]
    seen = set()
    for out in outputs:
        p, decision = float(out["probability"]), str(out["decision"])
        expected = "decline" if p >= threshold else "review" if p >= review else "approve"
        assert decision == expected
        seen.add(decision)
    assert seen == {"approve", "review", "decline"}


@pytest.mark.parametrize("key", FRAUD)
def test_fraud_currency_buckets(loaded: dict[str, Workflow], key: str) -> None:
    workflow = loaded[key]
    fields, inputs = workflow.example_request()
    ctx = StaticContext.from_fields(fields)

    def prob(currency: str) -> float:
        (out,) = run_batch(workflow, [(ctx, {**inputs, "currency": np.array(currency)})])
        return float(out["probability"])

    assert prob("XYZ") == prob("other") == prob("CHF")
    assert prob(" eur ") == prob("EUR")


@pytest.mark.parametrize("key", FRAUD)
def test_fraud_input_errors(loaded: dict[str, Workflow], key: str) -> None:
    workflow = loaded[key]
    fields, good = workflow.example_request()
    ctx = StaticContext.from_fields(fields)
    bad: list[tuple[str, Any, str]] = [
        ("amount", np.array(-1.0, dtype=np.float32), "must be finite"),
        ("amount", np.array(np.nan, dtype=np.float32), "must be finite"),
        ("amount", np.array(np.inf, dtype=np.float32), "must be finite"),
        ("amount", np.array(1.0), "expected float32 of shape [] (scalar), got float64"),
        ("currency", np.array(" "), "must not be empty"),
        ("currency", np.array(3), "expected string"),
        ("account_age_days", np.array(-2.0, dtype=np.float32), "must be finite"),
        ("tx_last_24h", np.array(-1), "must be within"),
        ("card_present", np.array(1), "expected bool"),
    ]
    for field, value, message in bad:
        with pytest.raises(InputError) as info:
            workflow.check_inputs({**good, field: value})  # schema first, as the node does
            workflow.preprocess(ctx, {**good, field: value})
        assert info.value.field == field
        assert message in str(info.value)
    missing = {k: v for k, v in good.items() if k != "card_present"}
    with pytest.raises(InputError, match="card_present: required input is missing"):
        workflow.check_inputs(missing)


@pytest.mark.gpu
@pytest.mark.parametrize("key", RANKING + FRAUD)
def test_cuda_matches_cpu(
    loaded: dict[str, Workflow], world: synthetic.TitleWorld, key: str
) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    name, version = key.split("@")
    package = EXAMPLES / name / f"v{version}"
    on_cuda = load_package(package, device=torch.device("cuda:0")).workflow
    if key in RANKING:
        requests = ranking_requests(world)
    else:
        columns, _ = synthetic.transactions(40, seed=3)
        requests = fraud_requests(columns, range(40))
    prepared = [loaded[key].preprocess(ctx, inputs) for ctx, inputs in requests]
    with torch.inference_mode():
        cpu = forward_values(loaded[key].forward(prepared))
        gpu = forward_values(on_cuda.forward(prepared))
    for a, b in zip(cpu, gpu, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
