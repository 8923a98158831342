"""Mailboxes: the bounded queues in front of actors (`shardline.node.serving.actors`), and their
errors.

A :class:`Mailbox` is a bounded FIFO of :class:`Envelope` s (a message, its enqueue time,
an optional deadline and, for an ``ask``, the reply future) with an async ``get`` and a
close/drain protocol. A full mailbox rejects new messages with :class:`MailboxFullError`
(backpressure, never an unbounded queue); a closed one with :class:`ActorStoppedError`.
Envelopes handed out that expect a reply stay tracked as in flight until answered, so the
supervisor can fail them when an actor crashes. A :class:`FairMailbox` shares one capacity
among flows (e.g. the objectives calling one model) and takes their messages in turn.

Imports: the standard library only (`shardline.node.serving.actors` builds on this module; it
imports nothing of shardline).
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = [
    "ActorError",
    "ActorStoppedError",
    "Envelope",
    "FairMailbox",
    "Mailbox",
    "MailboxFullError",
]

M = TypeVar("M")


class ActorError(Exception):
    """Base class of every error raised by the actor runtime."""


class MailboxFullError(ActorError):
    """The actor's mailbox is at capacity: the caller should shed load or retry later."""


class ActorStoppedError(ActorError):
    """The actor is stopped or stopping and accepts no more messages."""


