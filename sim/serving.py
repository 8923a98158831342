"""The request path: simulated clients, ingress routing, forwarding, failover and answers.

It follows ``shardline.node.cluster.routing.ClusterRouter`` and ``shardline.node.sdk.client`` step
by step, calling the real pure cores for every decision: ``shardline.router.rules.evaluate`` (model
and cell, with the objective config the ingress holds), ``Ring.owners``,
``shardline.router.handoff.serving_candidates``, ``shardline.router.replica.choose_replica`` (serve
here when a warm owner under the load limit), ``shardline.router.forward.attempt_order`` and
``RETRYABLE`` (one failover to the next owner on UNAVAILABLE, a broken connection or overload, while
time is left), and ``MAX_HOPS`` (an owner that does not hold the model passes the request on once).
A client sends to a random node of the roster it last fetched and, on UNAVAILABLE, tries one other
node.

Outcomes whose timing is already fixed are settled without events: a forward across a cut
link gets no answer, so the ingress's call ends DEADLINE_EXCEEDED at the deadline; an
answer's trip back is summed from the links' delays. Every request ends in exactly one
``finish`` (an answer or an explicit error status), which feeds the metrics and the
safety checker.

The path is one way, as on a real node: the client reaches an ingress, which decides
(``route``: admission, ``shardline.router.rules.evaluate``), asks the router where
(``shardline.sim.routing.serving_for`` and ``choose``: answers a node id, never calls back), and
tries there (``_attempt``): the executor here (``shardline.sim.executor.Executor.offer``) or a peer
(``_at_owner``, ``_serve_forward``); failures go to the next owner (``_failed``); the
executor's batch comes back as ``executed``, which answers each client. Nodes are seen as
``shardline.sim.request.Host``; the world gives the engine its parts once (``RequestWorld``) and
the safety checker is told of routes and answers (``Checker``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from heapq import heappush
from math import floor as _floor
from typing import Protocol

from shardline.router.decision import Decision, new_decision
from shardline.router.forward import MAX_HOPS, RETRYABLE
from shardline.router.rules import RequestContext, evaluate
from shardline.sim.candidates import Registry
from shardline.sim.core import EventLoop, derive_rng
from shardline.sim.executor import Executor
from shardline.sim.metrics import FLUSH_VALUES, Metrics
from shardline.sim.network import Network
from shardline.sim.request import (
    OK,
    STATUS_CODE,
    Host,
    ModelQueue,
    ObjectiveEntry,
    Request,
    make_request,
)
from shardline.sim.routing import candidates, choose, serving_for
from shardline.sim.scenario import CATALOG_OBJECTIVE, Scenario
from shardline.sim.workload import Workload

# As ``shardline.node.sdk.client`` (not imported: it needs grpclib): one request on at most
# this many nodes; a node whose connection failed is skipped this long.
MAX_ATTEMPTS = 3
DOWN_FOR_S = 1.0

DEADLINE = "DEADLINE_EXCEEDED"
UNAVAILABLE = "UNAVAILABLE"
OK_CODE = STATUS_CODE[OK]


class Checker(Protocol):
    """The safety checker as the request path reports to it (``shardline.sim.checks.Safety``)."""

    def routed(self, req: Request, via: Host, target: str) -> None:
        """``via`` sends ``req`` to ``target``, which is down or dead in ``via``'s view."""

    def answered(self, reqs: list[Request], model_key: str, server: Host) -> None:
        """Answers from ``model_key`` (one batch on ``server``)."""


class RequestWorld(Protocol):
    """What the request engine takes from the world (``shardline.sim.world.World``) when it
    starts."""

    @property
    def loop(self) -> EventLoop: ...
    @property
    def net(self) -> Network: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def safety(self) -> Checker: ...
    @property
    def scenario(self) -> Scenario: ...
    @property
    def seed(self) -> int: ...
    @property
    def workload(self) -> Workload: ...
    @property
    def nodes(self) -> Mapping[str, Host]:
        """Every node by id (added to, never replaced)."""

    @property
    def down_since(self) -> dict[str, float]:
        """Node id -> when its process died or left (while it is down)."""


