"""One simulated client request (one client attempt at a time) and its final outcome codes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from router.rules import Decision, ObjectiveConfig

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

    ``done`` is set when the attempt ends (answered, failed, or abandoned because the
    client retried elsewhere); events about a done request are ignored.
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
        "t_route",
        "tries",
        "user",
    )

    def __init__(
        self, rid: int, t0: float, obj: int, user: int, deadline: float, ingress: SimNode
    ) -> None:
        self.rid = rid
        self.t0 = t0
        self.obj = obj
        self.user = user
        self.deadline = deadline
        self.ingress = ingress
        self.tries = 1
        self.done = False
        self.shadow = False
        self.key = ""
        self.cell = ""
        self.rev = 0
        self.attempts: tuple[str, ...] = ()
        self.idx = 0
        self.mid: SimNode | None = None  # the owner that passed it on (second hop)
        self.second = ""  # where that owner passed it
        self.t_route = 0.0

    def retry(self, ingress: SimNode) -> Request:
        """The client's next attempt (on another ingress); this one is abandoned."""
        self.done = True
        nxt = Request(self.rid, self.t0, self.obj, self.user, self.deadline, ingress)
        nxt.tries = self.tries + 1
        return nxt
