"""A small asyncio actor runtime for a shardline node: actors, their refs, supervision.

An actor owns its state and a bounded mailbox (`shardline.node.serving.mailbox`); other code talks
to it through an :class:`ActorRef` (``tell`` = fire and forget, ``ask`` = request/reply with an
optional timeout). A full mailbox rejects new messages with ``MailboxFullError`` (backpressure,
never an unbounded queue). The :class:`ActorSystem` supervises every actor: when an actor's
``run()`` crashes it is recreated from its factory after an exponential, capped backoff and keeps
consuming the *same* mailbox, so queued messages survive the restart; an actor that crashes more
than its :class:`RestartPolicy` allows is stopped for good. Stopping an actor either drains its
mailbox or fails every pending ask with ``ActorStoppedError``.

Lifecycle rules: ``on_stop`` runs once for every instance whose ``on_start`` completed
(crashed instances included); the first ``on_start`` runs inside :meth:`ActorSystem.spawn`
and, if it raises, ``spawn`` raises and nothing is registered.

Imports: the standard library and `shardline.node.serving.mailbox` only.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from shardline.node.serving.mailbox import (
    ActorError,
    ActorStoppedError,
    Envelope,
    FairMailbox,
    Mailbox,
)

__all__ = [
    "Actor",
    "ActorRef",
    "ActorSystem",
    "AskTimeoutError",
    "RestartPolicy",
]

logger = logging.getLogger("shardline.actors")

M = TypeVar("M")


class AskTimeoutError(ActorError, TimeoutError):
    """An ``ask`` got no reply before its timeout."""


class Actor(Generic[M]):
    """Subclass this. One instance per (re)start; state lives on the instance."""

    name: str = ""  # set by the system before on_start

    async def on_start(self) -> None:
        return None

    async def receive(self, message: M) -> object:
        raise NotImplementedError(f"{type(self).__name__} does not implement receive()")

    async def on_stop(self) -> None:
        return None

    async def run(self, mailbox: Mailbox[M]) -> None:
        """Default loop: for each envelope, skip it if ``env.done``, else call ``receive`` and
        ``set_result`` / ``set_exception``. If ``receive`` raises, the envelope gets the
        exception AND the exception propagates (the actor crashed -> supervisor restarts it).
        Subclasses (e.g. a batching model actor) override run() to take several envelopes
        at once with ``mailbox.get()`` / ``mailbox.get_nowait()``."""
        while True:
            env = await mailbox.get()  # ActorStoppedError once closed and drained: we're done
            if env.done:
                continue
            try:
                result = await self.receive(env.message)
            except Exception as exc:
                env.set_exception(exc)
                raise
            env.set_result(result)


def _check_finite(name: str, value: float, *, positive: bool) -> None:
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")


@dataclass(frozen=True)
class RestartPolicy:
    """How the supervisor restarts a crashed actor."""

    max_restarts: int = 5  # within window_s; exceeding it stops the actor for good
    window_s: float = 60.0
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 5.0
    backoff_multiplier: float = 2.0

    def __post_init__(self) -> None:
        if isinstance(self.max_restarts, bool) or self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {self.max_restarts!r}")
        _check_finite("window_s", self.window_s, positive=True)
        _check_finite("backoff_initial_s", self.backoff_initial_s, positive=False)
        _check_finite("backoff_max_s", self.backoff_max_s, positive=False)
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        if not math.isfinite(self.backoff_multiplier) or self.backoff_multiplier < 1:
            raise ValueError(f"backoff_multiplier must be >= 1, got {self.backoff_multiplier!r}")

    def backoff_s(self, attempt: int) -> float:
        """Delay before the ``attempt``-th consecutive restart (0-based), capped."""
        try:
            delay = self.backoff_initial_s * self.backoff_multiplier**attempt
        except OverflowError:
            delay = math.inf
        return min(delay, self.backoff_max_s)


_DEFAULT_RESTART = RestartPolicy()


class _Cell(Generic[M]):
    """Everything the system knows about one spawned actor."""

    def __init__(
        self,
        name: str,
        factory: Callable[[], Actor[M]],
        mailbox: Mailbox[M],
        policy: RestartPolicy,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.name = name
        self.factory = factory
        self.mailbox = mailbox
        self.policy = policy
        self.loop = loop
        self.actor: Actor[M] | None = None  # the started instance, if any
        self.task: asyncio.Task[None] | None = None
        self.restarts = 0
        self.stopping = False
        self.finalizing = False
        self.stopped = asyncio.Event()


def _expire(reply: asyncio.Future[object], name: str, timeout_s: float) -> None:
    if not reply.done():
        reply.set_exception(
            AskTimeoutError(f"ask to actor {name!r} timed out after {timeout_s:g}s")
        )


class ActorRef(Generic[M]):
    """A handle to a spawned actor; stays valid (but dead) after the actor stops."""

    __slots__ = ("_cell",)

    def __init__(self, cell: _Cell[M]) -> None:
        self._cell = cell

    @property
    def name(self) -> str:
        return self._cell.name

    def tell(self, message: M) -> None:
        """Fire and forget; raises MailboxFullError / ActorStoppedError."""
        env = Envelope(message, enqueued_at=self._cell.loop.time())
        self._cell.mailbox.put_nowait(env)

    async def ask(self, message: M, timeout_s: float | None = None) -> object:
        """Send and await the reply; AskTimeoutError after ``timeout_s`` seconds."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline: float | None = None
        if timeout_s is not None:
            if math.isnan(timeout_s):
                raise ValueError("timeout_s must not be NaN")
            if timeout_s <= 0:
                raise AskTimeoutError(
                    f"ask to actor {self.name!r} timed out: no time left (timeout_s={timeout_s})"
                )
            deadline = now + timeout_s
        reply: asyncio.Future[object] = loop.create_future()
        self._cell.mailbox.put_nowait(
            Envelope(message, enqueued_at=now, deadline=deadline, reply=reply)
        )
        # A timer on the reply future is far cheaper than asyncio.wait/wait_for on the
        # hot path; an expired reply is done, so the actor skips its envelope.
        timer = (
            loop.call_later(timeout_s, _expire, reply, self.name, timeout_s)
            if timeout_s is not None
            else None
        )
        try:
            return await reply
        except asyncio.CancelledError:
            if reply.done() and not reply.cancelled():
                reply.exception()  # mark retrieved: nobody will read it now
            reply.cancel()
            raise
        finally:
            if timer is not None:
                timer.cancel()

    @property
    def mailbox_depth(self) -> int:
        return self._cell.mailbox.qsize()

    def depth_ahead(self, flow: Hashable) -> int:
        """Queued messages the actor would take before a message of ``flow`` told now
        (the whole queue unless the actor was spawned with ``fair_by``)."""
        return self._cell.mailbox.depth_ahead(flow)

    @property
    def alive(self) -> bool:
        """True while the actor accepts messages (running, restarting or starting)."""
        return not self._cell.mailbox.closed

    @property
    def restarts(self) -> int:
        """Restart attempts so far (each new instance after a crash counts once)."""
        return self._cell.restarts

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorRef) and other._cell is self._cell

    def __hash__(self) -> int:
        return id(self._cell)

    def __repr__(self) -> str:
        return f"ActorRef({self.name!r}, alive={self.alive}, depth={self.mailbox_depth})"


