"""Unit tests for membership/swim.py: the pure SWIM core on an in-test virtual network.

``Net`` is a tiny discrete-event network: a heap of message deliveries and node timers on
a virtual clock, loss / duplication / delay from one seeded ``random.Random``. It drives
only the pure core (no sockets, no sleeps); a run is a function of its seed.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardline.membership.dissemination import Disseminator, update_entry_size
from shardline.membership.swim import (
    Effect,
    LoadChanged,
    Member,
    MemberChanged,
    MemberState,
    Message,
    Swim,
    SwimConfig,
)
from shardline.membership.swim_state import Ack, Load, PushPull, Suspicion, Update

ALIVE, SUSPECT, DEAD, LEFT = (
    MemberState.ALIVE,
    MemberState.SUSPECT,
    MemberState.DEAD,
    MemberState.LEFT,
)
CFG = SwimConfig()
PERIOD = CFG.probe_interval_s

# (now, src_id, dst_id, message) -> drop it?
DropFn = Callable[[float, str, str, Message], bool]


def node_id(i: int) -> str:
    return f"n{i:02d}"


def address(i: int) -> str:
    return f"10.0.0.{i + 1}:7946"


@dataclass(frozen=True)
class Timer:
    node: str
    version: int


@dataclass(frozen=True)
class Delivery:
    node: str
    message: Message
    from_address: str


@dataclass
class Net:
    """A virtual network of Swim instances (see the module docstring)."""

    n: int
    seed: int
    loss: float = 0.0
    duplicate: float = 0.0
    delay_s: tuple[float, float] = (0.001, 0.005)
    config: SwimConfig = CFG
    drop: DropFn | None = None
    settled: bool = False  # every node starts holding the whole roster alive (Swim.settle)
    now: float = 0.0
    nodes: dict[str, Swim] = field(default_factory=dict)
    crashed: set[str] = field(default_factory=set)
    events: list[tuple[float, str, MemberChanged]] = field(default_factory=list)
    load_events: list[tuple[float, str, LoadChanged]] = field(default_factory=list)
    delivered: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._heap: list[tuple[float, int, Timer | Delivery]] = []
        self._seq = 0
        self._timer_version: dict[str, int] = {}
        self.by_address: dict[str, str] = {}
        for i in range(self.n):
            self.by_address[address(i)] = node_id(i)
            swim = Swim(node_id(i), address(i), self.config, random.Random(f"{self.seed}/{i}"), 0.0)
            self.nodes[node_id(i)] = swim
        roster = {node_id(i): address(i) for i in range(self.n)}
        for nid, swim in self.nodes.items():
            if self.settled:
                swim.settle(roster, 0.0)
            self._dispatch(nid, swim.set_seeds(roster, 0.0))

    # -- scheduling

    def _push(self, at: float, item: Timer | Delivery) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, item))

    def _reschedule(self, nid: str) -> None:
        version = self._timer_version.get(nid, 0) + 1
        self._timer_version[nid] = version
        deadline = self.nodes[nid].next_deadline()
        if deadline is not None:
            self._push(max(deadline, self.now), Timer(nid, version))

    def _dispatch(self, src: str, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, MemberChanged):
                self.events.append((self.now, src, effect))
                continue
            if isinstance(effect, LoadChanged):
                self.load_events.append((self.now, src, effect))
                continue
            dst = self.by_address.get(effect.to_address)
            if dst is None:
                continue
            copies = 2 if self.rng.random() < self.duplicate else 1
            for _ in range(copies):
                if self.rng.random() < self.loss:
                    continue
                if self.drop is not None and self.drop(self.now, src, dst, effect.message):
                    continue
                at = self.now + self.rng.uniform(*self.delay_s)
                self._push(at, Delivery(dst, effect.message, self.nodes[src].address))
        self._reschedule(src)

    def inject(self, dst: str, message: Message, from_address: str) -> None:
        self._push(self.now, Delivery(dst, message, from_address))

    def run_until(self, t_end: float, until: Callable[[], bool] | None = None) -> None:
        while self._heap and self._heap[0][0] <= t_end:
            at, _, item = heapq.heappop(self._heap)
            self.now = at
            swim = self.nodes[item.node]
            if item.node in self.crashed:
                continue
            if isinstance(item, Timer):
                if self._timer_version[item.node] != item.version:
                    continue
                self._dispatch(item.node, swim.on_tick(at))
            else:
                self.delivered += 1
                self._dispatch(item.node, swim.on_message(item.message, item.from_address, at))
            if until is not None and until():
                return
        self.now = max(self.now, t_end)

    # -- observations

    def live(self) -> list[str]:
        return [nid for nid in sorted(self.nodes) if nid not in self.crashed]

    def view(self, observer: str, subject: str) -> Member | None:
        return self.nodes[observer].members().get(subject)

    def member(self, observer: str, subject: str) -> Member:
        member = self.view(observer, subject)
        assert member is not None, f"{observer} does not know {subject}"
        return member

    def state(self, observer: str, subject: str) -> MemberState | None:
        member = self.view(observer, subject)
        return None if member is None else member.state

    def all_see(self, subject: str, state: MemberState) -> bool:
        return all(self.state(o, subject) is state for o in self.live() if o != subject)

    def dead_events(self, subject: str | None = None) -> list[tuple[float, str, str]]:
        return [
            (t, obs, ev.member.node_id)
            for t, obs, ev in self.events
            if ev.member.state is DEAD and subject in (None, ev.member.node_id)
        ]

    def tables(self) -> dict[str, dict[str, tuple[str, int, int, tuple[str, ...]]]]:
        return {
            nid: {
                m.node_id: (m.state.value, m.incarnation, m.in_flight, m.load)
                for m in swim.members().values()
            }
            for nid, swim in sorted(self.nodes.items())
        }


def converged(net: Net) -> bool:
    live = net.live()
    return all(net.state(o, s) is ALIVE for o in live for s in live)


# ----------------------------------------------------------------------------- basics


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="probe_timeout_s"):
        SwimConfig(probe_timeout_s=1.0)
    with pytest.raises(ValueError, match="max_packet_bytes"):
        SwimConfig(max_packet_bytes=100)
    low, high = CFG.suspicion_bounds_s(20)
    assert low == pytest.approx(CFG.suspicion_min_mult * math.log10(20) * PERIOD)
    assert high == pytest.approx(low * CFG.suspicion_max_mult)
    assert CFG.retransmit_limit(20) == 8


def test_suspicion_timeout_shrinks_with_confirmations() -> None:
    s = Suspicion(0, 10.0, 1.0, 6.0, 3, {"a"})
    timeouts = [s.timeout_s()]
    for who in ("b", "c", "d", "e"):
        s.confirm(who)
        timeouts.append(s.timeout_s())
    assert timeouts[0] == 6.0 and timeouts[3] == 1.0 and timeouts[4] == 1.0
    assert timeouts == sorted(timeouts, reverse=True)
    assert not s.confirm("a"), "the first suspecter does not confirm itself"


def test_cluster_converges_from_roster_seeds() -> None:
    net = Net(8, seed=1)
    net.run_until(10.0, lambda: converged(net))
    assert converged(net), net.tables()
    assert net.now < 2.0


def test_a_settled_member_holds_the_roster_without_joining_and_detects_a_crash() -> None:
    """``settle`` (a simulated fleet's steady state): converged at once, no join datagrams,
    no member events; probing then works as after a join (a crash is detected)."""
    net = Net(10, seed=31, settled=True)
    assert converged(net)
    assert not [item for _, _, item in net._heap if isinstance(item, Delivery)]
    net.run_until(3.0)
    assert converged(net) and not net.events
    victim = node_id(9)
    net.crashed.add(victim)
    net.run_until(3.0 + detection_bound_s(10) + 1, lambda: net.all_see(victim, DEAD))
    assert net.all_see(victim, DEAD)
    assert not [e for e in net.dead_events() if e[2] != victim]


# ----------------------------------------------------------------------------- failure detection


def detection_bound_s(n: int, config: SwimConfig = CFG) -> float:
    """Worst case: the round-robin reaches the victim within n-1 periods, the probe period
    ends, the first suspicion times out unconfirmed (max timeout), DEAD spreads."""
    _, high = config.suspicion_bounds_s(n)
    period = config.probe_interval_s
    return (n - 1) * period + period + high + config.retransmit_limit(n) * period


@pytest.mark.parametrize(("n", "seed"), [(3, 11), (10, 12), (10, 13)])
def test_crashed_member_is_confirmed_dead_by_all_within_bound(n: int, seed: int) -> None:
    net = Net(n, seed=seed, loss=0.01)
    net.run_until(5.0)
    assert converged(net)
    victim = node_id(n - 1)
    crash_at = net.now + 0.123
    net.run_until(crash_at)
    net.crashed.add(victim)
    bound = detection_bound_s(n)
    net.run_until(crash_at + bound + 1, lambda: net.all_see(victim, DEAD))
    firsts = {obs: t - crash_at for t, obs, subject in net.dead_events(victim)}
    assert net.all_see(victim, DEAD), f"not all saw {victim} DEAD within {bound:.1f} s"
    worst = max(firsts.values())
    assert worst <= bound, f"detection took {worst:.2f} s > bound {bound:.2f} s"
    # With Lifeguard confirmations it is far quicker than the worst case in practice.
    assert worst <= 4.0, f"detection took {worst:.2f} s (bound {bound:.2f} s)"
    assert not [e for e in net.dead_events() if e[2] != victim]


# ----------------------------------------------------------------------------- refutation


def test_false_suspicion_is_refuted_and_nobody_marks_dead() -> None:
    net = Net(6, seed=21)
    net.run_until(5.0)
    assert converged(net)
    target, liar = "n03", "n05"
    inc = net.member("n00", target).incarnation
    rumour = Update(target, address(3), inc, SUSPECT, liar)
    for i in range(6):
        if node_id(i) not in (target, liar):
            msg = Message(CFG.cluster, liar, address(5), Ack(seq=999_999), (rumour,))
            net.inject(node_id(i), msg, address(5))
    net.run_until(net.now + 0.01)
    assert any(net.state(o, target) is SUSPECT for o in net.live()), "the rumour was applied"
    net.run_until(net.now + 30.0)
    assert net.dead_events() == []
    assert net.nodes[target].members()[target].incarnation > inc, "target refuted"
    for observer in net.live():
        member = net.view(observer, target)
        assert member is not None and member.state is ALIVE and member.incarnation > inc


def test_member_declared_dead_refutes_when_it_hears_it() -> None:
    net = Net(4, seed=22)
    net.run_until(3.0)
    obituary = Update("n02", address(2), 0, DEAD, "n01")
    net.inject("n00", Message(CFG.cluster, "n01", address(1), Ack(seq=1), (obituary,)), address(1))
    net.run_until(net.now + 0.01)
    assert net.state("n00", "n02") is DEAD
    net.run_until(net.now + 15.0, lambda: converged(net))
    assert converged(net), net.tables()
    assert net.member("n00", "n02").incarnation >= 1


# ----------------------------------------------------------------------------- loss


def test_no_false_positive_under_ten_percent_loss_over_1000_periods() -> None:
    net = Net(20, seed=7, loss=0.10, delay_s=(0.001, 0.010))
    net.run_until(1000 * PERIOD)
    suspicions = [e for e in net.events if e[2].member.state is SUSPECT]
    assert net.dead_events() == [], f"false positives: {net.dead_events()[:5]}"
    assert converged(net), "every live member ends ALIVE in every table"
    # Loss does cause (refuted) suspicions: the test exercises the refutation path.
    assert suspicions, "expected some refuted suspicions at 10 % loss"


# ----------------------------------------------------------------------------- dissemination, load


def test_load_update_reaches_all_within_lambda_log_n_periods() -> None:
    n = 20
    net = Net(n, seed=31)
    net.run_until(5.0)
    assert converged(net)
    start = net.now
    net.nodes["n07"].set_local_load(
        42, Load(resident_bytes=10_000, loaded_count=2, loaded_version=7)
    )

    def everyone_knows() -> bool:
        return all(
            net.member(o, "n07").in_flight == 42 and net.member(o, "n07").load.loaded_version == 7
            for o in net.live()
        )

    rounds = CFG.retransmit_limit(n)  # lambda * ceil(log10(N + 1)) = 8 periods
    net.run_until(start + rounds * PERIOD, everyone_knows)
    assert everyone_knows(), f"load not everywhere after {rounds} periods"
    took = (net.now - start) / PERIOD
    assert took <= rounds, f"took {took:.1f} periods"
    me = net.nodes["n07"].members()["n07"]
    assert me.incarnation == 0 and me.load_seq == 1, "load does not bump the incarnation"
    observers = {obs for _, obs, ev in net.load_events if ev.member.node_id == "n07"}
    assert observers == set(net.live()) - {"n07"}, "every other member emitted LoadChanged"


def test_newer_load_wins_and_set_local_load_validates() -> None:
    net = Net(3, seed=32)
    net.run_until(3.0)
    for k in range(1, 6):
        net.nodes["n01"].set_local_load(k, Load(loaded_count=k, loaded_version=k))
        net.run_until(net.now + 0.2)
    net.run_until(net.now + 5.0)
    for observer in net.live():
        assert net.member(observer, "n01").in_flight == 5
    swim = net.nodes["n01"]
    for observer in net.live():
        assert net.member(observer, "n01").load.loaded_version == 5
    with pytest.raises(ValueError, match="in_flight"):
        swim.set_local_load(-1)
    with pytest.raises(ValueError, match="loaded_count"):
        Load(loaded_count=-1)
    with pytest.raises(TypeError, match="Load"):
        swim.set_local_load(1, ["m@1"])  # type: ignore[arg-type]


def test_push_pull_heals_a_member_that_missed_updates() -> None:
    window = (5.0, 15.0)

    def deaf_n04(now: float, src: str, dst: str, msg: Message) -> bool:
        # During the window n04 gets no piggybacked updates and no push-pull at all.
        return (
            dst == "n04"
            and window[0] <= now < window[1]
            and (bool(msg.updates) or isinstance(msg.body, PushPull))
        )

    net = Net(6, seed=41, drop=deaf_n04)
    net.run_until(window[0])
    net.nodes["n01"].set_local_load(7, Load(loaded_count=1, loaded_version=1))
    net.run_until(window[1])
    assert net.member("n02", "n01").in_flight == 7
    assert net.member("n04", "n01").in_flight == 0, "n04 missed the update"
    net.run_until(
        window[1] + 2 * CFG.push_pull_interval_s, lambda: net.member("n04", "n01").in_flight == 7
    )
    assert net.member("n04", "n01").in_flight == 7
    assert net.now < window[1] + 2 * CFG.push_pull_interval_s


def test_a_node_that_cannot_send_raises_its_local_health_and_probes_slower() -> None:
    def mute_n02(now: float, src: str, dst: str, msg: Message) -> bool:
        return src == "n02" and now >= 3.0

    net = Net(5, seed=45, drop=mute_n02)
    net.run_until(3.0)
    assert all(net.nodes[n].local_health == 0 for n in net.live())
    net.run_until(6.0)
    assert net.nodes["n02"].local_health > 0, "missed nacks count against the prober"
    assert all(net.nodes[n].local_health == 0 for n in net.live() if n != "n02"), (
        "probers whose relays nack keep a clean bill of health"
    )


def test_leave_is_seen_as_left_not_dead() -> None:
    net = Net(5, seed=51)
    net.run_until(3.0)
    net._dispatch("n02", net.nodes["n02"].leave(net.now))
    net.crashed.add("n02")  # the process exits after leaving
    net.run_until(net.now + 2.0, lambda: net.all_see("n02", LEFT))
    assert net.all_see("n02", LEFT)
    net.run_until(net.now + 20.0)
    assert net.dead_events() == []
    assert net.all_see("n02", LEFT)


def test_dead_members_are_reaped_but_cannot_be_resurrected_by_stale_records() -> None:
    cfg = replace(CFG, dead_reap_s=5.0)
    net = Net(4, seed=61, config=cfg)
    net.run_until(3.0)
    net.crashed.add("n03")
    net.run_until(net.now + 30.0)
    assert all(net.view(o, "n03") is None for o in net.live()), "reaped"
    stale = Update("n03", address(3), 0, ALIVE, "n03")
    net.inject("n00", Message(cfg.cluster, "n01", address(1), Ack(seq=5), (stale,)), address(1))
    net.run_until(net.now + 1.0)
    assert net.view("n00", "n03") is None


def test_restarted_member_rejoins_with_a_higher_incarnation() -> None:
    net = Net(4, seed=62)
    net.run_until(3.0)
    net.crashed.add("n03")
    net.run_until(net.now + 15.0, lambda: net.all_see("n03", DEAD))
    assert net.all_see("n03", DEAD)
    net.crashed.discard("n03")
    fresh = Swim("n03", address(3), CFG, random.Random(99), net.now)  # incarnation 0 again
    net.nodes["n03"] = fresh
    net._dispatch("n03", fresh.set_seeds({node_id(i): address(i) for i in range(4)}, net.now))
    net.run_until(net.now + 10.0, lambda: converged(net))
    assert converged(net), net.tables()
    assert fresh.members()["n03"].incarnation >= 1


# ----------------------------------------------------------------------------- properties


@st.composite
def chaos(draw: st.DrawFn) -> tuple[int, float, float, float, int]:
    return (
        draw(st.integers(0, 2**32)),
        draw(st.floats(0.0, 0.35)),  # loss
        draw(st.floats(0.0, 0.3)),  # duplication
        draw(st.floats(0.002, 0.4)),  # max delay (beyond the probe timeout: late acks)
        draw(st.integers(3, 5)),  # members
    )


def run_chaos(seed: int, loss: float, dup: float, delay: float, n: int) -> Net:
    """Chaos for 30 s, then 40 s of a healthy network; watch incarnations throughout."""
    net = Net(n, seed=seed, loss=loss, duplicate=dup, delay_s=(0.0005, delay))
    seen: dict[tuple[str, str], int] = {}
    t = 0.0
    while t < 30.0:
        t += 1.0
        net.run_until(t)
        for observer, table in net.tables().items():
            for subject, (_, inc, _, _) in table.items():
                key = (observer, subject)
                assert inc >= seen.get(key, 0), f"{key} incarnation went back"
                seen[key] = inc
    net.loss, net.duplicate, net.delay_s = 0.0, 0.0, (0.0005, 0.003)
    net.run_until(70.0)
    return net


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chaos())
def test_chaos_never_leaves_a_live_member_dead_and_is_deterministic(
    params: tuple[int, float, float, float, int],
) -> None:
    net = run_chaos(*params)
    assert converged(net), f"a live member is not ALIVE everywhere after healing: {net.tables()}"
    assert run_chaos(*params).tables() == net.tables(), "same seed, same member tables"


def test_membership_news_is_piggybacked_before_load_refreshes() -> None:
    """A death queued before a flood of fresh load refreshes still goes out first; a load
    refresh replacing pending news about the same state and incarnation stays news."""
    queue = Disseminator()
    queue.enqueue(Update("n9", address(9), 3, DEAD, "n1"))
    for i in range(8):
        queue.enqueue(Update(node_id(i), address(i), 1, ALIVE, node_id(i), 5, 2), load_only=True)
    first = queue.select(budget=10_000, limit=10)
    assert first[0].node_id == "n9" and len(first) == 9
    # A join (news), then its load refresh before the join has spread: still first.
    queue = Disseminator()
    queue.enqueue(Update("n8", address(8), 2, ALIVE, "n8"))
    queue.enqueue(Update("n8", address(8), 2, ALIVE, "n8", 1, 7), load_only=True)
    for i in range(4):  # newer load refreshes of others
        queue.enqueue(Update(node_id(i), address(i), 1, ALIVE, node_id(i), 5), load_only=True)
    one = queue.select(
        budget=update_entry_size(Update("n8", address(8), 2, ALIVE, "n8", 1, 7)), limit=10
    )
    assert [u.node_id for u in one] == ["n8"]


def test_news_carried_by_load_refreshes_still_retires_after_its_sends() -> None:
    """A member whose load changes all the time must not keep its join news at the top of
    every queue forever (it would starve a later death)."""
    queue = Disseminator()
    queue.enqueue(Update("n8", address(8), 2, ALIVE, "n8"))
    for seq in range(1, 4):  # a load refresh between each of the news's 3 sends
        queue.enqueue(Update("n8", address(8), 2, ALIVE, "n8", seq, seq), load_only=True)
        assert [u.node_id for u in queue.select(budget=10_000, limit=3)] == ["n8"]
    assert "n8" not in queue  # the news (and the load riding on it) went out 3 times
    death = Update("n9", address(9), 1, DEAD, "n1")
    queue.enqueue(death)
    queue.enqueue(Update("n8", address(8), 2, ALIVE, "n8", 4, 4), load_only=True)
    assert queue.select(budget=update_entry_size(death), limit=3) == (death,)
