"""Admission control for the request path: per-objective rate and concurrency limits, and
deadline-based load shedding.

Pure and synchronous: no I/O, no clock reads — every time is an argument (seconds on any
monotonic clock, the same one for a given object). Limits are configured cluster-wide per
objective (:class:`ObjectiveLimits`) and divided across the active nodes with
:func:`per_node`; each node enforces its share with an :class:`AdmissionController`
(a :class:`TokenBucket` per rate-limited objective plus an in-flight count), so a surge on one
objective never takes admissions from another. :func:`should_shed` rejects work whose
deadline can no longer be met, before doing it, using :class:`BatchCostModel`'s estimate of
the queue ahead (a batch's device time fitted as base + per-item cost).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "AdmissionController",
    "BatchCostModel",
    "ObjectiveLimits",
    "Rejection",
    "TokenBucket",
    "per_node",
    "should_shed",
]


@dataclass(frozen=True)
class ObjectiveLimits:
    """Limits for one objective; ``None`` means unlimited. ``burst`` (requests) is the bucket
    size and needs ``rate_per_s``; without it the burst is one second's worth (at least 1)."""

    max_concurrency: int | None = None  # requests in flight at once
    rate_per_s: float | None = None  # sustained admissions per second
    burst: float | None = None  # admissions allowed at once after an idle period

    def __post_init__(self) -> None:
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.rate_per_s is not None and not (
            self.rate_per_s > 0 and math.isfinite(self.rate_per_s)
        ):
            raise ValueError(f"rate_per_s must be positive and finite, got {self.rate_per_s}")
        if self.burst is not None:
            if self.rate_per_s is None:
                raise ValueError("burst needs rate_per_s")
            if not (self.burst >= 1 and math.isfinite(self.burst)):
                raise ValueError(f"burst must be >= 1 and finite, got {self.burst}")

    @property
    def effective_burst(self) -> float | None:
        """The bucket size in force: ``burst``, else ``max(1, rate_per_s)``; None if no rate."""
        if self.rate_per_s is None:
            return None
        return self.burst if self.burst is not None else max(1.0, self.rate_per_s)


def per_node(limits: ObjectiveLimits, active_nodes: int) -> ObjectiveLimits:
    """A node's share of cluster-wide limits: concurrency ``ceil(c / n)``, rate ``r / n``,
    burst ``max(1, b / n)`` (a bucket smaller than one request would admit nothing).
    ``active_nodes`` below 1 counts as 1 (this node serves even before it is in the ring)."""
    n = max(1, active_nodes)
    concurrency = None
    if limits.max_concurrency is not None:
        concurrency = max(1, math.ceil(limits.max_concurrency / n))
    rate = None if limits.rate_per_s is None else limits.rate_per_s / n
    burst = None if limits.burst is None else max(1.0, limits.burst / n)
    return ObjectiveLimits(max_concurrency=concurrency, rate_per_s=rate, burst=burst)