class RequestEngine:
    """Moves every request through the cluster (see the module docstring)."""

    def __init__(self, world: RequestWorld) -> None:
        self.loop = world.loop
        self.net = world.net
        self.metrics = world.metrics
        self.safety = world.safety
        objectives = world.scenario.objectives
        self.names = [o.name for o in objectives]
        self.deadline_s = [o.deadline_ms / 1000.0 for o in objectives]
        workload = world.scenario.workload
        self.countries = workload.countries
        self.devices = workload.devices
        self._attributes = world.workload.attributes  # a user's (country, device) indexes
        self.open: dict[int, Request] = {}
        catalog = world.scenario.catalog
        self.catalog_keys = catalog.keys() if catalog is not None else None
        self.user_ids = [f"u{i}" for i in range(workload.users)]
        self._contexts: dict[int, RequestContext] = {}
        self._rng = derive_rng(world.seed, "client")
        self.nodes = world.nodes
        self._down = world.down_since  # where sent to one of these: check (Safety.routed)
        self.client_nodes: list[Host] = []  # the node list the clients last fetched
        # The SDK client (``shardline.node.sdk.client.Client``) skips a node whose
        # connection failed for DOWN_FOR_S, and one whose health Watch stream broke (its
        # process died: the connection resets) until it serves again: node id -> until.
        self.client_down: dict[str, float] = {}
        self.interned: Registry = {}  # candidate tuples (shardline.sim.candidates)
        self._next_rid = 0
        self.shadows_sent = 0
        self.routes = 0
        self._at_owner_fn = self._at_owner  # bound once (the hot event)
        net = self.net  # its constants, for the hot paths
        self._base_s, self._jitter_s, self._client_s = net.base_s, net.jitter_s, net.client_s
        self._random = net.random

    # ------------------------------------------------------------------ users

    def decide(self, entry: ObjectiveEntry, user: int) -> Decision:
        """``evaluate`` under the objective revision; a catalog scenario's objective
        names the model directly: its ``user`` is the model's index (a Zipf draw)."""
        if self.catalog_keys is not None and entry.name == CATALOG_OBJECTIVE:
            return new_decision(entry.name, self.catalog_keys[user], "", (), "catalog")
        return evaluate(entry.config, self.context(user))

    def context(self, user: int) -> RequestContext:
        ctx = self._contexts.get(user)
        if ctx is None:
            country, device = self._attributes(user)
            ctx = RequestContext(f"u{user}", self.countries[country], self.devices[device])
            self._contexts[user] = ctx
        return ctx

    # ------------------------------------------------------------------ client

    def new_request(self, obj: int, user: int, pick: float) -> None:
        """A request reaches the ingress the client picked (now).

        The simulator's hottest path: when the ingress takes the request, ``route`` (but
        for shadow copies and a ring without owners) and the first ``_attempt`` (a forward
        to a live owner over a clean network) run inline here, in the same order; anything
        else goes through those methods themselves."""
        loop = self.loop
        now = loop.now
        t0 = now - (self._client_s + self._jitter_s * self._random())
        rid = self._next_rid = self._next_rid + 1
        nodes = self.client_nodes
        if not nodes:
            self.metrics.record_unrouted(rid, obj, t0, now)
            return
        node = nodes[_floor(pick * len(nodes))]  # (floor: int() of a float, but cheaper)
        if self.client_down and node.node_id in self.client_down:
            node = self._usable(nodes, pick, ())
        deadline = t0 + self.deadline_s[obj]
        req = make_request(rid, t0, obj, user, deadline, node)
        self.open[rid] = req
        if not node.accepting or node.frozen:
            self.arrive(req)
            return
        # route(req), inline:
        objective_at = node.objective_at
        entry = objective_at[obj] if objective_at else None
        if entry is None or now >= deadline:
            self.route(req)
            return
        decision = entry.decisions.get(user)
        if decision is None:  # evaluate is pure: memoized per (objective revision, user)
            decision = entry.decisions[user] = self.decide(entry, user)
        if decision.shadows:
            self.route(req)
            return
        key = decision.model_key
        serving = node.cand.get(key)
        if serving is None:
            serving = serving_for(node, key, self.interned)
            if serving is None:  # no owner on its ring: route answers
                self.route(req)
                return
        req.key = key
        req.cell = decision.cell
        req.rev = entry.revision
        req.t_route = now
        chosen = choose(node, serving, user, self.user_ids)
        attempts = serving.orders.get(chosen)
        req.attempts = serving.attempts(chosen) if attempts is None else attempts
        # self._attempt(req), inline:
        if chosen == node.node_id or chosen not in node.view.members or not self.net.clean:
            self._attempt(req)
            return
        req.mid = None
        self.routes += 1
        if chosen in self._down or chosen in node.view.dead:  # (else routed finds nothing)
            self.safety.routed(req, node, chosen)
        loop.seq += 1  # loop.at(now + delay, self._at_owner, req), inline (delays are >= 0)
        when = now + (self._base_s + self._jitter_s * self._random())
        heappush(loop.heap, (when, loop.seq, self._at_owner_fn, req))

    def arrive(self, req: Request) -> None:
        node = req.ingress
        if not node.accepting:  # connection refused
            until = self.loop.now + DOWN_FOR_S
            if self.client_down.get(node.node_id, 0.0) < until:
                self.client_down[node.node_id] = until
            self._client_error(req, UNAVAILABLE, self.loop.now + self.net.client())
        elif node.frozen:
            node.defer(self.route, req)
        else:
            self.route(req)

    def _client_error(self, req: Request, status: str, at: float) -> None:
        """An error reaches the client at ``at``: on UNAVAILABLE it retries on another node
        (``Client.predict_raw``: at most MAX_ATTEMPTS nodes, skipping those known down)."""
        if req.done:
            return
        if at >= req.deadline:
            self.finish(req, DEADLINE, req.deadline)
            return
        nodes = self.client_nodes
        if status == UNAVAILABLE and req.tries < MAX_ATTEMPTS:
            tried = (*req.tried, req.ingress)
            others = [n for n in nodes if n not in tried]
            if others:
                ingress = self._usable(others, self._rng.random(), tried)
                nxt = req.retry(ingress)
                self.open[req.rid] = nxt
                self.loop.at(at + self.net.client(), self.arrive, nxt)
                return
        self.finish(req, status, at)

    def _usable(self, nodes: list[Host], pick: float, tried: tuple[Host, ...]) -> Host:
        """``Client._pick``: a node the client does not know to be down, else any (``pick``
        in [0, 1) chooses among them)."""
        now = self.loop.now
        down = self.client_down
        for node_id in [n for n, until in down.items() if until <= now]:
            del down[node_id]
        usable = [n for n in nodes if n.node_id not in down and n not in tried] or nodes
        return usable[_floor(pick * len(usable))]

    # ------------------------------------------------------------------ ingress

    def route(self, req: Request) -> None:
        """``Runtime.predict`` -> ``resolve`` -> ``ClusterRouter.route`` on the ingress."""
        if req.done:
            return
        node = req.ingress
        now = self.loop.now
        if not node.accepting:
            self._client_error(req, UNAVAILABLE, now + self.net.client())
            return
        if now >= req.deadline:
            self.finish(req, DEADLINE, req.deadline)
            return
        entry = node.objective_at[req.obj] if node.objective_at else None
        if entry is None:
            self._reply(req, "NOT_FOUND")
            return
        user = req.user
        decision = entry.decisions.get(user)
        if decision is None:  # evaluate is pure: memoized per (objective revision, user)
            decision = entry.decisions[user] = self.decide(entry, user)
        key = decision.model_key
        req.key = key
        req.cell = decision.cell
        req.rev = entry.revision
        req.t_route = now
        serving = serving_for(node, key, self.interned)
        if serving is None:  # no owner on its ring
            self._reply(req, UNAVAILABLE)
            return
        chosen = choose(node, serving, user, self.user_ids)
        if decision.shadows:
            self._shadows(node, req, decision)
        req.attempts = serving.attempts(chosen)
        self._attempt(req)

    def _attempt(self, req: Request) -> None:
        node = req.ingress
        target = req.attempts[req.idx]
        req.mid = None
        if target == node.node_id:
            self.routes += 1
            executor = node.executors.get(req.key)
            if executor is None and node.cold is not None and node.cold(req, 0):
                return  # waits here for the model's load (a cold start)
            status = UNAVAILABLE if executor is None else executor.offer(req)
            if status is not None:
                self._failed(req, status)
            return
        if target not in node.view.members:  # ("not in the membership view": not sent)
            self._failed(req, UNAVAILABLE)
            return
        self.routes += 1
        if target in self._down or target in node.view.dead:  # (else routed finds nothing)
            self.safety.routed(req, node, target)
        net = self.net
        delay = (
            net.base_s + net.jitter_s * net.random() if net.clean else net.rpc(node.node_id, target)
        )
        if delay is None:
            self._hang(req)
        else:
            self.loop.at(self.loop.now + delay, self._at_owner_fn, req)

    def _failed(self, req: Request, status: str) -> None:
        """``call_with_failover``: the next owner on a retryable failure, while time is left."""
        if status in RETRYABLE and req.idx + 1 < len(req.attempts) and self.loop.now < req.deadline:
            req.idx += 1
            self._attempt(req)
        else:
            self._reply(req, UNAVAILABLE if status == "CONNECTION" else status)

    def _failed_event(self, arg: tuple[Request, str]) -> None:
        req, status = arg
        node = req.ingress
        if req.done or not node.up:
            return
        if node.frozen:
            node.defer(self._failed_event, arg)
            return
        self._failed(req, status)

    def _reply(self, req: Request, status: str) -> None:
        self._client_error(req, status, self.loop.now + self.net.client())

    def _hang(self, req: Request) -> None:
        """No answer will ever come: the ingress's call times out at the deadline."""
        self.finish(req, DEADLINE, req.deadline)

    # ------------------------------------------------------------------ owners

    def _at_owner(self, req: Request) -> None:
        if req.done:
            return
        node = self.nodes[req.attempts[req.idx]]
        if node.accepting and not node.frozen:
            executor = node.executors.get(req.key)
            if executor is not None:
                status = executor.offer(req)
                if status is not None:
                    self._error_back(req, node, status, 1)
                return
        self._serve_forward(req, node, 1)

    def _at_second(self, req: Request) -> None:
        if not req.done:
            self._serve_forward(req, self.nodes[req.second], 2)

    def _serve_forward(self, req: Request, node: Host, hops: int) -> None:
        """``ClusterRouter.serve_forward`` on the owner a forward reached."""
        if not node.accepting:
            self._error_back(req, node, "CONNECTION", hops)
            return
        if node.frozen:
            node.defer(self._at_owner if hops == 1 else self._at_second, req)
            return
        key = req.key
        executor = node.executors.get(key)
        if executor is not None:
            status = executor.offer(req)
            if status is not None:
                self._error_back(req, node, status, hops)
            return
        if node.cold is not None and node.cold(req, hops):
            return  # placed here, not resident: waits for the load (a cold start)
        if hops >= MAX_HOPS:
            self._error_back(req, node, UNAVAILABLE, hops)
            return
        owners = node.ring.owners(key, node.replicas.get(key, 2))
        skip = (node.node_id, req.ingress.node_id)
        others = [o for o in candidates(node, key, owners, self.interned).full if o not in skip]
        if not others:
            self._error_back(req, node, UNAVAILABLE, hops)
            return
        target = others[0]
        if target not in node.view.members:
            self._error_back(req, node, UNAVAILABLE, hops)
            return
        self.routes += 1
        if target in self._down or target in node.view.dead:  # (else routed finds nothing)
            self.safety.routed(req, node, target)
        delay = self.net.rpc(node.node_id, target)
        if delay is None:
            self._hang(req)
            return
        req.mid, req.second = node, target
        self.loop.at(self.loop.now + delay, self._at_second, req)

    def loaded_for(self, req: Request, node: Host, hops: int, executor: ModelQueue) -> None:
        """A request that waited on ``node`` for a cold start: the model is resident now
        (0 hops: ``node`` is the ingress)."""
        if req.done:
            return
        if self.loop.now >= req.deadline:
            self.finish(req, DEADLINE, req.deadline)
            return
        status = executor.offer(req)
        if status is not None:
            self.owner_error(req, node, status, hops)

    def owner_error(self, req: Request, node: Host, status: str, hops: int) -> None:
        """The owner ``node`` cannot serve ``req`` (0 hops: it is the ingress itself)."""
        if req.done:
            return
        if hops == 0:
            self._failed(req, status)
        else:
            self._error_back(req, node, status, hops)

    def _error_back(self, req: Request, node: Host, status: str, hops: int) -> None:
        """An error travels back to the ingress (through the first owner on a second hop)."""
        ingress = req.ingress
        t = self.loop.now
        mid = req.mid if hops == 2 else None
        if mid is not None:
            first = self.net.rpc(node.node_id, mid.node_id)
            back = self.net.rpc(mid.node_id, ingress.node_id)
            status = UNAVAILABLE if status == "CONNECTION" else status  # error_for_status
        else:
            first, back = 0.0, self.net.rpc(node.node_id, ingress.node_id)
        if first is None or back is None:
            self._hang(req)
            return
        self.loop.at(t + first + back, self._failed_event, (req, status))

    # ------------------------------------------------------------------ answers

    def executed(self, batch: list[Request], executor: Executor) -> None:
        """A batch finished on ``executor``: each answer travels back to its client.

        The answers are recorded in order; the safety checker sees them as one batch."""
        now = self.loop.now
        server = executor.node
        net = self.net
        clean = net.clean
        base, jitter, client_s, rnd = net.base_s, net.jitter_s, net.client_s, net.random
        metrics = self.metrics
        row = metrics.rows.extend
        server_index = server.index
        opened = self.open
        answered: list[Request] = []
        for req in batch:
            if req.done or req.shadow:
                continue
            deadline = req.deadline
            if now >= deadline:
                self.finish(req, DEADLINE, deadline)
                continue
            ingress = req.ingress
            t = now
            mid = req.mid
            if mid is not None:
                if not mid.up:
                    self._failed_event((req, "CONNECTION"))
                    continue
                a, b = net.rpc(server.node_id, mid.node_id), net.rpc(mid.node_id, ingress.node_id)
                if a is None or b is None:
                    self._hang(req)
                    continue
                t += a + b
            elif server is not ingress:
                if clean:
                    t += base + jitter * rnd()
                else:
                    back = net.rpc(server.node_id, ingress.node_id)
                    if back is None:
                        self._hang(req)
                        continue
                    t += back
            if ingress.frozen and ingress.frozen_until > t:
                t = ingress.frozen_until
            t += client_s + jitter * rnd()
            if t >= deadline:
                self.finish(req, DEADLINE, deadline)
                continue
            answered.append(req)
            req.done = True
            del opened[req.rid]  # (a request not done is the open attempt of its rid)
            row((t, req.t0, OK_CODE, req.obj, server_index))  # metrics.record(req, OK, ...)
        if answered:
            server.served += len(answered)
            self.safety.answered(answered, executor.key, server)
            if len(metrics.rows) >= FLUSH_VALUES:
                metrics.flush_rows()

    def expired_in_queue(self, req: Request) -> None:
        """Dropped at batch closing: its asker gave up at the deadline."""
        if not req.done and not req.shadow:
            self.finish(req, DEADLINE, req.deadline)

    def finish(self, req: Request, status: str, at: float, server: Host | None = None) -> None:
        if req.done:
            return
        req.done = True
        if self.open.get(req.rid) is req:
            del self.open[req.rid]
        self.metrics.record(req, status, at, server)

    # ------------------------------------------------------------------ crashes, shadows

    def node_crashed(self, node: Host, executors: list[ModelQueue]) -> None:
        """Connections to ``node`` reset: its callers fail over, its clients retry (and
        skip it until it serves again: their health Watch streams broke)."""
        now = self.loop.now
        self.client_down[node.node_id] = math.inf
        for executor in executors:
            for req in executor.kill():
                if req.done or req.shadow or req.ingress is node:
                    continue
                self._error_back(req, node, "CONNECTION", 2 if req.mid is not None else 1)
        for req in sorted(self.ingress_requests(node), key=lambda r: r.rid):
            self._client_error(req, UNAVAILABLE, now + self.net.client())

    def ingress_requests(self, node: Host) -> list[Request]:
        """The requests ``node`` routed as ingress and has not answered its client yet
        (the open ones it routed: every request not done is the open one of its id)."""
        return [r for r in self.open.values() if r.ingress is node and r.attempts and not r.done]

    def _shadows(self, node: Host, req: Request, decision: Decision) -> None:
        """Fire-and-forget copies to each shadow model's sticky warm owner."""
        for key in decision.shadows:
            serving = serving_for(node, key, self.interned)
            if serving is None or not serving.ids:
                continue
            target = self.nodes[serving.rendezvous(req.user, self.user_ids[req.user])]
            copy = make_request(-req.rid, req.t0, req.obj, req.user, req.deadline, node)
            copy.shadow, copy.key = True, key
            self.shadows_sent += 1
            delay = 0.0 if target is node else self.net.rpc(node.node_id, target.node_id)
            if delay is not None:
                self.loop.at(self.loop.now + delay, self._shadow_arrives, (copy, target))

    def _shadow_arrives(self, arg: tuple[Request, Host]) -> None:
        copy, target = arg
        executor = target.executors.get(copy.key) if target.accepting else None
        if executor is not None and not target.frozen:
            executor.offer(copy)
