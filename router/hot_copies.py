"""Hot copies: how many extra copies of a model its load asks for, with hysteresis (pure).

A model has ``R`` owners (placement); under load it gains *copies* -- more nodes load it --
one at a time, and loses them one at a time once it has been cold for a while. The caller
feeds `observe` the model's load summary every so often (the in-flight requests per warm
copy and the queue time) with its own monotonic clock; `observe` returns the new state,
whose ``copies`` is the number of extra copies to ask placement for (`ModelNeed.copies`).

- *hot*: ``in_flight_per_copy > up_in_flight_per_copy`` or ``queue_ms > up_queue_ms``;
- *cold*: both below ``down_ratio`` x their up threshold;
- in between neither: nothing changes, and both timers restart.

A copy is added when the model has been hot for ``up_after_s`` without a break, and one is
dropped when it has been cold for ``down_after_s``; after any change nothing changes for
``cooldown_s``, and the timers restart (each further step needs a fresh sustained period).
Since ``down_ratio < 1``, hot and cold exclude each other: a steady load only ever moves the
copies one way, so a copy is never loaded and evicted in a loop. At most ``max_copies``
extra copies; a state above a (lowered) maximum steps down one copy per cooldown.

Pure: no clock (``now`` is the caller's), no I/O, no random state; the simulator runs this
very code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(name: str, value: object, *, low: float, strict: bool = False) -> None:
    number = float(value) if isinstance(value, int | float) and _is_number(value) else math.nan
    if not math.isfinite(number) or number < low or (strict and number == low):
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


@dataclass(frozen=True)
class HotPolicy:
    """When a model gains or loses a copy (see the module docstring)."""

    up_in_flight_per_copy: float = 4.0  # scale up when in-flight per copy stays above this...
    up_queue_ms: float = 50.0  # ...or queue time stays above this
    down_ratio: float = 0.25  # scale down when both stay below ratio x the up thresholds
    up_after_s: float = 5.0  # sustained this long
    down_after_s: float = 60.0
    cooldown_s: float = 10.0  # after any change, no change for this long
    max_copies: int = 8  # extra copies beyond R

    def __post_init__(self) -> None:
        _finite("up_in_flight_per_copy", self.up_in_flight_per_copy, low=0.0, strict=True)
        _finite("up_queue_ms", self.up_queue_ms, low=0.0, strict=True)
        _finite("down_ratio", self.down_ratio, low=0.0)
        if self.down_ratio >= 1.0:
            raise ValueError(
                f"down_ratio must be < 1 (cold must lie below hot, or copies would oscillate), "
                f"got {self.down_ratio!r}"
            )
        for name in ("up_after_s", "down_after_s", "cooldown_s"):
            _finite(name, getattr(self, name), low=0.0)
        if (
            not isinstance(self.max_copies, int)
            or isinstance(self.max_copies, bool)
            or self.max_copies < 0
        ):
            raise ValueError(f"max_copies must be an int >= 0, got {self.max_copies!r}")


@dataclass(frozen=True)
class HotState:
    """One model's copies and timers (``None``: not running)."""

    copies: int = 0
    above_since: float | None = None  # hot without a break since
    below_since: float | None = None  # cold without a break since
    changed_at: float | None = None  # the last change of copies

    def __post_init__(self) -> None:
        if not isinstance(self.copies, int) or isinstance(self.copies, bool) or self.copies < 0:
            raise ValueError(f"copies must be an int >= 0, got {self.copies!r}")
        for f in fields(self)[1:]:
            value = getattr(self, f.name)
            if value is not None and (not _is_number(value) or not math.isfinite(value)):
                raise ValueError(f"{f.name} must be a finite number or None, got {value!r}")


def observe(
    policy: HotPolicy,
    state: HotState,
    now: float,
    *,
    in_flight_per_copy: float,
    queue_ms: float,
) -> HotState:
    """The state after one observation at ``now`` (the caller's monotonic clock, seconds).

    Changes ``copies`` by at most one. ValueError for a non-finite ``now`` or a negative or
    non-finite load.
    """
    _finite("now", now, low=-math.inf)
    _finite("in_flight_per_copy", in_flight_per_copy, low=0.0)
    _finite("queue_ms", queue_ms, low=0.0)
    hot = in_flight_per_copy > policy.up_in_flight_per_copy or queue_ms > policy.up_queue_ms
    cold = (
        in_flight_per_copy < policy.down_ratio * policy.up_in_flight_per_copy
        and queue_ms < policy.down_ratio * policy.up_queue_ms
    )
    above = (state.above_since if state.above_since is not None else now) if hot else None
    below = (state.below_since if state.below_since is not None else now) if cold else None
    cooling = state.changed_at is not None and now - state.changed_at < policy.cooldown_s
    copies = state.copies
    if not cooling:
        if copies > policy.max_copies:
            copies -= 1
        elif hot and copies < policy.max_copies and above is not None:
            if now - above >= policy.up_after_s:
                copies += 1
        elif cold and copies > 0 and below is not None and now - below >= policy.down_after_s:
            copies -= 1
    if copies != state.copies:
        return HotState(copies=copies, above_since=None, below_since=None, changed_at=now)
    return replace(state, above_since=above, below_since=below)


def copies_for_rate(rate: float, per_copy_rate: float, replicas: int, max_copies: int) -> int:
    """The extra copies (beyond ``replicas``) a steady ``rate`` needs at ``per_copy_rate`` each.

    ``min(max_copies, max(0, ceil(rate / per_copy_rate) - replicas))``; for benchmarks and the
    simulator. ValueError for a negative or non-finite rate, ``per_copy_rate <= 0``,
    ``replicas < 1`` or ``max_copies < 0``.
    """
    _finite("rate", rate, low=0.0)
    _finite("per_copy_rate", per_copy_rate, low=0.0, strict=True)
    for name, value, low in (("replicas", replicas, 1), ("max_copies", max_copies, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    ratio = rate / per_copy_rate
    if not math.isfinite(ratio):
        return max_copies
    needed = math.ceil(ratio - 1e-9)  # a rate of exactly k copies needs k, not k + 1
    return min(max_copies, max(0, needed - replicas))
