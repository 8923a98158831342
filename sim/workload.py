"""The client workload: Poisson arrivals per objective, Zipf-popular users, fixed attributes.

The superposition of the objectives' Poisson processes is one Poisson process of the total
rate whose arrivals pick an objective in proportion to its rate; users are drawn from a
Zipf(s) law over ``users`` ids (user 0 is the most active) and each user has a fixed
country and device. Arrivals are drawn in numpy chunks from a generator derived from the
run's seed (vectorized: this is the hot input of the simulator) and handed out one by one.
"""

from __future__ import annotations

import bisect
import math

import numpy as np

from shardline.sim.core import derive_np
from shardline.sim.scenario import Scenario

CHUNK = 8192


class Workload:
    """Arrival stream between ``start_s`` and ``end_s`` (see the module docstring)."""

    def __init__(self, scenario: Scenario, seed: int, start_s: float, end_s: float) -> None:
        self._gen = derive_np(seed, "workload")
        rates = np.array([o.rate_per_s for o in scenario.objectives], dtype=float)
        self.total_rate = float(rates.sum())
        self._objective_cdf = np.cumsum(rates) / max(self.total_rate, 1e-300)
        spec = scenario.workload
        weights = 1.0 / np.arange(1, spec.users + 1, dtype=float) ** spec.zipf_s
        self._user_cdf = np.cumsum(weights) / weights.sum()
        self._user_ids = list(range(spec.users))
        attrs = derive_np(seed, "users")
        self._country = attrs.integers(0, len(spec.countries), spec.users).tolist()
        self._device = attrs.integers(0, len(spec.devices), spec.users).tolist()
        self._t = start_s
        self.end_s = end_s
        self._times: list[float] = []
        self._objs: list[int] = []
        self._users: list[int] = []
        self._picks: list[float] = []
        self._i = 0
        self.next_t = math.inf
        if self.total_rate > 0 and start_s < end_s:
            self._refill()

    def attributes(self, user: int) -> tuple[int, int]:
        """(country index, device index) of a user."""
        return self._country[user], self._device[user]

    def _refill(self) -> None:
        gen = self._gen
        gaps = gen.exponential(1.0 / self.total_rate, CHUNK)
        times = self._t + np.cumsum(gaps)
        self._t = float(times[-1])
        last = self._objective_cdf.size - 1
        objs = np.minimum(np.searchsorted(self._objective_cdf, gen.random(CHUNK)), last)
        users = np.minimum(
            np.searchsorted(self._user_cdf, gen.random(CHUNK)), self._user_cdf.size - 1
        )
        self._times = times.tolist()
        self._objs = objs.tolist()
        # The same int object for the same user, run-long: the engine's and checker's
        # per-user tables then find their keys by identity.
        self._users = list(map(self._user_ids.__getitem__, users.tolist()))
        self._picks = gen.random(CHUNK).tolist()
        self._i = 0
        first = self._times[0]
        self.next_t = first if first < self.end_s else math.inf

    def pop(self) -> tuple[int, int, float]:
        """The arrival at ``next_t``: (objective index, user, ingress pick in [0, 1))."""
        i = self._i
        out = (self._objs[i], self._users[i], self._picks[i])
        self.skip(i + 1)
        return out

    def take(self) -> tuple[list[float], list[int], list[int], list[float], int, int]:
        """The current chunk (times, objectives, users, picks), the index of ``next_t`` in
        it and the index of its first arrival at or after ``end_s`` (or its length), for a
        caller that walks it in place (then ``skip``s what it used)."""
        times = self._times
        stop = bisect.bisect_left(times, self.end_s, self._i)
        return times, self._objs, self._users, self._picks, self._i, stop

    def skip(self, i: int) -> None:
        """The arrivals of the current chunk before index ``i`` were used."""
        if i >= CHUNK:
            self._refill()
        else:
            self._i = i
            t = self._times[i]
            self.next_t = t if t < self.end_s else math.inf
