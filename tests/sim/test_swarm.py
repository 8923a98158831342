"""Swarm test: random fault schedules drawn from a seed; safety always, liveness after heal.

A handful of examples by default; ``SHARDLINE_SIM_EXAMPLES=200 pytest tests/sim/test_swarm.py``
for a long swarm. A failure names the seed: ``shardline sim run swarm --seed N`` replays it.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardline.sim.result import run_scenario
from shardline.sim.swarm import random_scenario, schedule_summary

EXAMPLES = int(os.environ.get("SHARDLINE_SIM_EXAMPLES", "8"))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.integers(min_value=0, max_value=2**32))
def test_random_fault_schedules_are_safe_and_heal(seed: int) -> None:
    scenario = random_scenario(seed)
    result = run_scenario(scenario)
    failed = [c for c in result.checks if not c.ok]
    assert not failed, (
        f"seed {seed}: {[c.to_dict() for c in failed]}\n"
        f"schedule: {schedule_summary(scenario)}\n"
        f"replay: shardline sim run swarm --seed {seed}"
    )
    assert result.summary["requests"] > 0


def test_the_schedule_is_a_function_of_the_seed() -> None:
    assert random_scenario(3) == random_scenario(3)
    assert any(random_scenario(3) != random_scenario(s) for s in (4, 5, 6))
