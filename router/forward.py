"""Forwarding policy: which owners to try, in which order, and when to try the next.

Transport-agnostic (the node plugs in its pooled grpclib client), so the same policy
runs in the node and in the simulator. An attempt that fails with UNAVAILABLE, a
broken connection or an overloaded owner is retried once on the next owner, within the
remaining deadline; DEADLINE_EXCEEDED, INVALID_ARGUMENT and every other answer are final.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

#: Outcomes worth one more try on another owner. "CONNECTION": the call never got an
#: answer (refused, reset, peer gone); the others are gRPC status names.
RETRYABLE = frozenset({"UNAVAILABLE", "CONNECTION", "RESOURCE_EXHAUSTED"})
MAX_HOPS = 2


class AttemptFailed(Exception):
    """One attempt on one owner failed; ``status`` is a gRPC status name or CONNECTION."""

    def __init__(self, node_id: str, status: str, message: str) -> None:
        super().__init__(f"{node_id}: {status}: {message}")
        self.node_id = node_id
        self.status = status
        self.message = message

    @property
    def retryable(self) -> bool:
        return self.status in RETRYABLE


@dataclass(frozen=True)
class Route:
    model_key: str
    cell: str
    attempts: tuple[str, ...]  # chosen owner first, then the failover candidate


def attempt_order(chosen: str, owners: Sequence[str], max_attempts: int = 2) -> tuple[str, ...]:
    """``chosen`` then the next owners in ring order (wrapping), at most ``max_attempts``."""
    if chosen not in owners:
        return (chosen,)
    i = list(owners).index(chosen)
    ordered = [*owners[i:], *owners[:i]]
    return tuple(ordered[:max_attempts])


async def call_with_failover(
    attempts: Sequence[str],
    call: Callable[[str], Awaitable[T]],
    time_left: Callable[[], float],
) -> T:
    """Try ``attempts`` in order; move on only after a retryable failure and while time is left.

    Raises the last ``AttemptFailed`` when every attempt failed (or one failed for good).
    """
    if not attempts:
        raise ValueError("no owner to try")
    last: AttemptFailed | None = None
    for node_id in attempts:
        if last is not None and time_left() <= 0:
            break
        try:
            return await call(node_id)
        except AttemptFailed as exc:
            last = exc
            if not exc.retryable:
                raise
    assert last is not None
    raise last
