"""Unit tests for router/hot_copies.py: hot copies with hysteresis, and copies for a rate."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardline.router.hot_copies import HotPolicy, HotState, copies_for_rate, observe

POLICY = HotPolicy()


def run(
    policy: HotPolicy,
    state: HotState,
    times: list[float],
    in_flight: float,
    queue_ms: float = 0.0,
) -> list[HotState]:
    out = []
    for now in times:
        state = observe(policy, state, now, in_flight_per_copy=in_flight, queue_ms=queue_ms)
        out.append(state)
    return out


def ticks(start: float, stop: float, step: float = 1.0) -> list[float]:
    return [start + i * step for i in range(int((stop - start) / step) + 1)]


def test_scales_up_only_after_sustained_heat() -> None:
    states = run(POLICY, HotState(), ticks(0, 4.5, 0.5), in_flight=10.0)
    assert all(s.copies == 0 for s in states)  # hot 4.5 s < up_after_s
    state = observe(POLICY, states[-1], 5.0, in_flight_per_copy=10.0, queue_ms=0.0)
    assert state.copies == 1 and state.changed_at == 5.0
    assert state.above_since is None and state.below_since is None


def test_queue_time_alone_makes_it_hot() -> None:
    states = run(POLICY, HotState(), ticks(0, 5), in_flight=0.0, queue_ms=80.0)
    assert states[-1].copies == 1


def test_a_break_in_the_heat_restarts_the_timer() -> None:
    state = run(POLICY, HotState(), ticks(0, 4), in_flight=10.0)[-1]
    state = observe(POLICY, state, 4.5, in_flight_per_copy=2.0, queue_ms=0.0)  # neither
    assert state.above_since is None
    states = run(POLICY, state, ticks(5, 9.5, 0.5), in_flight=10.0)
    assert all(s.copies == 0 for s in states)
    assert run(POLICY, states[-1], [10.0], in_flight=10.0)[-1].copies == 1


def test_one_step_at_a_time_with_cooldown_up_to_the_maximum() -> None:
    policy = HotPolicy(max_copies=3)
    states = run(policy, HotState(), ticks(0, 200, 0.5), in_flight=50.0)
    steps = [
        s
        for s, prev in zip(states, [HotState(), *states[:-1]], strict=True)
        if s.copies != prev.copies
    ]
    assert [s.copies for s in steps] == [1, 2, 3]  # +1 each time, stops at max_copies
    times = [s.changed_at for s in steps]
    # 5 s of heat; then each step needs the 10 s cooldown and a fresh 5 s of heat (its
    # timer restarts at the first sample after the change): the cooldown binds here
    assert times == [5.0, 15.0, 25.0]
    assert states[-1].copies == 3


def test_scales_down_only_after_sustained_cold() -> None:
    state = HotState(copies=2, changed_at=0.0)
    states = run(POLICY, state, ticks(1, 60), in_flight=0.5, queue_ms=1.0)  # cold from t=1
    assert all(s.copies == 2 for s in states)  # cold 59 s < down_after_s
    state = observe(POLICY, states[-1], 61.0, in_flight_per_copy=0.5, queue_ms=1.0)
    assert state.copies == 1
    # the next step needs another full cold period
    states = run(POLICY, state, ticks(62, 121), in_flight=0.5, queue_ms=1.0)
    assert all(s.copies == 1 for s in states)  # cold since 62 (the first sample after it)
    assert run(POLICY, states[-1], [122.0], in_flight=0.5, queue_ms=1.0)[-1].copies == 0
    # never below zero
    assert run(POLICY, HotState(), ticks(0, 500, 5), in_flight=0.0)[-1].copies == 0


def test_between_the_thresholds_nothing_changes() -> None:
    # 1.0 < in_flight < 4.0 (down_ratio * up = 1.0): neither hot nor cold
    states = run(POLICY, HotState(copies=3), ticks(0, 1000, 5), in_flight=2.0)
    assert all(s == HotState(copies=3) for s in states)
    # cold in-flight but a queue in between: not cold
    states = run(POLICY, HotState(copies=3), ticks(0, 1000, 5), in_flight=0.0, queue_ms=20.0)
    assert all(s.copies == 3 for s in states)


def test_lowered_maximum_steps_down_one_per_cooldown() -> None:
    policy = HotPolicy(max_copies=1)
    states = run(policy, HotState(copies=4), ticks(0, 40), in_flight=2.0)
    copies = [s.copies for s in states]
    assert copies[0] == 3 and copies[-1] == 1
    assert all(a - b in (0, 1) for a, b in itertools.pairwise(copies))


observations = st.tuples(
    st.floats(min_value=0, max_value=100, allow_nan=False),
    st.floats(min_value=0, max_value=1000, allow_nan=False),
)
policies = st.builds(
    HotPolicy,
    up_in_flight_per_copy=st.floats(min_value=0.1, max_value=50),
    up_queue_ms=st.floats(min_value=1, max_value=500),
    down_ratio=st.floats(min_value=0, max_value=0.99),
    up_after_s=st.floats(min_value=0, max_value=30),
    down_after_s=st.floats(min_value=0, max_value=120),
    cooldown_s=st.floats(min_value=0, max_value=30),
    max_copies=st.integers(min_value=0, max_value=10),
)


@settings(max_examples=300, deadline=None)
@given(
    policy=policies,
    start=st.integers(min_value=0, max_value=10),
    load=observations,
    steps=st.lists(st.floats(min_value=0.01, max_value=20), min_size=1, max_size=80),
)
def test_a_steady_load_never_goes_up_then_down(
    policy: HotPolicy, start: int, load: tuple[float, float], steps: list[float]
) -> None:
    start = min(start, policy.max_copies)
    state, now = HotState(copies=start), 0.0
    seen = [start]
    for step in steps:
        now += step
        state = observe(policy, state, now, in_flight_per_copy=load[0], queue_ms=load[1])
        assert abs(state.copies - seen[-1]) <= 1
        assert 0 <= state.copies <= policy.max_copies
        seen.append(state.copies)
    ups = any(b > a for a, b in itertools.pairwise(seen))
    downs = any(b < a for a, b in itertools.pairwise(seen))
    assert not (ups and downs), seen


@settings(max_examples=200, deadline=None)
@given(
    policy=policies,
    loads=st.lists(
        st.tuples(st.floats(min_value=0.01, max_value=20), observations), min_size=1, max_size=60
    ),
)
def test_changes_respect_cooldown_and_sustain_under_any_load(
    policy: HotPolicy, loads: list[tuple[float, tuple[float, float]]]
) -> None:
    state, now = HotState(), 0.0
    last_change: float | None = None
    for step, (in_flight, queue_ms) in loads:
        now += step
        before = state
        state = observe(policy, state, now, in_flight_per_copy=in_flight, queue_ms=queue_ms)
        if state.copies != before.copies:
            assert abs(state.copies - before.copies) == 1
            if last_change is not None:
                assert now - last_change >= policy.cooldown_s
            since = before.above_since if state.copies > before.copies else before.below_since
            since = now if since is None else since  # a period starts with its first sample
            wait = policy.up_after_s if state.copies > before.copies else policy.down_after_s
            assert now - since >= wait
            last_change = now


def test_policy_validation_names_the_field() -> None:
    for kwargs, field in [
        ({"up_in_flight_per_copy": 0}, "up_in_flight_per_copy"),
        ({"up_queue_ms": -1}, "up_queue_ms"),
        ({"up_queue_ms": math.nan}, "up_queue_ms"),
        ({"down_ratio": 1.0}, "down_ratio"),
        ({"down_ratio": -0.1}, "down_ratio"),
        ({"up_after_s": math.inf}, "up_after_s"),
        ({"down_after_s": -5}, "down_after_s"),
        ({"cooldown_s": "10"}, "cooldown_s"),
        ({"max_copies": -1}, "max_copies"),
        ({"max_copies": 2.5}, "max_copies"),
        ({"max_copies": True}, "max_copies"),
    ]:
        with pytest.raises(ValueError, match=field):
            HotPolicy(**kwargs)  # type: ignore[arg-type]


def test_state_and_observation_validation() -> None:
    with pytest.raises(ValueError, match="copies"):
        HotState(copies=-1)
    with pytest.raises(ValueError, match="above_since"):
        HotState(above_since=math.nan)
    with pytest.raises(ValueError, match="in_flight_per_copy"):
        observe(POLICY, HotState(), 1.0, in_flight_per_copy=-1, queue_ms=0)
    with pytest.raises(ValueError, match="queue_ms"):
        observe(POLICY, HotState(), 1.0, in_flight_per_copy=0, queue_ms=math.inf)
    with pytest.raises(ValueError, match="now"):
        observe(POLICY, HotState(), math.nan, in_flight_per_copy=0, queue_ms=0)


def test_copies_for_rate() -> None:
    assert copies_for_rate(0.0, 10.0, 2, 8) == 0
    assert copies_for_rate(20.0, 10.0, 2, 8) == 0  # exactly R copies' worth
    assert copies_for_rate(20.1, 10.0, 2, 8) == 1
    assert copies_for_rate(95.0, 10.0, 2, 8) == 8  # 10 needed, capped at max_copies
    assert copies_for_rate(95.0, 10.0, 3, 100) == 7
    assert copies_for_rate(0.3, 0.1, 1, 100) == 2  # 0.3 / 0.1 is 2.9999999999999996
    assert copies_for_rate(1e300, 1e-300, 2, 5) == 5
    for args, name in [
        ((-1.0, 1.0, 2, 8), "rate"),
        ((1.0, 0.0, 2, 8), "per_copy_rate"),
        ((1.0, 1.0, 0, 8), "replicas"),
        ((1.0, 1.0, 2, -1), "max_copies"),
        ((math.nan, 1.0, 2, 8), "rate"),
    ]:
        with pytest.raises(ValueError, match=name):
            copies_for_rate(*args)  # type: ignore[arg-type]


@given(
    rate=st.floats(min_value=0, max_value=1e6),
    per_copy=st.floats(min_value=1e-3, max_value=1e3),
    replicas=st.integers(min_value=1, max_value=5),
    max_copies=st.integers(min_value=0, max_value=1000),
)
def test_copies_for_rate_covers_the_rate(
    rate: float, per_copy: float, replicas: int, max_copies: int
) -> None:
    copies = copies_for_rate(rate, per_copy, replicas, max_copies)
    assert 0 <= copies <= max_copies
    if copies < max_copies:
        assert (replicas + copies) * per_copy * (1 + 1e-6) >= rate
    if copies > 0:
        assert (replicas + copies - 1) * per_copy < rate
