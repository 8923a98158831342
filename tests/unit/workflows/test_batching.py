"""The batch-closing policy: closes at max size or max delay after the first enqueue."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardline.workflows.batching import BatchPolicy

sizes = st.integers(min_value=1, max_value=4096)
delays = st.floats(min_value=0.0, max_value=1000.0, allow_nan=False)
times = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)


@given(sizes, delays, times, st.floats(min_value=0.0, max_value=2.0))
def test_full_batch_closes_immediately(max_size: int, delay: float, t0: float, dt: float) -> None:
    policy = BatchPolicy(max_size, delay)
    assert policy.should_close(max_size, t0, t0 + dt)
    assert policy.wait_s(max_size, t0, t0 + dt) == 0.0


@given(sizes, delays, times)
def test_lone_request_waits_at_most_max_delay(max_size: int, delay: float, t0: float) -> None:
    policy = BatchPolicy(max_size, delay)
    wait = policy.wait_s(1, t0, t0)
    assert 0.0 <= wait <= delay / 1000.0 + 1e-9
    assert policy.should_close(1, t0, t0 + delay / 1000.0)


@given(st.integers(min_value=2, max_value=4096), st.floats(min_value=0.1, max_value=1000.0))
def test_wait_shrinks_as_time_passes(max_size: int, delay: float) -> None:
    policy = BatchPolicy(max_size, delay)
    half = delay / 2000.0
    assert policy.wait_s(1, 0.0, half) == pytest.approx(half)
    assert not policy.should_close(1, 0.0, half)


def test_backlogged_request_does_not_wait_again() -> None:
    # The first request was enqueued 50 ms ago while a previous batch ran: close at once.
    policy = BatchPolicy(64, 2.0)
    assert policy.should_close(3, first_enqueued_s=10.0, now_s=10.05)


@pytest.mark.parametrize(("size", "delay"), [(0, 1.0), (5000, 1.0), (8, -1.0), (8, 1001.0)])
def test_invalid_policy(size: int, delay: float) -> None:
    with pytest.raises(ValueError):
        BatchPolicy(size, delay)
