"""The changes the simulator led to in the pure cores (membership/swim.py, router/ring.py)."""

from __future__ import annotations

import random

from shardline.membership.swim import Send, Swim, SwimConfig
from shardline.membership.swim_state import PushPull
from shardline.router.ring import Ring, RingMember


def _push_pulls(effects: list[object]) -> int:
    return sum(1 for e in effects if isinstance(e, Send) and isinstance(e.message.body, PushPull))


def test_set_seeds_on_every_view_change_does_not_storm_the_roster() -> None:
    """Shells call set_seeds on every view change; only a roster change (or a due retry)
    starts a join round, so a cold start is not N^2 full-state push-pulls."""
    swim = Swim("a", "10.0.0.1:7946", SwimConfig(), random.Random(1), now=0.0)
    roster = {f"n{i}": f"10.0.1.{i}:7946" for i in range(20)}
    assert _push_pulls(list(swim.set_seeds(roster, 0.0))) == 3  # one round, fan-out 3
    assert _push_pulls(list(swim.set_seeds(roster, 0.1))) == 0  # same roster: the retry does it
    assert _push_pulls(list(swim.set_seeds(dict(roster, x="10.0.2.1:7946"), 0.2))) == 3
    assert _push_pulls(list(swim.on_tick(1.3))) >= 3  # join_retry_s later: the next round


def test_dead_roster_seeds_are_push_pulled_every_reconnect_interval() -> None:
    """The split-brain fix: a seed held dead is contacted again (it refutes if alive)."""
    config = SwimConfig(reconnect_interval_s=5.0)
    a = Swim("a", "10.0.0.1:7946", config, random.Random(1), now=0.0)
    b = Swim("b", "10.0.0.2:7946", config, random.Random(2), now=0.0)
    a.set_seeds({"b": b.address}, 0.0)
    for effect in b.set_seeds({"a": a.address}, 0.0):  # b joins a
        if isinstance(effect, Send):
            a.on_message(effect.message, b.address, 0.0)
    assert a.members()["b"].state.value == "alive"
    now = 0.0
    while a.members()["b"].state.value != "dead":  # b hears nothing: suspected, then dead
        now += 0.1
        a.on_tick(now)
    later = [e for t in range(1, 80) for e in a.on_tick(now + t * 0.1)]
    to_b = [e for e in later if isinstance(e, Send) and e.to_address == b.address]
    assert to_b and all(isinstance(e.message.body, PushPull) for e in to_b)
    refuted = [e for m in to_b for e in b.on_message(m.message, a.address, now + 8.0)]
    assert any(isinstance(e, Send) and e.to_address == a.address for e in refuted)


def test_rings_over_the_same_members_share_their_continuum() -> None:
    members = [RingMember(f"n{i:03d}") for i in range(100)]
    first = Ring(members)
    second = Ring(reversed(members))
    assert first == second
    assert first.owners("m@1", 2) is second.owners("m@1", 2)  # one memo for both
    other = Ring(members[:-1])
    assert other != first and other.owners("m@1", 2) is not first.owners("m@1", 2)
    weighted = Ring([*members[:-1], RingMember("n099", 2.0)])
    assert weighted != first and len(weighted.owners("m@1", 3)) == 3
