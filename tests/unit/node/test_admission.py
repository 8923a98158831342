"""Unit tests for node/serving/admission.py: token buckets, per-objective admission, load
shedding."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardline.node.serving.admission import (
    AdmissionController,
    BatchCostModel,
    ObjectiveLimits,
    TokenBucket,
    per_node,
    should_shed,
)

rates = st.floats(min_value=0.1, max_value=1000.0, allow_nan=False)
bursts = st.floats(min_value=1.0, max_value=100.0, allow_nan=False)
steps = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=0.5, allow_nan=False),  # dt
        st.sampled_from([1, 1, 1, 2, 3]),  # tokens asked
    ),
    min_size=1,
    max_size=60,
)


# -- token bucket ---------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(rate=rates, burst=bursts, events=steps, start=st.floats(min_value=0.0, max_value=1e6))
def test_bucket_never_admits_more_than_burst_plus_rate_times_window(
    rate: float, burst: float, events: list[tuple[float, int]], start: float
) -> None:
    bucket = TokenBucket(rate, burst, now=start)
    now = start
    taken: list[tuple[float, int]] = []
    for dt, n in events:
        now += dt
        if bucket.try_take(now, n):
            taken.append((now, n))
    for i in range(len(taken)):
        total = 0
        for j in range(i, len(taken)):
            total += taken[j][1]
            window = taken[j][0] - taken[i][0]
            assert total <= burst + rate * window + 1e-6 * max(1.0, burst)


def test_bucket_starts_full_refills_and_caps_at_burst() -> None:
    bucket = TokenBucket(rate_per_s=10.0, burst=5.0, now=0.0)
    assert sum(bucket.try_take(0.0) for _ in range(10)) == 5
    assert not bucket.try_take(0.05)  # half a token
    assert bucket.try_take(0.1)  # one token after 100 ms
    assert bucket.tokens(1000.0) == 5.0  # long idle: capped at burst
    assert not bucket.try_take(1000.0, n=6)  # more than burst never succeeds
    assert bucket.wait_s(1000.0, n=6) == math.inf


def test_bucket_ignores_time_running_backwards() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=1.0, now=10.0)
    assert bucket.try_take(10.0)
    assert not bucket.try_take(5.0)
    assert not bucket.try_take(10.5)
    assert bucket.try_take(11.0)


# -- concurrency and isolation --------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(limit=st.integers(min_value=1, max_value=8), ops=st.lists(st.booleans(), max_size=80))
def test_concurrency_never_exceeds_limit_and_release_frees_a_slot(
    limit: int, ops: list[bool]
) -> None:
    ctl = AdmissionController({"a": ObjectiveLimits(max_concurrency=limit)}, now=0.0)
    admitted = 0
    for is_admit in ops:
        if is_admit:
            rejection = ctl.admit("a", now=0.0)
            if rejection is None:
                admitted += 1
            else:
                assert admitted == limit
                assert rejection.reason == "concurrency"
        elif admitted:
            ctl.release("a")
            admitted -= 1
            assert ctl.admit("a", now=0.0) is None  # the freed slot is usable at once
            admitted += 1
        assert ctl.in_flight("a") == admitted <= limit


@settings(max_examples=100, deadline=None)
@given(
    surge=st.integers(min_value=0, max_value=300),
    b_events=st.lists(st.floats(min_value=0.0, max_value=0.2), min_size=1, max_size=40),
)
def test_surge_on_one_objective_leaves_another_untouched(surge: int, b_events: list[float]) -> None:
    limits = {
        "a": ObjectiveLimits(max_concurrency=5, rate_per_s=20.0, burst=10.0),
        "b": ObjectiveLimits(max_concurrency=3, rate_per_s=10.0, burst=4.0),
    }
    quiet = AdmissionController(limits, now=0.0)
    busy = AdmissionController(limits, now=0.0)
    now = 0.0
    for dt in b_events:
        now += dt
        for _ in range(surge // len(b_events) + 1):
            busy.admit("a", now)  # never released: A saturates its own limits
        got_quiet = quiet.admit("b", now)
        got_busy = busy.admit("b", now)
        assert got_quiet == got_busy
        if got_quiet is None and quiet.in_flight("b") == 3:
            quiet.release("b")
            busy.release("b")
    assert busy.in_flight("a") <= 5


def test_rejection_messages_name_objective_and_limit() -> None:
    ctl = AdmissionController(
        {
            "fraud": ObjectiveLimits(max_concurrency=1),
            "ranking": ObjectiveLimits(rate_per_s=2.0, burst=1.0),
        },
        now=0.0,
    )
    assert ctl.admit("fraud", 0.0) is None
    conc = ctl.admit("fraud", 0.0)
    assert conc is not None and conc.reason == "concurrency"
    assert "'fraud'" in conc.message and "1" in conc.message
    assert ctl.admit("ranking", 0.0) is None
    rate = ctl.admit("ranking", 0.0)
    assert rate is not None and rate.reason == "rate" and rate.objective == "ranking"
    assert "'ranking'" in rate.message and "2 requests/s" in rate.message
    assert rate.retry_after_s == pytest.approx(0.5)


def test_unlimited_objective_is_admitted_and_counted() -> None:
    ctl = AdmissionController({}, now=0.0)
    for _ in range(1000):
        assert ctl.admit("anything", 0.0) is None
    assert ctl.in_flight("anything") == 1000
    ctl.release("anything")
    assert ctl.in_flight("anything") == 999
    assert ctl.in_flight_total() == 999


def test_concurrency_rejection_does_not_spend_a_rate_token() -> None:
    ctl = AdmissionController({"a": ObjectiveLimits(max_concurrency=1, rate_per_s=1.0)}, 0.0)
    assert ctl.admit("a", 0.0) is None
    rejected = ctl.admit("a", 1.0)
    assert rejected is not None and rejected.reason == "concurrency"
    ctl.release("a")
    assert ctl.admit("a", 1.0) is None  # the token refilled at t=1 is still there


def test_extra_release_is_ignored() -> None:
    ctl = AdmissionController({"a": ObjectiveLimits(max_concurrency=1)}, now=0.0)
    ctl.release("a")
    assert ctl.in_flight("a") == 0
    assert ctl.admit("a", 0.0) is None
    assert ctl.admit("a", 0.0) is not None


def test_set_limits_keeps_in_flight_and_bucket_fill() -> None:
    ctl = AdmissionController(
        {"a": ObjectiveLimits(max_concurrency=4, rate_per_s=1.0, burst=4.0)}, now=0.0
    )
    for _ in range(3):
        assert ctl.admit("a", 0.0) is None
    # the cluster grew: the limits shrink; three requests are still in flight
    ctl.set_limits(
        {
            "a": ObjectiveLimits(max_concurrency=2, rate_per_s=1.0, burst=10.0),
            "b": ObjectiveLimits(rate_per_s=1.0, burst=3.0),
        },
        now=0.0,
    )
    assert ctl.in_flight("a") == 3
    assert ctl.admit("a", 0.0) is not None  # over the new concurrency limit
    ctl.release("a")
    ctl.release("a")
    assert ctl.admit("a", 0.0) is None  # one token was left, not a fresh burst of 10
    assert ctl.admit("a", 0.0) is not None
    assert sum(ctl.admit("b", 0.0) is None for _ in range(5)) == 3  # new bucket starts full
    ctl.set_limits({"a": ObjectiveLimits(rate_per_s=1.0, burst=1.0)}, now=10.0)
    assert ctl.admit("a", 10.0) is None  # refilled, capped at the new burst
    assert ctl.admit("a", 10.0) is not None


# -- limits and per-node division ---------------------------------------------------------


@given(
    concurrency=st.integers(min_value=1, max_value=10_000),
    rate=st.floats(min_value=0.01, max_value=1e6),
    burst=st.floats(min_value=1.0, max_value=1e6),
    nodes=st.integers(min_value=1, max_value=500),
)
def test_per_node_divides_cluster_limits(
    concurrency: int, rate: float, burst: float, nodes: int
) -> None:
    share = per_node(
        ObjectiveLimits(max_concurrency=concurrency, rate_per_s=rate, burst=burst), nodes
    )
    assert share.max_concurrency == max(1, math.ceil(concurrency / nodes))
    assert share.max_concurrency * nodes >= concurrency
    assert share.rate_per_s == pytest.approx(rate / nodes)
    assert share.burst == pytest.approx(max(1.0, burst / nodes))


def test_per_node_examples() -> None:
    lim = ObjectiveLimits(max_concurrency=10, rate_per_s=100.0, burst=20.0)
    assert per_node(lim, 3) == ObjectiveLimits(
        max_concurrency=4, rate_per_s=100.0 / 3, burst=20.0 / 3
    )
    assert per_node(lim, 50).max_concurrency == 1
    assert per_node(lim, 50).burst == 1.0
    assert per_node(lim, 0) == lim  # not yet in the ring: this node is the only server
    assert per_node(ObjectiveLimits(), 7) == ObjectiveLimits()


def test_objective_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        ObjectiveLimits(max_concurrency=0)
    with pytest.raises(ValueError, match="rate_per_s"):
        ObjectiveLimits(rate_per_s=0.0)
    with pytest.raises(ValueError, match="burst needs rate_per_s"):
        ObjectiveLimits(burst=5.0)
    with pytest.raises(ValueError, match="burst"):
        ObjectiveLimits(rate_per_s=1.0, burst=0.5)
    assert ObjectiveLimits(rate_per_s=0.5).effective_burst == 1.0
    assert ObjectiveLimits(rate_per_s=50.0).effective_burst == 50.0


# -- shedding and estimates -----------------------------------------------------------------


def test_should_shed_semantics() -> None:
    assert not should_shed(1.0, 0.2, 0.3)
    assert not should_shed(0.5, 0.2, 0.3)  # exactly meets the deadline
    assert should_shed(0.4, 0.2, 0.3)
    assert should_shed(0.0, 0.0, 0.0)  # deadline already passed
    assert should_shed(-1.0, 0.0, 0.0)
    assert not should_shed(math.inf, 100.0, 100.0)  # no deadline
    assert not should_shed(0.1, math.nan, -5.0)  # unknown estimates count as zero


@given(
    remaining=st.floats(min_value=0.001, max_value=100.0),
    wait=st.floats(min_value=0.0, max_value=100.0),
    service=st.floats(min_value=0.0, max_value=100.0),
)
def test_should_shed_iff_expected_time_exceeds_remaining(
    remaining: float, wait: float, service: float
) -> None:
    assert should_shed(remaining, wait, service) == (wait + service > remaining)


@given(
    base=st.floats(min_value=0.0, max_value=0.05),
    per_item=st.floats(min_value=0.0, max_value=0.01),
    sizes=st.lists(st.integers(min_value=1, max_value=64), min_size=2, max_size=40, unique=True),
)
def test_batch_cost_model_recovers_base_and_per_item(
    base: float, per_item: float, sizes: list[int]
) -> None:
    model = BatchCostModel(alpha=0.2)
    assert model.wait_seconds(10, 8) == 0.0  # no observation yet: no reason to shed
    for n in sizes:
        model.observe(n, base + per_item * n)
    # Exact data from at least two batch sizes: base and per-item cost are both recovered.
    for n in (1, 8, 64):
        assert model.batch_seconds(n) == pytest.approx(base + per_item * n, abs=1e-6)
    assert model.wait_seconds(0, 8) == 0.0
    # 17 queued ahead, batches of 8: two full batches, then its own with the 1 left over.
    assert model.wait_seconds(17, 8) == pytest.approx(2 * (base + per_item * 8), abs=1e-6)
    assert model.own_batch_seconds(17, 8) == pytest.approx(base + per_item * 2, abs=1e-6)
    assert model.own_batch_seconds(0, 8) == pytest.approx(base + per_item, abs=1e-6)


def test_nothing_queued_never_sheds_a_request_its_own_batch_fits() -> None:
    """Batches of 1 seen so far (1.5 ms each), nothing queued: a 20 ms deadline is met by the
    request's own batch of one; extrapolating to a full batch of 64 (96 ms) shed it."""
    model = BatchCostModel()
    for _ in range(20):
        model.observe(1, 0.0015)
    wait, own = model.wait_seconds(0, 64), model.own_batch_seconds(0, 64)
    assert not should_shed(0.020, wait, own)
    assert should_shed(0.001, wait, own)  # a deadline shorter than one item still sheds