class Envelope(Generic[M]):
    """A message in a mailbox, with its enqueue time, optional deadline and reply future."""

    __slots__ = ("_reply", "deadline", "enqueued_at", "message")

    def __init__(
        self,
        message: M,
        *,
        enqueued_at: float,
        deadline: float | None = None,
        reply: asyncio.Future[object] | None = None,
    ) -> None:
        self.message = message
        self.enqueued_at = enqueued_at  # loop.time() when enqueued
        self.deadline = deadline  # loop.time() deadline, if the asker gave one
        self._reply = reply

    def set_result(self, value: object) -> None:
        """Resolve the reply; a no-op for a tell or an already resolved reply."""
        if self._reply is not None and not self._reply.done():
            self._reply.set_result(value)

    def set_exception(self, exc: BaseException) -> None:
        """Fail the reply; a no-op for a tell or an already resolved reply."""
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(exc)

    @property
    def done(self) -> bool:
        """The reply is already resolved (e.g. the asker timed out): skip the message."""
        return self._reply is not None and self._reply.done()

    @property
    def expects_reply(self) -> bool:
        return self._reply is not None

    def __repr__(self) -> str:
        kind = "ask" if self.expects_reply else "tell"
        return f"Envelope({kind}, {self.message!r}, done={self.done})"


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Mailbox(Generic[M]):
    """A bounded FIFO of envelopes with an async ``get`` and a close/drain protocol.

    Envelopes handed out by ``get``/``get_nowait`` that expect a reply are tracked as in
    flight until resolved, so the system can fail them if the actor crashes or is cancelled.
    """

    def __init__(self, capacity: int, *, name: str = "<unnamed>") -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"mailbox capacity must be an int >= 1, got {capacity!r}")
        self.capacity = capacity
        self.name = name
        self._items: deque[Envelope[M]] = deque()
        self._getters: list[asyncio.Future[None]] = []
        self._in_flight: set[Envelope[M]] = set()
        self._closed = False
        self._close_reason: str | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    def put_nowait(self, env: Envelope[M]) -> None:
        if self._closed:
            raise ActorStoppedError(self._stopped_message())
        if self.qsize() >= self.capacity:
            # Envelopes whose askers gave up still take room; drop them before refusing.
            self._drop_done()
            if self.qsize() >= self.capacity:
                raise MailboxFullError(
                    f"overloaded: mailbox of actor {self.name!r} is full (capacity {self.capacity})"
                )
        self._push(env)
        self._wake_getters()

    async def get(self) -> Envelope[M]:
        """Next envelope; raises :class:`ActorStoppedError` once closed and empty."""
        while not self.qsize():
            if self._closed:
                raise ActorStoppedError(self._stopped_message())
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._getters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._getters:
                    self._getters.remove(waiter)
        return self._take(self._pop())

    async def get_within(self, timeout_s: float) -> Envelope[M] | None:
        """Next envelope if one is queued or arrives within ``timeout_s``, else ``None``;
        raises :class:`ActorStoppedError` once closed and empty. Nothing is taken unless
        it is returned, so a cancelled wait loses nothing."""
        if not self.qsize():
            if self._closed:
                raise ActorStoppedError(self._stopped_message())
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()
            self._getters.append(waiter)
            timer = loop.call_later(timeout_s, _resolve, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                if waiter in self._getters:
                    self._getters.remove(waiter)
            if not self.qsize():
                if self._closed:
                    raise ActorStoppedError(self._stopped_message())
                return None
        return self._take(self._pop())

    def get_nowait(self) -> Envelope[M] | None:
        """Next envelope, or ``None`` when empty."""
        return self._take(self._pop()) if self.qsize() else None

    def arrival(self) -> asyncio.Future[None]:
        """A future resolved at the next put (or close). Await it with others (e.g.
        ``asyncio.wait``) and, if it did not fire, pass it to :meth:`forget_arrival`."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._getters.append(waiter)
        return waiter

    def forget_arrival(self, waiter: asyncio.Future[None]) -> None:
        if waiter in self._getters:
            self._getters.remove(waiter)

    def flows(self) -> dict[Hashable, int]:
        """Flow -> envelopes queued; empty for a FIFO mailbox (it knows no flows)."""
        return {}

    def get_from(self, flow: Hashable) -> Envelope[M] | None:
        """The next envelope of ``flow`` out of turn, or ``None`` when it has none."""
        return None

    def put_back(self, env: Envelope[M]) -> None:
        """Return an envelope taken from this mailbox and not started to the head of the
        queue (of its flow): it is handed out next. Allowed even when full or closed (it
        was counted when it was put); its reply stays with whoever holds it."""
        self._in_flight.discard(env)
        self._push_front(env)
        self._wake_getters()

    def qsize(self) -> int:
        return len(self._items)

    def depth_ahead(self, flow: Hashable) -> int:
        """How many queued envelopes would be handed out before one of ``flow`` put now
        (FIFO: all of them, whatever the flow)."""
        return len(self._items)

    # Storage: a FIFO here; :class:`FairMailbox` keeps one queue per flow.
    def _push(self, env: Envelope[M]) -> None:
        self._items.append(env)

    def _pop(self) -> Envelope[M]:
        return self._items.popleft()

    def _push_front(self, env: Envelope[M]) -> None:
        self._items.appendleft(env)

    def _drop_done(self) -> None:
        self._items = deque(e for e in self._items if not e.done)

    def _clear(self) -> list[Envelope[M]]:
        items, self._items = list(self._items), deque()
        return items

    def close(self, reason: str | None = None) -> None:
        """Refuse further puts; gets still drain what is queued. Idempotent."""
        if not self._closed:
            self._closed = True
            self._close_reason = reason
        self._wake_getters()

    def fail_all(self, exc: BaseException) -> int:
        """Remove every queued envelope, failing its reply with ``exc``; return the count."""
        items = self._clear()
        for env in items:
            env.set_exception(exc)
        return len(items)

    def fail_in_flight(self, exc: BaseException) -> int:
        """Fail envelopes taken from the mailbox but not yet answered; return the count."""
        pending = [env for env in self._in_flight if not env.done]
        self._in_flight.clear()
        for env in pending:
            env.set_exception(exc)
        return len(pending)

    def _take(self, env: Envelope[M]) -> Envelope[M]:
        reply = env._reply
        if reply is not None and not reply.done():
            self._in_flight.add(env)
            reply.add_done_callback(functools.partial(self._forget, env))
        return env

    def _forget(self, env: Envelope[M], _reply: asyncio.Future[object]) -> None:
        self._in_flight.discard(env)

    def _wake_getters(self) -> None:
        for waiter in self._getters:
            _resolve(waiter)
        self._getters.clear()

    def _stopped_message(self) -> str:
        suffix = f": {self._close_reason}" if self._close_reason else ""
        return f"actor {self.name!r} is stopped{suffix}"


class FairMailbox(Mailbox[M]):
    """A bounded mailbox shared fairly by flows (e.g. the objectives calling one model).

    Each message belongs to a flow (``flow_of(message)``); envelopes queue per flow and
    ``get`` takes the next message of the flow with queued work that has been served least
    lately (each flow's count of messages taken, decaying with a ``SERVICE_HALF_LIFE_S``
    half-life; ties in turn, round robin). A flow that asks less than its share of the
    actor is therefore served before a flow that asks more, bursts included, and two flows
    that both ask more than their share alternate; no flow starves, as a flow served first
    is soon served most. The half-life is short (0.2 s) because it also bounds how long a
    flood that begins goes first while its count catches up with a steady flow's (about
    log2(1 + the steady flow's share) half-lives; at 1 s, a flood beside a flow at 45 % of
    the model went first for half a second). The capacity bounds all flows together, as
    for :class:`Mailbox`.

    Counts are kept scaled to a common epoch (every count decays by the same factor, so
    they compare without it): a pop costs one pass over the flows with queued work.
    """

    SERVICE_HALF_LIFE_S = 0.2
    _REBASE = 500.0  # rescale the counts when the epoch's factor reaches e**500

    def __init__(
        self, capacity: int, flow_of: Callable[[M], Hashable], *, name: str = "<unnamed>"
    ) -> None:
        super().__init__(capacity, name=name)
        self.flow_of = flow_of
        self._flows: dict[Hashable, deque[Envelope[M]]] = {}  # insertion order = turn order
        self._size = 0
        self._decay = math.log(2.0) / self.SERVICE_HALF_LIFE_S
        self._epoch = time.monotonic()
        self._score: dict[Hashable, float] = {}  # flow -> count * e**(decay * (t - epoch))

    def _scale(self, now: float) -> float:
        """e**(decay * (now - epoch)): a count now, times this, is a score."""
        x = self._decay * (now - self._epoch)
        if x > self._REBASE:  # keep the scores finite: move the epoch to now
            factor = math.exp(-x)
            self._score = {f: v * factor for f, v in self._score.items() if v * factor > 1e-6}
            self._epoch, x = now, 0.0
        return math.exp(x)

    def served(self, flow: Hashable, now: float | None = None) -> float:
        """How much ``flow`` has been served lately (decayed count of messages taken)."""
        now = time.monotonic() if now is None else now
        return self._score.get(flow, 0.0) / self._scale(now)

    def active_flows(self, now: float | None = None) -> int:
        """How many flows have been served lately (at least one message's worth, decayed),
        not counting internal ones (names starting with ``~``: shadow copies, warm-up)."""
        threshold = self._scale(time.monotonic() if now is None else now)
        return sum(
            1
            for flow, score in self._score.items()
            if score >= threshold and not (isinstance(flow, str) and flow.startswith("~"))
        )

    def _next_flow(self) -> Hashable:
        """The flow whose message goes next: least served lately, ties in turn order."""
        flows = self._flows
        if len(flows) == 1:
            return next(iter(flows))
        score = self._score
        best: Hashable = None
        least = math.inf
        for flow in flows:
            s = score.get(flow, 0.0)
            if s < least:
                best, least = flow, s
        return best

    def qsize(self) -> int:
        return self._size

    def flow_depths(self) -> dict[Hashable, int]:
        return {flow: len(q) for flow, q in self._flows.items()}

    def depth_ahead(self, flow: Hashable) -> int:
        """A new envelope of ``flow`` waits for its flow's queue (``turns - 1`` envelopes)
        and, from each other flow, for the envelopes taken while that flow has been served
        less: as many as its lead over the other flow plus ``turns`` (round robin when
        both were served alike), at most all it has. An estimate: counts also decay while
        the queue drains, which on a slow model lets a heavier flow in a little more often
        than this says (the actor still drops a request whose deadline passed)."""
        own = self._flows.get(flow)
        turns = (len(own) if own else 0) + 1
        scale = self._scale(time.monotonic())
        mine = self._score.get(flow, 0.0) / scale
        ahead = turns - 1
        for other, queue in self._flows.items():
            if queue is not own:
                lead = math.floor(mine - self._score.get(other, 0.0) / scale)
                ahead += min(len(queue), max(0, lead + turns))
        return ahead

    def _push(self, env: Envelope[M]) -> None:
        flow = self.flow_of(env.message)
        queue = self._flows.get(flow)
        if queue is None:
            queue = self._flows[flow] = deque()
        queue.append(env)
        self._size += 1

    def _pop(self) -> Envelope[M]:
        flow = self._next_flow()
        queue = self._flows.pop(flow)
        env = queue.popleft()
        if queue:
            self._flows[flow] = queue  # to the back of the turn order
        self._size -= 1
        self._count(flow)
        return env

    def _count(self, flow: Hashable, n: float = 1.0) -> None:
        scale = self._scale(time.monotonic())
        self._score[flow] = max(0.0, self._score.get(flow, 0.0) + n * scale)
        if len(self._score) > 4 * len(self._flows) + 64:  # forget flows long gone
            for f in [f for f, v in self._score.items() if f not in self._flows]:
                if self._score[f] < 0.01 * scale:
                    del self._score[f]

    def flows(self) -> dict[Hashable, int]:
        return self.flow_depths()

    def get_from(self, flow: Hashable) -> Envelope[M] | None:
        """The next envelope of ``flow`` out of turn (the turn order is left as it is)."""
        queue = self._flows.get(flow)
        if not queue:
            return None
        env = queue.popleft()
        if not queue:
            del self._flows[flow]
        self._size -= 1
        self._count(flow)
        return self._take(env)

    def _push_front(self, env: Envelope[M]) -> None:
        """Back to the head of its flow's queue; a flow with nothing queued takes the
        first turn (the envelope had its turn already)."""
        flow = self.flow_of(env.message)
        queue = self._flows.get(flow)
        if queue is None:
            self._flows = {flow: deque([env]), **self._flows}
        else:
            queue.appendleft(env)
        self._size += 1
        self._count(flow, -1.0)  # (not served after all)

    def _drop_done(self) -> None:
        for flow in list(self._flows):
            kept = deque(e for e in self._flows[flow] if not e.done)
            if kept:
                self._flows[flow] = kept
            else:
                del self._flows[flow]
        self._size = sum(len(q) for q in self._flows.values())

    def _clear(self) -> list[Envelope[M]]:
        items = [env for q in self._flows.values() for env in q]
        self._flows.clear()
        self._size = 0
        return items
