"""Unit tests for router/placement_policy.py: consistent hashing with bounded loads.

The statistical tests (balance, moved fractions) use fixed seeds, and the hypothesis tests of
them run with ``derandomize=True``: the same examples on every run, so a tolerance never
flakes. The exact properties (equality with Ring when unbounded, order independence,
refusals, owner counts) run on random examples.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardline.router.hot_copies import copies_for_rate
from shardline.router.placement_policy import (
    DEFAULT_BALANCE,
    Assignment,
    ModelNeed,
    NodeSpace,
    assign,
    refusal,
)
from shardline.router.ring import Ring, RingMember, moved_keys

REPO = Path(__file__).resolve().parents[3]
GB = 2**30

node_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=12)
capacities = st.sampled_from([0.25, 0.5, 1.0, 1.5, 2.0, 4.0])
model_keys = st.from_regex(r"\A[a-z0-9_]{1,20}@[A-Za-z0-9._-]{1,10}\Z")


def ring_of(nodes: list[NodeSpace]) -> Ring:
    return Ring(RingMember(n.node_id, n.capacity) for n in nodes)


def fleet(count: int, budget: int = 100 * GB) -> list[NodeSpace]:
    return [NodeSpace(f"node-{i:03d}", budget) for i in range(count)]


def catalog(
    count: int, *, seed: int = 1, sigma: float = 1.0, rates: bool = False, nodes: int = 10
) -> list[ModelNeed]:
    """Lognormal sizes; with ``rates``, Zipf rates and hot copies (a copy: 5 % of a node)."""
    rng = np.random.default_rng(seed)
    sizes = rng.lognormal(math.log(50e6), sigma, count).astype(np.int64)
    zipf = 1000.0 / (rng.permutation(count) + 1)
    per_copy = 0.05 * float(zipf.sum()) / nodes
    return [
        ModelNeed(
            f"model_{i:05d}@v{1 + i % 3}",
            int(sizes[i]),
            2,
            copies_for_rate(float(zipf[i]), per_copy, 2, nodes) if rates else 0,
            float(zipf[i]) if rates else 0.0,
        )
        for i in range(count)
    ]


def max_over_mean(values: dict[str, int] | dict[str, float] | object) -> float:
    assert isinstance(values, dict) or hasattr(values, "values")
    array = np.asarray(list(values.values()), dtype=np.float64)  # type: ignore[attr-defined]
    return float(array.max() / array.mean())


# --- equality with the ring -----------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    nodes=st.lists(
        st.builds(NodeSpace, node_ids, st.just(10 * GB), capacities),
        min_size=1,
        max_size=12,
        unique_by=lambda n: n.node_id,
    ),
    keys=st.lists(model_keys, min_size=1, max_size=40, unique=True),
    replicas=st.integers(min_value=1, max_value=4),
    copies=st.integers(min_value=0, max_value=3),
)
def test_unbounded_is_exactly_the_ring(
    nodes: list[NodeSpace], keys: list[str], replicas: int, copies: int
) -> None:
    needs = [ModelNeed(k, 1000 + i, replicas, copies) for i, k in enumerate(keys)]
    result = assign(nodes, needs, balance=math.inf)
    ring = ring_of(nodes)
    for need in needs:
        assert result.owners_of(need.key) == ring.owners(need.key, replicas + copies)
    assert not result.refused


def test_unbounded_is_the_ring_at_scale() -> None:
    nodes = fleet(200)
    needs = catalog(5000, rates=True)
    result = assign(nodes, needs, balance=math.inf)
    ring = ring_of(nodes)
    assert any(m.copies for m in needs)
    assert all(result.owners_of(m.key) == ring.owners(m.key, m.wanted) for m in needs)


def test_bounded_keeps_most_keys_on_their_ring_owners() -> None:
    nodes = fleet(20)
    needs = catalog(4000)
    result = assign(nodes, needs)
    ring = ring_of(nodes)
    same = sum(result.owners_of(m.key) == ring.owners(m.key, 2) for m in needs)
    assert same / len(needs) > 0.9


# --- determinism ---------------------------------------------------------------------------


def fingerprint(result: Assignment) -> str:
    blob = json.dumps(
        [sorted(result.owners.items()), sorted(result.refused.items())], sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    n_nodes=st.integers(min_value=1, max_value=15),
    n_models=st.integers(min_value=0, max_value=300),
)
def test_order_independent(seed: int, n_nodes: int, n_models: int) -> None:
    rng = random.Random(seed)
    nodes = [
        NodeSpace(f"n{i}", rng.choice([GB, 2 * GB, 4 * GB]), rng.choice([0.5, 1.0, 2.0]))
        for i in range(n_nodes)
    ]
    needs = [
        ModelNeed(
            f"m{i}@1", rng.randrange(0, 3 * GB), rng.randint(1, 3), rng.randint(0, 2), rng.random()
        )
        for i in range(n_models)
    ]
    first = assign(nodes, needs)
    rng.shuffle(nodes)
    rng.shuffle(needs)
    second = assign(nodes, needs)
    assert dict(first.owners) == dict(second.owners)
    assert dict(first.refused) == dict(second.refused)
    assert dict(first.placed_bytes) == dict(second.placed_bytes)
    for key, value in first.placed_rate.items():
        assert second.placed_rate[key] == pytest.approx(value)


def test_same_answer_in_another_process() -> None:
    """md5, never the salted built-in hash(): a fresh process with another seed agrees."""
    nodes = fleet(30)
    needs = catalog(3000, rates=True)
    here = fingerprint(assign(nodes, needs))
    code = (
        "from tests.unit.router.test_placement_policy import assign, catalog, fleet, fingerprint;"
        "print(fingerprint(assign(fleet(30), catalog(3000, rates=True))))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == here


# --- balance -------------------------------------------------------------------------------


@pytest.mark.parametrize("n_nodes", [10, 50])
def test_bounded_max_over_mean_in_both_dimensions(n_nodes: int) -> None:
    nodes = fleet(n_nodes)
    needs = catalog(20000, rates=True, nodes=n_nodes)  # hot keys have copies
    ring = assign(nodes, needs, balance=math.inf)
    bounded = assign(nodes, needs)
    # A key that no node can take within bound in *both* dimensions goes to the least
    # loaded fitting node and may overshoot by part of one key: at most 1 % here.
    assert max_over_mean(bounded.placed_bytes) <= DEFAULT_BALANCE * 1.01
    assert max_over_mean(bounded.placed_rate) <= DEFAULT_BALANCE * 1.01
    if n_nodes == 50:  # the plain ring is over the bound here: the test shows a difference
        assert max(max_over_mean(ring.placed_bytes), max_over_mean(ring.placed_rate)) > 1.3


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    n_nodes=st.integers(min_value=2, max_value=40),
    balance=st.sampled_from([1.1, 1.25, 1.5, 2.0]),
    seed=st.integers(min_value=0, max_value=1000),
)
def test_never_above_the_bound_when_keys_are_small(n_nodes: int, balance: float, seed: int) -> None:
    # items well under a bound: the bound is always respected (no fallback is needed)
    rng = random.Random(seed)
    nodes = [NodeSpace(f"n{i}", GB, rng.choice([0.5, 1.0, 2.0])) for i in range(n_nodes)]
    # R=1: with R=2 a node can hold at most half the slots, and a bound above that is void
    needs = [ModelNeed(f"m{i}@1", rng.randint(1, 1000), 1) for i in range(100 * n_nodes)]
    result = assign(nodes, needs, balance=balance)
    total = sum(result.placed_bytes.values())
    weights = {n.node_id: n.budget_bytes * n.capacity for n in nodes}
    weight_sum = sum(weights.values())
    for node_id, placed in result.placed_bytes.items():
        assert placed <= balance * total * weights[node_id] / weight_sum * (1 + 1e-6)


def test_shares_follow_budget_times_capacity() -> None:
    big = [NodeSpace(f"big{i}", 4 * GB) for i in range(5)]
    small = [NodeSpace(f"small{i}", GB) for i in range(5)]
    needs = [ModelNeed(f"m{i}@1", 1000) for i in range(5000)]
    result = assign(big + small, needs)
    total = sum(result.placed_bytes.values())
    for n in small:  # the ring gives each ~10 %; the bound is 1.25 x 1/25 of the total
        assert result.placed_bytes[n.node_id] <= 1.25 * total / 25 * (1 + 1e-6)


# --- moves ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("n_nodes", "rates"), [(10, False), (20, True), (50, True)])
def test_one_join_or_leave_moves_about_what_the_ring_moves(n_nodes: int, rates: bool) -> None:
    needs = catalog(6000, seed=n_nodes, rates=rates, nodes=n_nodes)
    base = fleet(n_nodes)
    joined = [*base, NodeSpace("joiner", 100 * GB)]
    left = base[:3] + base[4:]
    before = assign(base, needs)
    ring_before = assign(base, needs, balance=math.inf)
    for other in (joined, left):
        moved = moved_keys(before.owners, assign(other, needs).owners)
        ring_moved = moved_keys(ring_before.owners, assign(other, needs, balance=math.inf).owners)
        assert ring_moved > 0
        assert moved <= 1.5 * ring_moved, (moved, ring_moved)
        # about R/N of the owner sets
        assert moved / len(needs) <= 1.5 * 2 / n_nodes


def test_a_key_moves_only_to_or_from_the_changed_node_when_nothing_binds() -> None:
    needs = catalog(2000)
    base = fleet(8)
    before = assign(base, needs, balance=math.inf)
    after = assign([*base, NodeSpace("joiner", 100 * GB)], needs, balance=math.inf)
    for key, owners in after.owners.items():
        if set(owners) != set(before.owners[key]):
            assert "joiner" in owners


# --- fitting and refusals ------------------------------------------------------------------


def test_refuses_only_what_fits_nowhere_with_the_numbers() -> None:
    nodes = [NodeSpace("a", 2 * GB), NodeSpace("b", 4 * GB), NodeSpace("c", 3 * GB)]
    huge = ModelNeed("huge@1", 5 * GB)
    reason = refusal(nodes, huge)
    assert reason is not None
    assert "huge@1" in reason and str(5 * GB) in reason and str(4 * GB) in reason
    assert "5.0 GiB" in reason and "4.0 GiB" in reason and " b " in reason
    assert refusal(nodes, ModelNeed("ok@1", 4 * GB)) is None
    result = assign(nodes, [huge, ModelNeed("ok@1", 4 * GB), ModelNeed("mid@1", 3 * GB)])
    assert result.refused == {"huge@1": reason}
    assert result.owners_of("huge@1") == ()
    assert result.owners_of("unknown@1") == ()
    # fewer owners when fewer nodes can load it: only b fits 4 GB; b and c fit 3 GB
    assert result.owners_of("ok@1") == ("b",)
    assert set(result.owners_of("mid@1")) == {"b", "c"}
    assert result.placed_bytes == {"a": 0, "b": 7 * GB, "c": 3 * GB}


def test_no_nodes_refuses_everything() -> None:
    reason = refusal([], ModelNeed("m@1", 1))
    assert reason is not None and "no node" in reason
    result = assign([], [ModelNeed("m@1", 1)])
    assert result.refused == {"m@1": reason}
    assert not result.owners


def test_never_refuses_what_fits_even_over_every_bound() -> None:
    nodes = fleet(10, budget=50 * GB)
    # one key bigger than any bound, plus many small ones: it still gets R owners, the
    # least loaded ones
    needs = [ModelNeed(f"s{i}@1", 10**6) for i in range(2000)]
    needs.append(ModelNeed("big@1", 20 * GB, replicas=3))
    result = assign(nodes, needs)
    owners = result.owners_of("big@1")
    assert len(owners) == 3 and len(set(owners)) == 3
    assert not result.refused


@settings(max_examples=50, deadline=None)
@given(
    budgets=st.lists(st.integers(min_value=1, max_value=100), min_size=1, max_size=8),
    needs=st.lists(
        st.tuples(st.integers(min_value=0, max_value=120), st.integers(1, 4), st.integers(0, 3)),
        min_size=1,
        max_size=30,
    ),
    balance=st.sampled_from([1.0, 1.25, 2.0, math.inf]),
)
def test_owners_are_distinct_fitting_and_as_many_as_possible(
    budgets: list[int], needs: list[tuple[int, int, int]], balance: float
) -> None:
    nodes = [NodeSpace(f"n{i}", b) for i, b in enumerate(budgets)]
    models = [ModelNeed(f"m{i}@1", size, r, c) for i, (size, r, c) in enumerate(needs)]
    result = assign(nodes, models, balance=balance)
    budget = {n.node_id: n.budget_bytes for n in nodes}
    placed = dict.fromkeys(budget, 0)
    for m in models:
        fitting = sum(1 for b in budgets if b >= m.bytes)
        owners = result.owners_of(m.key)
        if fitting == 0:
            assert m.key in result.refused and owners == ()
            continue
        assert m.key not in result.refused
        assert len(owners) == len(set(owners)) == min(m.replicas + m.copies, fitting)
        assert all(budget[o] >= m.bytes for o in owners)
        for o in owners:
            placed[o] += m.bytes
    assert dict(result.placed_bytes) == placed


# --- validation ----------------------------------------------------------------------------


def test_validation() -> None:
    for bad in [("", GB, 1.0), ("a", 0, 1.0), ("a", 1.5, 1.0), ("a", GB, 0.0), ("a", GB, math.inf)]:
        with pytest.raises(ValueError):
            NodeSpace(*bad)  # type: ignore[arg-type]
    for kwargs, word in [
        ({"key": "", "bytes": 1}, "key"),
        ({"key": "m@1", "bytes": -1}, "bytes"),
        ({"key": "m@1", "bytes": True}, "bytes"),
        ({"key": "m@1", "bytes": 1, "replicas": 0}, "replicas"),
        ({"key": "m@1", "bytes": 1, "copies": -1}, "copies"),
        ({"key": "m@1", "bytes": 1, "rate": math.nan}, "rate"),
        ({"key": "m@1", "bytes": 1, "rate": -1.0}, "rate"),
    ]:
        with pytest.raises(ValueError, match=word):
            ModelNeed(**kwargs)  # type: ignore[arg-type]
    nodes = fleet(2)
    with pytest.raises(ValueError, match="balance"):
        assign(nodes, [], balance=0.9)
    with pytest.raises(ValueError, match="balance"):
        assign(nodes, [], balance=math.nan)
    with pytest.raises(ValueError, match="duplicate node"):
        assign([*nodes, nodes[0]], [])
    with pytest.raises(ValueError, match="duplicate model key"):
        assign(nodes, [ModelNeed("m@1", 1), ModelNeed("m@1", 2)])
    with pytest.raises(TypeError):
        assign(["n1"], [])  # type: ignore[list-item]


def test_zero_bytes_and_zero_rates_are_the_ring() -> None:
    nodes = fleet(7)
    needs = [ModelNeed(f"m{i}@1", 0) for i in range(500)]
    result = assign(nodes, needs)
    ring = ring_of(nodes)
    assert all(result.owners_of(m.key) == ring.owners(m.key, 2) for m in needs)


# --- the benchmark -------------------------------------------------------------------------


def test_bench_quick_prints_the_table() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "SHARDLINE_NATIVE": "0", "COLUMNS": "200"}
    out = subprocess.run(
        [sys.executable, "-m", "bench.placement_balance", "--quick"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    for text in ("ring bytes", "assign rate", "µs/model", "join assign", "leave assign"):
        assert text in out.stdout
    rows = [
        line for line in out.stdout.splitlines() if line.lstrip("│ ").startswith(("10 ", "50 "))
    ]
    assert len(rows) == 2, out.stdout


def test_owners_spread_over_zones_while_there_are_enough() -> None:
    """A zone failure leaves every key an owner: R owners in R distinct zones."""
    nodes = [NodeSpace(f"n{i:02d}", 10**9, zone=f"z{i % 4}") for i in range(20)]
    needs = [ModelNeed(f"m{i}@1", 1000 + i, replicas=3) for i in range(2000)]
    placed = assign(nodes, needs)
    zone = {n.node_id: n.zone for n in nodes}
    for need in needs:
        owners = placed.owners_of(need.key)
        assert len(owners) == 3
        assert len({zone[o] for o in owners}) == 3, (need.key, owners)
    # More owners than zones: zones repeat rather than owners going missing.
    wide = assign(nodes, [ModelNeed("wide@1", 10, replicas=6)])
    assert len(wide.owners_of("wide@1")) == 6
    bad = pytest.raises(ValueError, match="zone")
    with bad:
        NodeSpace("x", 1, zone=3)  # type: ignore[arg-type]
