"""The request path's data: a client request, the node it passes through, outcome codes.

``Request`` is one client attempt; ``Host`` is a node as the request path sees it (its
identity, whether it runs and takes requests, its view and ring, its warm model executors,
its routing memo and the objective revisions it routes with); ``ObjectiveEntry`` is one
stored objective revision. They live together because each refers to the other: a request
remembers its ingress (a ``Host``), a host's executors queue requests (``ModelQueue``, the
part of ``shardline.sim.executor.Executor`` that the request path and placement use).

``shardline.sim.node.SimNode`` is a ``Host`` with a process around it (SWIM, the etcd client,
placement); everything on the request path (``shardline.sim.routing``, ``shardline.sim.executor``,
``shardline.sim.serving``, ``shardline.sim.metrics``) sees only the ``Host``. Imports no ``sim``
module but ``core`` and ``candidates``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from shardline.membership.view import MembershipView
from shardline.router.decision import Decision
from shardline.router.objectives import ObjectiveConfig
from shardline.router.ring import Ring
from shardline.sim.candidates import Serving
from shardline.sim.core import Handler

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
        "tried",
        "tries",
        "user",
    )

    rid: int
    t0: float  # when the client sent it
    obj: int  # objective index
    user: int
    deadline: float
    ingress: Host
    tries: int  # client attempts so far, this one included
    tried: tuple[Host, ...]  # the ingresses of the client's earlier attempts
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
    mid: Host | None  # the owner that passed it on (second hop)
    second: str  # where that owner passed it
    t_queued: float  # when an executor queued it (it is in one queue at a time)

    def retry(self, ingress: Host) -> Request:
        """The client's next attempt (on another ingress); this one is abandoned."""
        self.done = True
        nxt = make_request(self.rid, self.t0, self.obj, self.user, self.deadline, ingress)
        nxt.tries = self.tries + 1
        nxt.tried = (*self.tried, self.ingress)
        return nxt


def make_request(
    rid: int, t0: float, obj: int, user: int, deadline: float, ingress: Host
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
    req.tried = ()
    req.done = False
    req.shadow = False
    req.idx = 0
    req.attempts = ()
    return req


class ModelQueue(Protocol):
    """What the request path and placement use of a model's executor on a node
    (``shardline.sim.executor.Executor``)."""

    key: str
    closing: bool  # set by placement: the model is being unloaded (finish, take nothing new)

    def offer(self, req: Request) -> str | None:
        """Enqueue ``req``; an error status when it cannot be taken."""

    def kill(self) -> list[Request]:
        """A crash: everything queued or running is dropped (and returned)."""

    @property
    def pending(self) -> bool:
        """Requests are queued or running."""


_EMPTY_RING = Ring(())


class Owners(Protocol):
    """What the request path asks of a node's ring: the owners of a key (a ``Ring``, or in
    fleet mode a ``shardline.sim.fleet.FleetRing``; a protocol, so compiled code checks no
    class)."""

    def owners(self, key: str, replicas: int) -> tuple[str, ...]: ...


class Host:
    """A node as the request path sees it (``shardline.sim.node.SimNode`` adds the process).

    The process sets these (``clear`` at every start, before anything reads the rest) and
    keeps them current; the request path reads them and counts ``in_flight`` and
    ``served``."""

    # Slots: more attributes than CPython shares per class, so a dict per node otherwise.
    __slots__ = (
        "accepting",
        "cand",
        "cold",
        "deferred",
        "executors",
        "frozen",
        "frozen_until",
        "in_flight",
        "in_flight_of",
        "index",
        "limits",
        "models_of",
        "node_id",
        "objective_at",
        "replica_rng",
        "replicas",
        "ring",
        "served",
        "slow_factor",
        "up",
        "view",
    )

    def __init__(self, node_id: str, index: int) -> None:
        self.node_id = node_id
        self.index = index  # its position in the world (the metrics' server column)
        self.up = False  # the process runs
        self.accepting = False  # it takes new requests (False while stopping gracefully)
        self.frozen = False  # paused: what arrives for it waits in ``deferred``
        self.frozen_until = 0.0
        self.slow_factor = 1.0  # model execution takes this many times longer
        self.served = 0  # answers its executors gave

    def clear(self, replica_rng: random.Random) -> None:
        """A new process: nothing known, nothing warm, nothing in flight or deferred."""
        self.replica_rng = replica_rng  # ``choose_replica``'s generator
        self.view = MembershipView()
        self.ring: Owners = _EMPTY_RING
        self.replicas: Mapping[str, int] = {}  # model key -> R, from the catalog
        self.objective_at: list[ObjectiveEntry | None] = []  # by the engine's objective index
        self.models_of: dict[str, frozenset[str]] = {}  # warm models per member (etcd sets)
        self.in_flight_of: dict[str, int] = {}  # gossiped in-flight counts per member
        self.limits: dict[Serving, float] = {}  # emptied when in_flight_of changes (see choose)
        self.executors: dict[str, ModelQueue] = {}  # the warm models here
        self.in_flight = 0  # requests queued or running on its executors
        self.deferred: list[tuple[Handler, Any]] = []
        self.cand: dict[str, Serving] = {}  # key -> candidates (see shardline.sim.routing)
        # With a memory budget: ``cold(req, hops)`` makes a request for a model placed here
        # but not resident wait for its load (True), or declines (False: not placed here,
        # or no room); None without a budget (every owner holds what it owns).
        self.cold: Callable[[Request, int], bool] | None = None

    def defer(self, fn: Handler, arg: Any) -> None:
        """Run ``fn(arg)`` when the process resumes (it is paused)."""
        self.deferred.append((fn, arg))
