"""One simulated client request (one client attempt at a time) and its final outcome codes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from router.decision import Decision
from router.objectives import ObjectiveConfig

if TYPE_CHECKING:
    from sim.node import SimNode

OK = "OK"
STATUSES = (
    OK,
    "UNAVAILABLE",
    "RESOURCE_EXHAUSTED",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "INVALID_ARGUMENT",
    "INTERNAL",
)
STATUS_CODE = {name: i for i, name in enumerate(STATUSES)}


class ObjectiveEntry:
    """One stored revision of an objective config, shared by every node that holds it,
    with the decisions made under it so far (``evaluate`` is pure: memoized per user)."""

    __slots__ = ("config", "decisions", "name", "revision")

    def __init__(self, name: str, revision: int, config: ObjectiveConfig) -> None:
        self.name = name
        self.revision = revision
        self.config = config
        self.decisions: dict[int, Decision] = {}


class Request:
    """A request as one client attempt sees it; a client retry makes a fresh ``Request``.

    Made by ``make_request`` (``Request()`` alone leaves every field unset). ``done`` is
    set when the attempt ends (answered, failed, or abandoned because the client retried
    elsewhere); events about a done request are ignored.
    """

    __slots__ = (
        "attempts",
        "cell",
        "deadline",
        "done",
        "idx",
        "ingress",
        "key",
        "mid",
        "obj",
        "rev",
        "rid",
        "second",
        "shadow",
        "t0",
        "t_queued",
        "t_route",
        "tries",
        "user",
    )

    rid: int
    t0: float  # when the client sent it
    obj: int  # objective index
    user: int
    deadline: float
    ingress: SimNode
    tries: int  # client attempts so far, this one included
    done: bool
    shadow: bool  # a fire-and-forget shadow copy
    idx: int  # which of ``attempts`` is being tried
    attempts: tuple[str, ...]  # the owners to try, set when routed (until then empty)
    # Set when the request is routed (before anything reads them): the model key, cell and
    # objective revision it routed with, and when (a shadow copy gets only its ``key``);
    # ``mid`` when an attempt is made, ``second`` on a second hop.
    key: str
    cell: str
    rev: int
    t_route: float
    mid: SimNode | None  # the owner that passed it on (second hop)
    second: str  # where that owner passed it
    t_queued: float  # when an executor queued it (it is in one queue at a time)

    def retry(self, ingress: SimNode) -> Request:
        """The client's next attempt (on another ingress); this one is abandoned."""
        self.done = True
        nxt = make_request(self.rid, self.t0, self.obj, self.user, self.deadline, ingress)
        nxt.tries = self.tries + 1
        return nxt


def make_request(
    rid: int, t0: float, obj: int, user: int, deadline: float, ingress: SimNode
) -> Request:
    """A fresh client attempt (a function rather than ``Request.__init__``: the
    interpreter calls a plain function inline, an ``__init__`` through the type)."""
    req = Request()
    req.rid = rid
    req.t0 = t0
    req.obj = obj
    req.user = user
    req.deadline = deadline
    req.ingress = ingress
    req.tries = 1
    req.done = False
    req.shadow = False
    req.idx = 0
    req.attempts = ()
    return req
