"""The simulator's virtual clock, event heap and seeded randomness.

Nothing in ``sim`` reads the wall clock or the global ``random`` state: time is
``EventLoop.now`` (float virtual seconds) and every random choice comes from a generator
derived from the run's seed and a purpose string (``derive_rng(seed, "net")``), so one seed
gives one trace, whatever else changes in the process.

The heap is keyed by ``(time, seq)``: events at the same virtual time run in the order they
were scheduled, which makes the order total and independent of the handlers' types.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np

Handler = Callable[[Any], None]


def derive_rng(seed: int, purpose: str) -> random.Random:
    """A ``random.Random`` for one purpose of one run (string seeds hash with sha512)."""
    return random.Random(f"{seed}:{purpose}")


def derive_np(seed: int, purpose: str) -> np.random.Generator:
    """A numpy generator for one purpose of one run (PCG64 seeded by blake2b)."""
    digest = hashlib.blake2b(f"{seed}:{purpose}".encode(), digest_size=8).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest, "big")))


class EventLoop:
    """A heap of ``(time, seq, handler, argument)`` on a virtual clock."""

    __slots__ = ("heap", "now", "seq")

    def __init__(self) -> None:
        self.now = 0.0
        self.heap: list[tuple[float, int, Handler, Any]] = []
        self.seq = 0  # the last sequence number given out (a hot caller may push itself)

    def at(self, when: float, fn: Handler, arg: Any = None) -> None:
        """Run ``fn(arg)`` at virtual time ``when`` (never before ``now``)."""
        self.seq += 1
        heapq.heappush(self.heap, (when if when > self.now else self.now, self.seq, fn, arg))

    def after(self, delay_s: float, fn: Handler, arg: Any = None) -> None:
        self.at(self.now + delay_s, fn, arg)

    def next_time(self) -> float:
        return self.heap[0][0] if self.heap else math.inf

    def step(self) -> None:
        """Run the earliest event."""
        when, _, fn, arg = heapq.heappop(self.heap)
        self.now = when
        fn(arg)

    @property
    def scheduled(self) -> int:
        """How many events were ever scheduled (a measure of the run's work)."""
        return self.seq