class TokenBucket:
    """A token bucket: starts full, refills continuously at ``rate_per_s`` up to ``burst``.

    Over any window of length ``T`` it admits at most ``burst + rate_per_s * T`` tokens. A
    ``now`` earlier than the last one seen refills nothing (time never runs backwards here).
    """

    __slots__ = ("_last_s", "_tokens", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: float, now: float, tokens: float | None = None):
        if not (rate_per_s > 0 and math.isfinite(rate_per_s)):
            raise ValueError(f"rate_per_s must be positive and finite, got {rate_per_s}")
        if not (burst > 0 and math.isfinite(burst)):
            raise ValueError(f"burst must be positive and finite, got {burst}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = burst if tokens is None else min(burst, max(0.0, tokens))
        self._last_s = now

    def _refill(self, now: float) -> None:
        if now > self._last_s:
            self._tokens = min(self.burst, self._tokens + (now - self._last_s) * self.rate_per_s)
            self._last_s = now

    def tokens(self, now: float) -> float:
        """Tokens available at ``now``."""
        self._refill(now)
        return self._tokens

    def try_take(self, now: float, n: float = 1) -> bool:
        """Take ``n`` tokens if available (all or nothing). ``n > burst`` never succeeds."""
        self._refill(now)
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False

    def wait_s(self, now: float, n: float = 1) -> float:
        """Seconds until ``n`` tokens are available (0 if now; inf if ``n > burst``)."""
        if n > self.burst:
            return math.inf
        self._refill(now)
        return max(0.0, (n - self._tokens) / self.rate_per_s)


@dataclass(frozen=True)
class Rejection:
    """Why a request was not admitted; ``message`` is meant for the client
    (RESOURCE_EXHAUSTED). ``retry_after_s`` is set for rate rejections."""

    reason: Literal["rate", "concurrency"]
    objective: str
    message: str
    retry_after_s: float | None = None


class AdmissionController:
    """Per-objective admission on one node. Objectives without limits are always admitted
    (and still counted in flight). Every admitted request must be released exactly once."""

    def __init__(self, limits: Mapping[str, ObjectiveLimits], now: float) -> None:
        self._limits: dict[str, ObjectiveLimits] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._in_flight: dict[str, int] = {}
        self.set_limits(limits, now)

    @property
    def limits(self) -> Mapping[str, ObjectiveLimits]:
        return dict(self._limits)

    def set_limits(self, limits: Mapping[str, ObjectiveLimits], now: float) -> None:
        """Replace the limits. In-flight counts are kept (a lowered concurrency limit only
        stops new admissions); a bucket that stays rate-limited keeps its tokens, capped at
        the new burst; a newly rate-limited objective starts with a full bucket."""
        buckets: dict[str, TokenBucket] = {}
        for objective, lim in limits.items():
            burst = lim.effective_burst
            if lim.rate_per_s is None or burst is None:
                continue
            old = self._buckets.get(objective)
            tokens = None if old is None else old.tokens(now)
            buckets[objective] = TokenBucket(lim.rate_per_s, burst, now, tokens=tokens)
        self._limits = dict(limits)
        self._buckets = buckets

    def admit(self, objective: str, now: float) -> Rejection | None:
        """Admit one request (None, counted in flight) or say why not. Concurrency is checked
        first, so a request rejected for concurrency does not use up a rate token."""
        lim = self._limits.get(objective)
        in_flight = self._in_flight.get(objective, 0)
        if lim is not None:
            if lim.max_concurrency is not None and in_flight >= lim.max_concurrency:
                return Rejection(
                    "concurrency",
                    objective,
                    f"objective {objective!r} is at its concurrency limit of "
                    f"{lim.max_concurrency} requests in flight on this node; retry later",
                )
            bucket = self._buckets.get(objective)
            if bucket is not None and not bucket.try_take(now):
                wait_s = bucket.wait_s(now)
                return Rejection(
                    "rate",
                    objective,
                    f"objective {objective!r} is over its rate limit of "
                    f"{bucket.rate_per_s:g} requests/s (burst {bucket.burst:g}) on this node; "
                    f"retry in {wait_s:.3f}s",
                    retry_after_s=wait_s,
                )
        self._in_flight[objective] = in_flight + 1
        return None

    def release(self, objective: str) -> None:
        """An admitted request finished (in any way). Extra releases are ignored."""
        count = self._in_flight.get(objective, 0)
        if count <= 1:
            self._in_flight.pop(objective, None)
        else:
            self._in_flight[objective] = count - 1

    def in_flight(self, objective: str) -> int:
        return self._in_flight.get(objective, 0)

    def in_flight_total(self) -> int:
        return sum(self._in_flight.values())


def should_shed(
    deadline_remaining_s: float, expected_wait_s: float, expected_service_s: float
) -> bool:
    """True when the request cannot finish in time: its deadline has passed, or the expected
    queue wait plus service time exceeds what is left. An infinite deadline never sheds;
    unknown (NaN or negative) estimates count as zero."""
    if math.isnan(deadline_remaining_s):
        return False
    if deadline_remaining_s <= 0:
        return True

    def clean(x: float) -> float:
        return x if x > 0 else 0.0  # NaN > 0 is False

    return clean(expected_wait_s) + clean(expected_service_s) > deadline_remaining_s


class BatchCostModel:
    """A model's batch time as ``base + per_item * n``, fitted online with exponential
    forgetting from the times batches took on the device worker (not from the loop, whose
    delays under load would inflate it). It predicts how long a new request behind ``depth``
    queued ones takes: the full batches ahead of it, then its own batch with the leftover
    requests and itself — never a full batch it will not be in."""

    # Batches are no larger than pays: the smallest size whose device time per request is
    # within BATCH_SLACK of a full batch's. A model whose batch time is mostly per item
    # (little fixed cost to share) runs small batches, so a request waits behind less.
    BATCH_SLACK = 0.10
    BATCH_LIMIT_SAMPLES = 8  # batches seen before the limit moves from the manifest's size
    BATCH_LIMIT_SPREAD = 0.25  # variance of recent sizes needed to refit the limit

    def __init__(self, alpha: float = 0.1) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.samples = 0
        self._n = self._b = self._nn = self._nb = 0.0
        self._limit: int | None = None
        self.closing: int | None = None
        """The batch size the model's actor closes now (None: not yet known)."""

    def batch_limit(self, max_batch: int) -> int:
        """The batch size worth closing, at most ``max_batch``: the smallest ``n`` with
        ``base / n + per_item <= (1 + BATCH_SLACK) * (base / max_batch + per_item)``.
        Refitted only while recent batches differ in size (else the fit cannot tell a
        fixed cost from a per-item one, and the last limit stands)."""
        if self.samples < self.BATCH_LIMIT_SAMPLES:
            return max_batch
        if self._nn - self._n * self._n < self.BATCH_LIMIT_SPREAD:
            return min(self._limit or max_batch, max_batch)
        base, per_item = self.coefficients()
        room = (1.0 + self.BATCH_SLACK) * (base / max_batch + per_item) - per_item
        if per_item <= 0.0 or room <= 0.0:
            limit = max_batch
        else:
            limit = max(1, min(max_batch, math.ceil(base / room - 1e-9)))
        self._limit = limit
        return limit

    def observe(self, size: int, batch_s: float) -> None:
        if size < 1 or not math.isfinite(batch_s) or batch_s < 0:
            return
        a = self.alpha if self.samples else 1.0
        n = float(size)
        self._n += a * (n - self._n)
        self._b += a * (batch_s - self._b)
        self._nn += a * (n * n - self._nn)
        self._nb += a * (n * batch_s - self._nb)
        self.samples += 1

    def coefficients(self) -> tuple[float, float]:
        """(base seconds, seconds per item)."""
        if not self.samples:
            return 0.0, 0.0
        var = self._nn - self._n * self._n
        if var > 1e-6:
            per_item = max(0.0, (self._nb - self._n * self._b) / var)
        else:
            per_item = self._b / self._n if self._n else 0.0
        base = max(0.0, self._b - per_item * self._n)
        return base, per_item

    def batch_seconds(self, size: int) -> float:
        base, per_item = self.coefficients()
        return base + per_item * size

    def wait_seconds(self, depth: int, max_batch: int) -> float:
        """Time until the batch of a request behind ``depth`` queued ones reaches the device:
        the full batches ahead of it (``depth // max_batch``). The ``depth % max_batch``
        requests left over share the request's own batch (see :meth:`own_batch_seconds`)."""
        if depth <= 0:
            return 0.0
        return (depth // max_batch) * self.batch_seconds(max_batch)

    def own_batch_seconds(self, depth: int, max_batch: int) -> float:
        """Compute time of the batch the request itself rides in, as it will really close:
        the ``depth % max_batch`` requests ahead of it that do not fill a batch, plus itself
        (at least; later arrivals may join it, so this never overstates the request's own
        service time)."""
        return self.batch_seconds(max(depth, 0) % max_batch + 1)
