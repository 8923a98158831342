"""Unit tests for node/serving/actors.py and node/serving/mailbox.py: the asyncio actor runtime
(mailboxes, asks, supervision)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardline.node.serving.actors import Actor, ActorSystem, AskTimeoutError, RestartPolicy
from shardline.node.serving.mailbox import (
    ActorError,
    ActorStoppedError,
    Envelope,
    FairMailbox,
    Mailbox,
    MailboxFullError,
)


class Boom(Exception):
    """The error a test actor raises on the "boom" message."""


@dataclass
class Probe:
    """What the test actors saw, shared across restarts."""

    received: list[object] = field(default_factory=list)
    lifecycle: list[str] = field(default_factory=list)
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    fail_start_on: set[int] = field(default_factory=set)  # instance numbers whose start fails
    instances: int = 0


class CounterActor(Actor[Any]):
    """Counts "inc"; "get" returns the count; "boom" crashes; ("block", ev) waits on ev."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        probe.instances += 1
        self.instance = probe.instances
        self.count = 0

    async def on_start(self) -> None:
        if self.instance in self.probe.fail_start_on:
            self.probe.lifecycle.append(f"start-failed:{self.instance}")
            raise Boom(f"start {self.instance}")
        self.probe.lifecycle.append(f"start:{self.instance}")

    async def on_stop(self) -> None:
        self.probe.lifecycle.append(f"stop:{self.instance}")

    async def receive(self, message: Any) -> object:
        self.probe.received.append(message)
        if message == "inc":
            self.count += 1
            return self.count
        if message == "get":
            return self.count
        if message == "boom":
            raise Boom("boom")
        if isinstance(message, tuple) and message[0] == "block":
            self.probe.entered.set()
            await message[1].wait()
            return "unblocked"
        return message