class ActorSystem:
    """Spawns, supervises and stops actors on one event loop."""

    def __init__(
        self,
        name: str = "shardline",
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_crash: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self.name = name
        self._sleep = sleep
        self._on_crash = on_crash
        self._cells: dict[str, _Cell[Any]] = {}
        self._shut_down = False

    async def spawn(
        self,
        name: str,
        factory: Callable[[], Actor[M]],
        *,
        mailbox_size: int = 1024,
        restart: RestartPolicy = _DEFAULT_RESTART,
        fair_by: Callable[[M], Hashable] | None = None,
    ) -> ActorRef[M]:
        """Create the actor, await its first ``on_start`` and start supervising it.

        With ``fair_by`` the mailbox is a :class:`FairMailbox` over the flows it names."""
        if self._shut_down:
            raise ActorStoppedError(f"actor system {self.name!r} is shut down")
        if not name:
            raise ValueError("actor name must be non-empty")
        if name in self._cells:
            raise ValueError(f"an actor named {name!r} is already running")
        mailbox: Mailbox[M] = (
            Mailbox(mailbox_size, name=name)
            if fair_by is None
            else FairMailbox(mailbox_size, fair_by, name=name)
        )
        cell = _Cell(name, factory, mailbox, restart, asyncio.get_running_loop())
        self._cells[name] = cell
        try:
            actor = factory()
            actor.name = name
            await actor.on_start()
        except BaseException:
            error = ActorStoppedError(f"actor {name!r} failed to start")
            mailbox.close("failed to start")
            mailbox.fail_all(error)
            self._unregister(cell)
            cell.stopped.set()
            raise
        if cell.stopping:  # stop() was called while on_start ran
            await self._call_on_stop(name, actor)
            raise ActorStoppedError(f"actor {name!r} was stopped while starting")
        cell.actor = actor
        cell.task = asyncio.create_task(self._supervise(cell), name=f"actor:{self.name}/{name}")
        return ActorRef(cell)

    def get(self, name: str) -> ActorRef[Any] | None:
        cell = self._cells.get(name)
        return None if cell is None else ActorRef(cell)

    def names(self) -> list[str]:
        return sorted(self._cells)

    async def stop(
        self, ref_or_name: ActorRef[Any] | str, *, drain: bool = True, timeout_s: float = 10.0
    ) -> None:
        """Stop an actor; stopping an unknown or already stopped actor is a no-op.

        ``drain=True`` lets it finish what is queued and in progress (then ``on_stop``),
        aborting after ``timeout_s``; ``drain=False`` fails everything pending at once.
        """
        if isinstance(ref_or_name, ActorRef):
            cell: _Cell[Any] | None = ref_or_name._cell
        else:
            cell = self._cells.get(ref_or_name)
        if cell is None:
            return
        if cell.stopping:
            await cell.stopped.wait()
            return
        cell.stopping = True
        cell.mailbox.close("stopping")
        task = cell.task
        if task is not None and not task.done():
            if drain:
                await asyncio.wait((task,), timeout=timeout_s)
                if not task.done():
                    await self._abort(cell, task, f"did not drain within {timeout_s:g}s")
            else:
                await self._abort(cell, task, "stopped without draining")
        await self._finalize(cell)

    async def shutdown(self, *, timeout_s: float = 10.0) -> None:
        """Stop every actor with drain, concurrently; later spawns are refused."""
        self._shut_down = True
        cells = list(self._cells.values())
        await asyncio.gather(*(self.stop(ActorRef(c), timeout_s=timeout_s) for c in cells))

    async def _abort(self, cell: _Cell[Any], task: asyncio.Task[None], why: str) -> None:
        error = ActorStoppedError(f"actor {cell.name!r} was stopped: {why}")
        cell.mailbox.fail_all(error)
        task.cancel()
        await asyncio.wait((task,))
        cell.mailbox.fail_in_flight(error)

    async def _supervise(self, cell: _Cell[Any]) -> None:
        mailbox, policy = cell.mailbox, cell.policy
        loop = asyncio.get_running_loop()
        crash_times: deque[float] = deque()
        backoff_step = 0
        while True:
            crash: BaseException
            try:
                if cell.actor is None:
                    if mailbox.closed and mailbox.qsize() == 0:
                        break
                    cell.restarts += 1
                    actor = cell.factory()
                    actor.name = cell.name
                    await actor.on_start()
                    cell.actor = actor
                await cell.actor.run(mailbox)
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise
                crash = exc  # a stray cancellation from inside the actor is a crash
            except ActorStoppedError as exc:
                if mailbox.closed and mailbox.qsize() == 0:
                    break  # closed and drained: the normal end of run()
                crash = exc
            except Exception as exc:
                crash = exc
            else:
                break  # run() returned on its own: the actor is finished

            mailbox.fail_in_flight(crash)
            self._report_crash(cell.name, crash)
            crashed, cell.actor = cell.actor, None
            if crashed is not None:
                await self._call_on_stop(cell.name, crashed)
            now = loop.time()
            while crash_times and now - crash_times[0] > policy.window_s:
                crash_times.popleft()
            if not crash_times:
                backoff_step = 0
            crash_times.append(now)
            if len(crash_times) > policy.max_restarts:
                reason = (
                    f"crashed too often ({len(crash_times)} crashes within "
                    f"{policy.window_s:g}s, max_restarts={policy.max_restarts}); "
                    f"last error: {crash!r}"
                )
                logger.error("actor %r stopped for good: %s", cell.name, reason)
                mailbox.close(reason)
                mailbox.fail_all(ActorStoppedError(f"actor {cell.name!r} {reason}"))
                break
            delay = policy.backoff_s(backoff_step)
            backoff_step += 1
            logger.warning("actor %r: restarting in %.3gs", cell.name, delay)
            await self._sleep(delay)
        await self._finalize(cell)

    def _report_crash(self, name: str, exc: BaseException) -> None:
        logger.error("actor %r crashed: %r", name, exc, exc_info=exc)
        if self._on_crash is not None:
            try:
                self._on_crash(name, exc)
            except Exception:
                logger.exception("on_crash callback failed for actor %r", name)

    async def _call_on_stop(self, name: str, actor: Actor[Any]) -> None:
        try:
            await actor.on_stop()
        except Exception:
            logger.exception("on_stop of actor %r failed", name)

    async def _finalize(self, cell: _Cell[Any]) -> None:
        """Close and fail what is left, run the last on_stop, unregister. Runs once."""
        if cell.finalizing:
            await cell.stopped.wait()
            return
        cell.finalizing = True
        try:
            cell.mailbox.close("stopped")
            error = ActorStoppedError(f"actor {cell.name!r} stopped")
            cell.mailbox.fail_all(error)
            cell.mailbox.fail_in_flight(error)
            actor, cell.actor = cell.actor, None
            if actor is not None:
                await self._call_on_stop(cell.name, actor)
        finally:
            self._unregister(cell)
            cell.stopped.set()

    def _unregister(self, cell: _Cell[Any]) -> None:
        if self._cells.get(cell.name) is cell:
            del self._cells[cell.name]
