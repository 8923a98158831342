"""Replica choice: which healthy owner of a model key serves this request (pure).

Step 4 of the request path. Given the owners from the ring (`shardline.router.ring.Ring.owners`,
primary first), the user id and the in-flight counts gossip carries:

1. candidates = the owners not excluded (dead, or already tried by this request);
2. the *sticky* replica is the rendezvous (highest-random-weight) winner for the user among
   the candidates, so one user keeps hitting one warm replica, and losing an owner only
   moves the users that were on it;
3. it is taken unless its in-flight count exceeds ``(1 + epsilon) * mean + slack_requests``
   (mean over the candidates, a missing count is 0). The additive slack (default 1
   request) keeps tiny counts from defeating stickiness: with 1 request against 0 and 0
   the mean is 1/3 and, without the slack, the sticky replica would already count as
   loaded. The bound is checked before the request is added, so a sticky replica can
   reach ``(1 + epsilon) * mean + slack_requests + 1``;
4. otherwise power of two choices among the candidates that are themselves within that
   limit (never empty: the least loaded one is at most the mean): two distinct ones drawn
   with the caller's `random.Random`, the one with fewer in flight wins (a tie goes to the
   user's rendezvous order, so the choice stays sticky among equals); with two or fewer
   eligible no draw is needed. Drawing only among replicas within the limit, rather than
   among all candidates, is what bounds the load: every chosen replica is within
   ``limit`` when chosen, so while the mean does not fall, no replica ever holds more than
   ``limit + 1`` (plain power of two choices could pick the lesser of two overloaded
   replicas and overshoot by several requests when epsilon is small).

Hashes are blake2b (never the salted built-in ``hash()``), so every process agrees on
every user's sticky replica. No clock, no global random state: the simulator runs this
code with a seeded `random.Random`.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass

_BLAKE2B_8 = hashlib.blake2b(digest_size=8)  # copied per hash: cheaper than a constructor


@functools.lru_cache(maxsize=1 << 14)
def _score(user_id: str, candidate: str) -> bytes:
    """blake2b of ``user_id``, NUL, ``candidate`` (UTF-8); pure, so the hot (user, node)
    pairs are cached."""
    h = _BLAKE2B_8.copy()
    h.update(f"{user_id}\x00{candidate}".encode())
    return h.digest()


def rendezvous_order(user_id: str, candidates: Sequence[str]) -> tuple[str, ...]:
    """The distinct candidates, best first, by highest random weight for `user_id`."""
    unique = dict.fromkeys(candidates)
    return tuple(sorted(unique, key=lambda c: (_score(user_id, c), c), reverse=True))


def rendezvous(user_id: str, candidates: Sequence[str]) -> str:
    """The user's sticky candidate: highest blake2b(user_id, candidate) wins.

    Independent of the candidates' order; removing a candidate only moves the users whose
    winner it was. ValueError on no candidates.
    """
    if not candidates:
        raise ValueError("rendezvous needs at least one candidate")
    # max by (score, candidate), the first of equals kept (as ``max`` does), without a
    # key tuple per candidate.
    it = iter(candidates)
    best = next(it)
    best_score = _score(user_id, best)
    for c in it:
        score = _score(user_id, c)
        if score > best_score or (score == best_score and c > best):
            best, best_score = c, score
    return best


@dataclass(frozen=True)
class ReplicaPolicy:
    """When the sticky replica counts as loaded (see the module docstring)."""

    epsilon: float = 0.25
    slack_requests: float = 1.0

    def __post_init__(self) -> None:
        for name in ("epsilon", "slack_requests"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

    def limit(self, mean_in_flight: float) -> float:
        """The most in-flight requests a sticky replica may have and still be chosen."""
        return (1.0 + self.epsilon) * mean_in_flight + self.slack_requests


DEFAULT_POLICY = ReplicaPolicy()
_NONE: tuple[str, ...] = ()  # the default ``exclude`` (nothing to filter out)


def choose_replica(
    owners: Sequence[str],
    user_id: str,
    in_flight: Mapping[str, int],
    rng: random.Random,
    policy: ReplicaPolicy = DEFAULT_POLICY,
    exclude: Container[str] = _NONE,
) -> str | None:
    """The owner to send this request to, or None when every owner is excluded.

    `owners` in ring order, `in_flight` per node (missing = 0), `exclude` the owners that
    are dead or were already tried. `rng` is drawn from only when the sticky replica is
    loaded and more than two candidates are within the limit.
    """
    if exclude is _NONE:
        if len(owners) == 2 and owners[0] != owners[1]:  # (the usual case, without a dict)
            candidates = [owners[0], owners[1]]
        else:
            candidates = list(dict.fromkeys(owners))
    else:
        candidates = [o for o in dict.fromkeys(owners) if o not in exclude]
    n = len(candidates)
    if n < 2:
        return candidates[0] if candidates else None
    sticky = rendezvous(user_id, candidates)
    get = in_flight.get
    total = 0
    for c in candidates:
        total += get(c, 0)
    limit = policy.limit(total / n)
    if get(sticky, 0) <= limit:
        return sticky
    # The least loaded candidate is at most the mean, hence within the limit (the fallback
    # only matters for nonsensical negative counts).
    eligible = [c for c in candidates if get(c, 0) <= limit]
    if len(eligible) == 1:
        return eligible[0]
    if not eligible:
        eligible = candidates
    pair = eligible if len(eligible) <= 2 else rng.sample(eligible, 2)
    # min keeps the first of equals: ties go to the user's rendezvous order.
    return min(rendezvous_order(user_id, pair), key=lambda c: get(c, 0))


def failover_order(owners: Sequence[str], first: str) -> tuple[str, ...]:
    """The owners to try after `first`, in ring order (wrapping around the owner list).

    If `first` is not an owner, every owner is still untried: all of them, in order.
    """
    unique = tuple(dict.fromkeys(owners))
    if first not in unique:
        return unique
    i = unique.index(first)
    return unique[i + 1 :] + unique[:i]
