"""Candidate tuples, interned: what is pure in a routing decision, memoized once per world.

A candidate tuple (``shardline.router.handoff.serving_candidates`` for one model key, best first)
and its warm part (``shardline.node.cluster.routing.ClusterRouter.warm_part``: the replica is
chosen among these; with lazy loading the cold owners that follow are failover targets only) are
interned as a ``Serving``, which carries what is pure in them and so can be shared by every
node: each user's rendezvous winner (``shardline.router.replica.rendezvous``, over the warm part)
and the failover order from each chosen candidate (``shardline.router.forward.attempt_order``,
over the whole tuple). ``shardline.sim.routing``
makes and reads them; nodes keep them in their routing memo (``shardline.sim.request.Host.cand``).

Imports only the pure cores (no other ``sim`` module).
"""

from __future__ import annotations

from shardline.router.forward import attempt_order
from shardline.router.replica import rendezvous

MAX_INTERNED = 4096  # distinct candidate tuples remembered per world (then start over)


class Serving:
    """One candidate tuple (``full``, best first) and its warm part (``ids``, which the
    replica is chosen among; ``full`` itself when no candidate is warm or without lazy
    loading) with their pure results memoized: ``sticky`` (user index ->
    ``rendezvous(user_id, ids)``) and ``orders`` (chosen -> ``attempt_order(chosen, full)``)."""

    __slots__ = ("full", "ids", "orders", "sticky")

    def __init__(self, ids: tuple[str, ...], full: tuple[str, ...] | None = None) -> None:
        self.ids = ids
        self.full = ids if full is None else full
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
            order = self.orders[chosen] = attempt_order(chosen, self.full)
        return order


Registry = dict[tuple[tuple[str, ...], tuple[str, ...]], Serving]


def interned(
    registry: Registry, ids: tuple[str, ...], full: tuple[str, ...] | None = None
) -> Serving:
    """The one ``Serving`` for ``ids`` (the warm part) of ``full`` (default: ``ids``) in
    ``registry`` (emptied when it holds ``MAX_INTERNED``)."""
    whole = ids if full is None else full
    serving = registry.get((ids, whole))
    if serving is None:
        if len(registry) >= MAX_INTERNED:
            registry.clear()
        serving = registry[(ids, whole)] = Serving(ids, whole)
    return serving