class FakeSleep:
    """Injected backoff sleep: records the requested delays and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


FAST = RestartPolicy(max_restarts=10, window_s=60.0, backoff_initial_s=0.1, backoff_max_s=0.5)


async def spawn_counter(
    system: ActorSystem,
    name: str = "counter",
    *,
    mailbox_size: int = 16,
    restart: RestartPolicy = FAST,
    probe: Probe | None = None,
) -> tuple[Any, Probe]:
    probe = probe or Probe()
    ref = await system.spawn(
        name, lambda: CounterActor(probe), mailbox_size=mailbox_size, restart=restart
    )
    return ref, probe


# --- Envelope / Mailbox / RestartPolicy ------------------------------------------------


async def test_envelope_reply_is_resolved_once() -> None:
    fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    env = Envelope("m", enqueued_at=1.0, deadline=2.0, reply=fut)
    assert env.expects_reply and not env.done
    env.set_result(1)
    env.set_result(2)
    env.set_exception(Boom())
    assert env.done and fut.result() == 1

    tell = Envelope("m", enqueued_at=1.0)
    tell.set_result(1)
    tell.set_exception(Boom())
    assert not tell.expects_reply and not tell.done and tell.deadline is None


async def test_mailbox_get_waits_close_drains_then_raises() -> None:
    box: Mailbox[str] = Mailbox(2, name="box")
    assert box.get_nowait() is None
    getter = asyncio.create_task(box.get())
    box.put_nowait(Envelope("a", enqueued_at=0.0))
    assert (await getter).message == "a"

    box.put_nowait(Envelope("b", enqueued_at=0.0))
    box.close()
    with pytest.raises(ActorStoppedError, match="'box'"):
        box.put_nowait(Envelope("c", enqueued_at=0.0))
    assert (await box.get()).message == "b"
    with pytest.raises(ActorStoppedError):
        await box.get()
    assert box.get_nowait() is None


async def test_mailbox_close_wakes_blocked_getter() -> None:
    box: Mailbox[str] = Mailbox(1, name="box")
    started = asyncio.Event()

    async def consume() -> Envelope[str]:
        started.set()
        return await box.get()  # blocks before this test resumes

    getter = asyncio.create_task(consume())
    await started.wait()
    box.close()
    with pytest.raises(ActorStoppedError):
        await getter


async def test_mailbox_fail_all_and_room_from_abandoned_asks() -> None:
    loop = asyncio.get_running_loop()
    box: Mailbox[str] = Mailbox(2, name="box")
    replies = [loop.create_future() for _ in range(2)]
    for r in replies:
        box.put_nowait(Envelope("x", enqueued_at=0.0, reply=r))
    with pytest.raises(MailboxFullError, match=r"capacity 2"):
        box.put_nowait(Envelope("y", enqueued_at=0.0))
    replies[0].cancel()  # that asker gave up: its envelope no longer counts against capacity
    box.put_nowait(Envelope("y", enqueued_at=0.0))
    assert box.qsize() == 2
    assert box.fail_all(ActorStoppedError("gone")) == 2
    assert box.qsize() == 0
    with pytest.raises(ActorStoppedError, match="gone"):
        replies[1].result()


async def test_mailbox_get_within_waits_at_most_its_timeout_and_loses_nothing() -> None:
    box: Mailbox[str] = Mailbox(4, name="box")
    _put(box, "queued")
    got = await box.get_within(10.0)  # already queued: no wait
    assert got is not None and got.message == "queued"
    assert await box.get_within(0.01) is None  # nothing arrives: None after the timeout
    waiting = asyncio.ensure_future(box.get_within(10.0))
    await asyncio.sleep(0)
    _put(box, "late")  # arrives during the wait: handed over at once
    got = await waiting
    assert got is not None and got.message == "late"
    cancelled = asyncio.ensure_future(box.get_within(10.0))
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    _put(box, "kept")  # a cancelled wait took nothing and left no getter behind
    assert not box._getters and box.qsize() == 1
    box.close("closing")
    got = await box.get_within(10.0)  # closed: what is queued still drains
    assert got is not None and got.message == "kept"
    with pytest.raises(ActorStoppedError, match="closing"):
        await box.get_within(10.0)


@pytest.mark.parametrize("capacity", [0, -1, True])
def test_mailbox_is_never_unbounded(capacity: int) -> None:
    with pytest.raises(ValueError):
        Mailbox(capacity)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_restarts": -1},
        {"window_s": 0.0},
        {"window_s": float("inf")},
        {"backoff_initial_s": -0.1},
        {"backoff_initial_s": 2.0, "backoff_max_s": 1.0},
        {"backoff_multiplier": 0.5},
        {"backoff_multiplier": float("nan")},
    ],
)
def test_restart_policy_validates(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RestartPolicy(**kwargs)  # type: ignore[arg-type]


@given(
    initial=st.floats(0.0, 10.0),
    extra=st.floats(0.0, 100.0),
    mult=st.floats(1.0, 10.0),
    attempts=st.integers(1, 2000),
)
def test_backoff_is_monotonic_and_capped(
    initial: float, extra: float, mult: float, attempts: int
) -> None:
    policy = RestartPolicy(
        backoff_initial_s=initial, backoff_max_s=initial + extra, backoff_multiplier=mult
    )
    delays = [policy.backoff_s(i) for i in (0, attempts // 2, attempts)]
    assert delays[0] == initial
    assert delays == sorted(delays)
    assert all(d <= policy.backoff_max_s for d in delays)


# --- tell / ask ---------------------------------------------------------------------


async def test_tell_ask_round_trip() -> None:
    system = ActorSystem()
    ref, probe = await spawn_counter(system)
    for _ in range(3):
        ref.tell("inc")
    assert await ref.ask("get") == 3
    assert await ref.ask("inc", timeout_s=5.0) == 4
    assert probe.received == ["inc", "inc", "inc", "get", "inc"]
    assert ref.alive and ref.restarts == 0 and ref.name == "counter"
    assert system.names() == ["counter"] and system.get("counter") == ref
    await system.shutdown()


async def test_ask_timeout_marks_envelope_done_and_it_is_skipped() -> None:
    system = ActorSystem()
    ref, probe = await spawn_counter(system)
    gate = asyncio.Event()
    blocked = asyncio.create_task(ref.ask(("block", gate)))
    await probe.entered.wait()

    with pytest.raises(AskTimeoutError, match="'counter'") as info:
        await ref.ask("late", timeout_s=0.01)
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, ActorError)
    assert ref.mailbox_depth == 1  # still queued, but marked done

    with pytest.raises(AskTimeoutError):
        await ref.ask("never-sent", timeout_s=0.0)
    assert ref.mailbox_depth == 1

    gate.set()
    assert await blocked == "unblocked"
    assert await ref.ask("after") == "after"
    assert "late" not in probe.received and "never-sent" not in probe.received
    await system.shutdown()


async def test_full_mailbox_rejects_then_recovers() -> None:
    system = ActorSystem()
    ref, probe = await spawn_counter(system, "full", mailbox_size=2)
    gate = asyncio.Event()
    blocked = asyncio.create_task(ref.ask(("block", gate)))
    await probe.entered.wait()  # taken out of the mailbox: the box is empty again
    ref.tell("inc")
    ref.tell("inc")
    expected = r"overloaded: mailbox of actor 'full' is full \(capacity 2\)"
    with pytest.raises(MailboxFullError, match=expected):
        ref.tell("inc")
    with pytest.raises(MailboxFullError, match=expected):
        await ref.ask("get")
    assert ref.mailbox_depth == 2

    gate.set()
    assert await blocked == "unblocked"
    assert await ref.ask("get") == 2
    assert ref.alive
    await system.shutdown()


# --- supervision --------------------------------------------------------------------


async def test_crash_restarts_fresh_instance_keeping_queued_messages(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sleep = FakeSleep()
    crashes: list[tuple[str, BaseException]] = []
    system = ActorSystem(sleep=sleep, on_crash=lambda n, e: crashes.append((n, e)))
    ref, probe = await spawn_counter(system)

    ref.tell("inc")
    ref.tell("inc")
    ref.tell("boom")
    ref.tell("inc")  # queued behind the crash: must survive the restart
    with caplog.at_level(logging.ERROR, logger="shardline.actors"):
        assert await ref.ask("get") == 1  # state was reset by the restart
    assert ref.restarts == 1 and ref.alive
    assert [n for n, _ in crashes] == ["counter"] and isinstance(crashes[0][1], Boom)
    assert any(r.name == "shardline.actors" and "crashed" in r.message for r in caplog.records)
    assert probe.lifecycle == ["start:1", "stop:1", "start:2"]

    for _ in range(5):  # the asker of a crashing message gets the exception
        with pytest.raises(Boom):
            await ref.ask("boom")
    assert sleep.delays == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5, 0.5])
    assert ref.restarts == 6 and await ref.ask("get") == 0
    await system.shutdown()
    assert probe.lifecycle[-1] == "stop:7"


async def test_failing_on_start_during_restart_counts_as_crash() -> None:
    sleep = FakeSleep()
    crashes: list[str] = []
    system = ActorSystem(sleep=sleep, on_crash=lambda n, e: crashes.append(str(e)))
    probe = Probe(fail_start_on={2})
    ref, _ = await spawn_counter(system, probe=probe)
    ref.tell("inc")
    ref.tell("boom")
    assert await ref.ask("inc") == 1
    assert crashes == ["boom", "start 2"]
    assert sleep.delays == pytest.approx([0.1, 0.2])
    assert ref.restarts == 2
    assert probe.lifecycle == ["start:1", "stop:1", "start-failed:2", "start:3"]
    await system.shutdown()


async def test_restart_budget_exhausted_fails_pending_asks() -> None:
    system = ActorSystem(sleep=FakeSleep())
    policy = RestartPolicy(max_restarts=1, window_s=60.0)
    ref, probe = await spawn_counter(system, "fragile", restart=policy)
    ref.tell("boom")
    ref.tell("boom")
    pending = [asyncio.create_task(ref.ask("get")) for _ in range(3)]
    for task in pending:
        with pytest.raises(ActorStoppedError, match="crashed too often") as info:
            await task
        assert "'fragile'" in str(info.value) and "Boom('boom')" in str(info.value)
    await system.stop(ref)  # already stopped: just waits until it is fully torn down
    assert not ref.alive and system.get("fragile") is None
    with pytest.raises(ActorStoppedError, match="crashed too often"):
        ref.tell("inc")
    assert probe.lifecycle == ["start:1", "stop:1", "start:2", "stop:2"]
    # The name is free again.
    ref2, _ = await spawn_counter(system, "fragile")
    assert await ref2.ask("inc") == 1
    await system.shutdown()


async def test_backoff_and_budget_reset_when_window_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    real_time = loop.time
    offset = [0.0]
    monkeypatch.setattr(loop, "time", lambda: real_time() + offset[0])
    sleep = FakeSleep()
    system = ActorSystem(sleep=sleep)
    policy = RestartPolicy(
        max_restarts=2, window_s=10.0, backoff_initial_s=1.0, backoff_max_s=100.0
    )
    ref, _ = await spawn_counter(system, restart=policy)
    for _ in range(2):
        with pytest.raises(Boom):
            await ref.ask("boom")
    offset[0] += 11.0  # the window passes without a crash
    for _ in range(2):
        with pytest.raises(Boom):
            await ref.ask("boom")
    assert sleep.delays == [1.0, 2.0, 1.0, 2.0]
    assert ref.alive
    with pytest.raises(Boom):
        await ref.ask("boom")  # third crash within the window: stopped for good
    with pytest.raises(ActorStoppedError, match="crashed too often"):
        await ref.ask("get")
    await system.shutdown()


# --- stop / shutdown ----------------------------------------------------------------


async def test_stop_without_drain_fails_pending_asks() -> None:
    system = ActorSystem()
    ref, probe = await spawn_counter(system, "victim")
    gate = asyncio.Event()
    in_progress = asyncio.create_task(ref.ask(("block", gate)))
    queued = [asyncio.create_task(ref.ask("inc")) for _ in range(2)]
    await probe.entered.wait()  # tasks run in creation order: all asks are enqueued by now
    assert ref.mailbox_depth == 2

    await system.stop(ref, drain=False)
    for task in [in_progress, *queued]:
        with pytest.raises(ActorStoppedError, match="'victim'"):
            await task
    assert "inc" not in probe.received
    assert probe.lifecycle == ["start:1", "stop:1"]
    assert not ref.alive and system.names() == []
    with pytest.raises(ActorStoppedError, match="'victim'"):
        ref.tell("inc")
    await system.stop(ref)  # idempotent
    await system.stop("no-such-actor")


async def test_stop_with_drain_finishes_queued_work_first() -> None:
    system = ActorSystem()
    ref, probe = await spawn_counter(system)
    gate = asyncio.Event()
    in_progress = asyncio.create_task(ref.ask(("block", gate)))
    incs = [asyncio.create_task(ref.ask("inc")) for _ in range(3)]
    last = asyncio.create_task(ref.ask("get"))
    await probe.entered.wait()  # tasks run in creation order: all asks are enqueued by now
    assert ref.mailbox_depth == 4

    asyncio.get_running_loop().call_soon(gate.set)  # runs once stop() has closed the box
    await system.stop(ref, drain=True)
    assert await in_progress == "unblocked"
    assert [await t for t in incs] == [1, 2, 3]
    assert await last == 3
    assert probe.lifecycle == ["start:1", "stop:1"]
    with pytest.raises(ActorStoppedError):
        ref.tell("inc")


async def test_stop_drain_timeout_fails_what_is_left() -> None:
    system = ActorSystem()
    ref, probe = await spawn_counter(system)
    in_progress = asyncio.create_task(ref.ask(("block", asyncio.Event())))
    queued = asyncio.create_task(ref.ask("get"))
    await probe.entered.wait()  # tasks run in creation order: both asks are enqueued by now
    await system.stop(ref, drain=True, timeout_s=0.01)
    for task in (in_progress, queued):
        with pytest.raises(ActorStoppedError, match="did not drain"):
            await task
    assert probe.lifecycle == ["start:1", "stop:1"]


async def test_shutdown_drains_every_actor_concurrently() -> None:
    system = ActorSystem()
    gate = asyncio.Event()
    spawned = [await spawn_counter(system, f"a{i}") for i in range(3)]
    blocked, asks = [], []
    for ref, _ in spawned:
        blocked.append(asyncio.create_task(ref.ask(("block", gate))))
        ref.tell("inc")
        ref.tell("inc")
        asks.append(asyncio.create_task(ref.ask("get")))
    for _, probe in spawned:
        await probe.entered.wait()
    asyncio.get_running_loop().call_soon(gate.set)  # runs once shutdown() closed the boxes
    await system.shutdown()
    assert [await b for b in blocked] == ["unblocked"] * 3
    assert [await a for a in asks] == [2, 2, 2]
    assert all(p.lifecycle == ["start:1", "stop:1"] for _, p in spawned)
    assert system.names() == [] and not any(r.alive for r, _ in spawned)
    with pytest.raises(ActorStoppedError):
        await spawn_counter(system, "late")


# --- spawn --------------------------------------------------------------------------


async def test_spawn_rejects_duplicates_and_surfaces_start_errors() -> None:
    system = ActorSystem()
    await spawn_counter(system, "x")
    with pytest.raises(ValueError, match="'x'"):
        await spawn_counter(system, "x")
    with pytest.raises(Boom):
        await spawn_counter(system, "y", probe=Probe(fail_start_on={1}))
    assert system.get("y") is None
    ref, _ = await spawn_counter(system, "y")
    assert await ref.ask("inc") == 1
    await system.shutdown()


# --- custom run(): batching -----------------------------------------------------------


class BatchActor(Actor[int]):
    """Takes up to max_batch envelopes at a time and doubles each message."""

    def __init__(self, batches: list[list[int]], deadlines: list[float | None]) -> None:
        self.batches = batches
        self.deadlines = deadlines
        self.max_batch = 4

    async def run(self, mailbox: Mailbox[int]) -> None:
        while True:
            batch = [await mailbox.get()]
            while len(batch) < self.max_batch:
                env = mailbox.get_nowait()
                if env is None:
                    break
                batch.append(env)
            live = [env for env in batch if not env.done]
            self.batches.append([env.message for env in live])
            for env in live:
                self.deadlines.append(
                    None if env.deadline is None else env.deadline - env.enqueued_at
                )
                env.set_result(env.message * 2)


async def test_custom_run_takes_batches() -> None:
    system = ActorSystem()
    batches: list[list[int]] = []
    deadlines: list[float | None] = []
    ref = await system.spawn("batcher", lambda: BatchActor(batches, deadlines))
    results = await asyncio.gather(*(ref.ask(i, timeout_s=5.0) for i in range(10)))
    assert results == [i * 2 for i in range(10)]
    assert [m for b in batches for m in b] == list(range(10))
    assert max(len(b) for b in batches) <= 4 and any(len(b) > 1 for b in batches)
    assert deadlines == pytest.approx([5.0] * 10)
    await system.shutdown()


# --- ordering under backpressure (hypothesis) ---------------------------------------


class OrderActor(Actor[int]):
    def __init__(self, seen: list[int], progressed: asyncio.Event) -> None:
        self.seen = seen
        self.progressed = progressed

    async def receive(self, message: int) -> object:
        self.seen.append(message)
        self.progressed.set()
        return len(self.seen)


async def _send_all_in_order(capacity: int, count: int) -> tuple[list[int], bool]:
    system = ActorSystem()
    seen: list[int] = []
    progressed = asyncio.Event()
    ref = await system.spawn("order", lambda: OrderActor(seen, progressed), mailbox_size=capacity)
    saw_full = False
    for i in range(count):
        while True:
            try:
                ref.tell(i)
                break
            except MailboxFullError:
                saw_full = True
                progressed.clear()
                await progressed.wait()
    await system.shutdown()
    return seen, saw_full


@settings(max_examples=60, deadline=None)
@given(capacity=st.integers(1, 16), count=st.integers(0, 60))
def test_messages_processed_in_order_for_any_capacity(capacity: int, count: int) -> None:
    seen, saw_full = asyncio.run(_send_all_in_order(capacity, count))
    assert seen == list(range(count))
    assert saw_full == (count > capacity)


# --- fair mailbox: one flow's backlog does not queue ahead of another's --------------


def _flow(message: str) -> str:
    return message[0]


def _put(box: Mailbox[str], *messages: str) -> None:
    for m in messages:
        box.put_nowait(Envelope(m, enqueued_at=0.0))


def _drain(box: Mailbox[str]) -> list[str]:
    out = []
    while (env := box.get_nowait()) is not None:
        out.append(env.message)
    return out


def test_fair_mailbox_takes_flows_in_turn_and_each_flow_in_order() -> None:
    box: FairMailbox[str] = FairMailbox(100, _flow, name="fair")
    _put(box, "a1", "a2", "a3", "a4", "a5", "b1", "b2", "c1")
    assert box.qsize() == 8
    assert box.flow_depths() == {"a": 5, "b": 2, "c": 1}
    # b1 waits for one a, not for a's whole backlog; c1 likewise.
    # A third b waits for b's 2, three turns of a and c's one: 6, not the whole queue.
    assert box.depth_ahead("b") == 2 + 3 + 1
    assert box.depth_ahead("d") == 3  # a new flow waits one turn of each busy flow
    assert _drain(box) == ["a1", "b1", "c1", "a2", "b2", "a3", "a4", "a5"]
    assert box.qsize() == 0 and box.depth_ahead("a") == 0


def test_fifo_mailbox_depth_ahead_is_the_whole_queue() -> None:
    box: Mailbox[str] = Mailbox(10, name="fifo")
    _put(box, "a1", "a2", "b1")
    assert box.depth_ahead("b") == 3 and box.depth_ahead("z") == 3


async def test_fair_mailbox_capacity_is_shared_and_abandoned_asks_make_room() -> None:
    loop = asyncio.get_running_loop()
    box: FairMailbox[str] = FairMailbox(3, _flow, name="fair")
    replies = [loop.create_future() for _ in range(3)]
    for m, r in zip(("a1", "a2", "b1"), replies, strict=True):
        box.put_nowait(Envelope(m, enqueued_at=0.0, reply=r))
    with pytest.raises(MailboxFullError, match="capacity 3"):
        _put(box, "c1")
    replies[2].cancel()  # b1's asker gave up: its room (and flow) go
    _put(box, "c1")
    assert box.flow_depths() == {"a": 2, "c": 1}
    assert box.fail_all(ActorStoppedError("gone")) == 3
    assert box.qsize() == 0 and box.get_nowait() is None
    for reply in replies[:2]:
        with pytest.raises(ActorStoppedError, match="gone"):
            reply.result()


async def test_actor_spawned_fair_by_serves_a_late_flow_before_an_early_backlog() -> None:
    system = ActorSystem()
    seen: list[int] = []
    progressed = asyncio.Event()
    gate = asyncio.Event()

    class Gated(Actor[int]):
        async def receive(self, message: int) -> object:
            await gate.wait()
            seen.append(message)
            progressed.set()
            return message

    ref = await system.spawn("gated", Gated, fair_by=lambda m: m // 100)
    asks = [asyncio.ensure_future(ref.ask(m, timeout_s=5.0)) for m in (0, 1, 2, 3, 4)]
    await asyncio.sleep(0)  # the actor takes 0 and waits at the gate
    asks.append(asyncio.ensure_future(ref.ask(100, timeout_s=5.0)))
    await asyncio.sleep(0)
    # Queued: 1 2 3 4 (flow 0, served once already), 100 (flow 1, never served). Flow 1
    # goes first (least served lately); another flow-1 message would wait for 100 and 1
    # (then both flows were served alike); a message of a new flow, for 100 only.
    assert ref.depth_ahead(1) == 2 and ref.depth_ahead(2) == 1 and ref.mailbox_depth == 5
    gate.set()
    assert await asyncio.gather(*asks) == [0, 1, 2, 3, 4, 100]
    assert seen == [0, 100, 1, 2, 3, 4]
    await system.shutdown()


@settings(max_examples=80, deadline=None)
@given(ops=st.lists(st.one_of(st.sampled_from("abcd"), st.just("get")), min_size=0, max_size=80))
def test_fair_mailbox_loses_nothing_keeps_flow_order_and_bounds_the_wait(ops: list[str]) -> None:
    box: FairMailbox[str] = FairMailbox(1000, _flow, name="fair")
    put: list[str] = []
    got: list[str] = []
    count: dict[str, int] = {}
    for op in ops:
        if op == "get":
            env = box.get_nowait()
            if env is not None:
                got.append(env.message)
            continue
        count[op] = count.get(op, 0) + 1
        message = f"{op}{count[op]:03d}"
        promised = box.depth_ahead(op)
        _put(box, message)
        put.append(message)
        # What the box promised is what happens if nothing else arrives.
        probe: FairMailbox[str] = FairMailbox(1000, _flow, name="probe")
        probe._flows = {f: type(q)(q) for f, q in box._flows.items()}
        probe._score, probe._epoch = dict(box._score), box._epoch
        probe._size = box.qsize()
        assert _drain(probe).index(message) <= promised
    got += _drain(box)
    assert sorted(got) == sorted(put)  # nothing lost, nothing twice
    for flow in "abcd":
        mine = [m for m in got if m[0] == flow]
        assert mine == sorted(mine)  # each flow in its own order


def test_fair_mailbox_serves_a_flow_under_its_share_before_a_backlogged_one() -> None:
    """Least served lately goes first: a light flow's burst is not interleaved with a
    heavy flow's backlog (round robin would make it wait one heavy message per message),
    and two flows that are both backlogged alternate."""
    box: FairMailbox[str] = FairMailbox(1000, _flow, name="fair")
    _put(box, *(f"a{i:03d}" for i in range(20)))
    assert _drain(box)[:10] == [f"a{i:03d}" for i in range(10)]  # (a alone: served 20)
    _put(box, *(f"a{i:03d}" for i in range(20, 40)))
    _put(box, "b001", "b002", "b003")
    assert box.depth_ahead("b") == 3  # b's next waits only for its own queue
    assert box.depth_ahead("a") > 3
    got = _drain(box)
    assert got[:3] == ["b001", "b002", "b003"]
    assert got[3:] == [f"a{i:03d}" for i in range(20, 40)]
    # both backlogged and served alike lately: they alternate
    fresh: FairMailbox[str] = FairMailbox(1000, _flow, name="fresh")
    _put(fresh, "a1", "a2", "a3", "b1", "b2", "b3")
    assert _drain(fresh) == ["a1", "b1", "a2", "b2", "a3", "b3"]


def test_fair_mailbox_forgets_old_service() -> None:
    box: FairMailbox[str] = FairMailbox(1000, _flow, name="fair")
    _put(box, "a1", "a2")
    _drain(box)
    now = time.monotonic()
    recent = box.served("a", now)
    assert 0.0 < recent <= 2.0  # (two taken, decayed by however long the drain took)
    later = now + 10 * FairMailbox.SERVICE_HALF_LIFE_S  # ten half-lives: 1/1024 of it
    assert box.served("a", later) == pytest.approx(recent / 1024, rel=1e-6)


def test_a_flood_that_begins_goes_first_only_until_its_count_catches_up() -> None:
    """A flood beginning beside a steady flow goes first while it has been served less
    lately, then they alternate: its head start is the steady flow's recent count, which
    halves every SERVICE_HALF_LIFE_S."""
    box: FairMailbox[str] = FairMailbox(1000, _flow, name="fair")
    for i in range(10):  # "a" steady: served one at a time
        _put(box, f"a{i:03d}")
        _drain(box)
    lead = box.served("a")
    assert 0 < lead <= 10
    _put(box, *(f"f{i:03d}" for i in range(100)))  # the flood begins
    _put(box, "a100", "a101")
    order = _drain(box)
    assert order.index("a100") <= lead + 1
    assert order.index("a101") - order.index("a100") <= 2  # then in turn
    assert FairMailbox.SERVICE_HALF_LIFE_S <= 0.2
