"""Candidate tuples, interned: what is pure in a routing decision, memoized once per world.

A candidate tuple (``shardline.router.handoff.serving_candidates`` for one model key, best first) is
interned as a ``Serving``, which carries what is pure in it and so can be shared by every
node: each user's rendezvous winner (``shardline.router.replica.rendezvous``) and the failover order
from each chosen candidate (``shardline.router.forward.attempt_order``). ``shardline.sim.routing``
makes and reads them; nodes keep them in their routing memo (``shardline.sim.request.Host.cand``).

Imports only the pure cores (no other ``sim`` module).
"""

from __future__ import annotations

from shardline.router.forward import attempt_order
from shardline.router.replica import rendezvous

MAX_INTERNED = 4096  # distinct candidate tuples remembered per world (then start over)


class Serving:
    """One candidate tuple (``ids``, best first) with its pure results memoized:
    ``sticky`` (user index -> ``rendezvous(user_id, ids)``) and ``orders`` (chosen ->
    ``attempt_order(chosen, ids)``)."""

    __slots__ = ("ids", "orders", "sticky")

    def __init__(self, ids: tuple[str, ...]) -> None:
        self.ids = ids
        self.sticky: dict[int, str] = {}
        self.orders: dict[str, tuple[str, ...]] = {}

    def rendezvous(self, user: int, user_id: str) -> str:
        """``rendezvous(user_id, ids)`` for the user of that index (memoized)."""
        sticky = self.sticky.get(user)
        if sticky is None:
            ids = self.ids
            sticky = ids[0] if len(ids) == 1 else rendezvous(user_id, ids)
            self.sticky[user] = sticky
        return sticky

    def attempts(self, chosen: str) -> tuple[str, ...]:
        order = self.orders.get(chosen)
        if order is None:
            order = self.orders[chosen] = attempt_order(chosen, self.ids)
        return order


def interned(registry: dict[tuple[str, ...], Serving], ids: tuple[str, ...]) -> Serving:
    """The one ``Serving`` for ``ids`` in ``registry`` (emptied when it holds
    ``MAX_INTERNED``)."""
    serving = registry.get(ids)
    if serving is None:
        if len(registry) >= MAX_INTERNED:
            registry.clear()
        serving = registry[ids] = Serving(ids)
    return serving