def test_batch_cost_model_ignores_bad_samples() -> None:
    model = BatchCostModel()
    model.observe(0, 1.0)
    model.observe(4, math.nan)
    model.observe(4, -1.0)
    assert model.samples == 0
    with pytest.raises(ValueError, match="alpha"):
        BatchCostModel(alpha=0.0)


def _fitted(base: float, per_item: float, sizes: list[int]) -> BatchCostModel:
    model = BatchCostModel()
    for n in sizes:
        model.observe(n, base + per_item * n)
    return model


def test_batch_limit_is_small_where_batching_does_not_pay() -> None:
    """A model whose batch time is all per item (8 ms a request, no fixed cost to share)
    closes batches of 1; one whose time is mostly a fixed cost keeps its full batches; in
    between, the smallest size within BatchCostModel.BATCH_SLACK of a full batch's cost per
    request."""
    sizes = [1, 8, 3, 8, 2, 8, 5, 8, 1, 8, 4, 8]
    assert _fitted(0.0, 0.008, sizes).batch_limit(8) == 1
    assert _fitted(0.050, 0.0001, sizes).batch_limit(8) == 8
    mixed = _fitted(0.010, 0.005, sizes)  # full batch: 1.25 + 5 = 6.25 ms a request
    limit = mixed.batch_limit(8)
    per_request = [0.010 / n + 0.005 for n in range(1, 9)]
    assert per_request[limit - 1] <= 1.10 * per_request[7] < per_request[limit - 2]
    assert limit == 6


def test_batch_limit_waits_for_evidence_and_keeps_its_last_fit_when_sizes_stop_varying() -> None:
    model = BatchCostModel()
    assert model.batch_limit(8) == 8  # nothing seen: the manifest's size
    for _ in range(BatchCostModel.BATCH_LIMIT_SAMPLES - 1):
        model.observe(1, 0.008)
    assert model.batch_limit(8) == 8  # too few batches yet
    model = _fitted(0.0, 0.008, [1, 8, 2, 8, 1, 8, 3, 8, 1, 8])
    assert model.batch_limit(8) == 1
    for _ in range(200):  # then only batches of 1: the sizes no longer tell base from per item
        model.observe(1, 0.008)
    assert model.batch_limit(8) == 1  # the last fit stands
    assert model.batch_limit(4) == 1
