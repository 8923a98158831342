"""SWIM membership as a pure state machine (probing, suspicion, dissemination, push-pull).

``Swim`` never touches sockets, clocks or global randomness: the driver passes ``now``
(float seconds) into every call, randomness comes from the ``random.Random`` given to the
constructor, and the outcome of every call is a list of effects (``Send`` a message,
``MemberChanged``, ``LoadChanged``). The UDP shell (``shardline.membership.gossip``) and the
simulator drive the same code; same inputs and seed give the same outputs.

Protocol: SWIM (Das et al. 2002) with the Lifeguard extensions (Dadgar et al. 2018):
round-robin probing in a shuffled order, indirect probes through k relays (which nack when
the target stays silent), local health (probe period and timeout scale with missed nacks
and refutations), suspicion timeouts that shrink with independent confirmations, buddy
piggybacking (a suspected member hears about it first), incarnation-numbered refutation,
periodic push-pull anti-entropy. Load (in-flight count, a fixed-size ``Load`` summary)
rides on each member's records, ordered by a per-member load sequence number inside an incarnation.
The merge rules (which claim wins) live in ``shardline.membership.swim_merge``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, replace

from shardline.membership.dissemination import (
    body_size,
    envelope_head_size,
    envelope_size,
    update_entry_size,
    varint_size,
)
from shardline.membership.swim_merge import MergeCore
from shardline.membership.swim_state import (
    LIVE_STATES,
    MAX_IN_FLIGHT,
    NO_LOAD,
    Ack,
    Body,
    Effect,
    Load,
    LoadChanged,
    Member,
    MemberChanged,
    MemberState,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Send,
    SwimConfig,
    Update,
)

__all__ = [
    "NO_LOAD",
    "Effect",
    "Load",
    "LoadChanged",
    "Member",
    "MemberChanged",
    "MemberState",
    "Message",
    "Send",
    "Swim",
    "SwimConfig",
    "Update",
]


@dataclass
class _Probe:
    target_id: str
    seq: int
    indirect_at: float
    ends_at: float
    acked: bool = False
    indirect_sent: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass(frozen=True)
class _Relay:
    requester_address: str
    requester_seq: int
    expires_at: float


class Swim(MergeCore):
    """One member's SWIM state machine. See the module docstring."""

    def __init__(
        self,
        node_id: str,
        address: str,
        config: SwimConfig,
        rng: random.Random,
        now: float,
        incarnation: int = 0,
    ) -> None:
        super().__init__(node_id, address, config, rng, now, incarnation)
        self._seq = rng.getrandbits(32)
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._next_probe_at = now + rng.uniform(0.0, config.probe_interval_s)
        self._next_push_pull_at = now + rng.uniform(0.5, 1.0) * config.push_pull_interval_s
        self._seeds: dict[str, str] = {}
        self._seeds_given: Mapping[str, str] | None = None
        self._next_join_at: float | None = None
        self._next_reconnect_at = now + config.reconnect_interval_s

    # ------------------------------------------------------------------ public API

    def set_seeds(self, seeds: Mapping[str, str], now: float) -> list[Effect]:
        """Adopt the etcd roster (node_id -> gossip address); contact members not yet known.

        Shells call this on every view change: a join round runs at once only when the
        roster changed or no retry is pending (else the retry, every ``join_retry_s``,
        does it), so a cold start of N members is not N^2 full-state push-pulls. The same
        mapping object given again is taken as unchanged (give a new one, never mutate it)."""
        if seeds is self._seeds_given:  # (the same roster again: a fleet's hot path)
            changed = False
        else:
            self._seeds_given = seeds
            own = {nid: addr for nid, addr in seeds.items() if nid != self.node_id}
            changed = own != self._seeds
            self._seeds = own
        if self._left:
            return []
        out: list[Effect] = []
        if changed or self._next_join_at is None:
            self._join(now, out)
        return out

    def settle(self, members: Mapping[str, str], now: float) -> None:
        """Hold ``members`` (node id -> gossip address) alive at incarnation 0, as a member
        of a converged cluster holds them: no effects, nothing queued to gossip.

        For a simulated fleet that starts in its steady state (``shardline.sim``, scenario
        ``cluster.gossip_settled``): a cold start of N members at once is N join rounds of
        full-state push-pulls, O(N^2) records each round, which is not what a running fleet
        does and dominates a 1 000-node run."""
        added = [n for n in sorted(members) if n != self.node_id and n not in self._members]
        for nid in added:
            self._members[nid] = Member(nid, members[nid], 0, MemberState.ALIVE, now)
        self._live_count = None
        rest = self._probe_order[self._probe_index :] + added
        self._rng.shuffle(rest)
        self._probe_order[self._probe_index :] = rest

    def set_local_load(self, in_flight: int, load: Load = NO_LOAD) -> None:
        """Publish this node's load; it rides on our own alive record (no incarnation bump).

        The record has a fixed size whatever the node holds (``Load`` is a summary), so it
        always fits a datagram with the node id and address, both bounded."""
        if not 0 <= in_flight <= MAX_IN_FLIGHT:
            raise ValueError(f"in_flight must be in 0..{MAX_IN_FLIGHT}, got {in_flight}")
        if not isinstance(load, Load):
            raise TypeError(f"load must be a Load, got {load!r}")
        if (in_flight, load) == (self._in_flight, self._load):
            return
        self._in_flight, self._load = in_flight, load
        self._load_seq += 1
        self._refresh_self()
        self._queue.enqueue(self._self_update(), load_only=True)

    def on_tick(self, now: float) -> list[Effect]:
        """Drive probes, indirect probes, suspicion expiry, reaping, push-pull and joins."""
        out: list[Effect] = []
        if self._left:
            return out
        for seq, relay in sorted(self._relays.items()):
            if relay.expires_at <= now:
                del self._relays[seq]
                out.append(self._send(relay.requester_address, None, Nack(relay.requester_seq)))
        self._run_probe(now, out)
        self._expire_suspicions(now, out)
        self._reap(now)
        if now >= self._next_push_pull_at:
            self._next_push_pull_at = now + self.config.push_pull_interval_s
            alive = self._others(MemberState.ALIVE)
            if alive:
                target = self._members[self._rng.choice(alive)]
                out += self._push_pull(target.address, target.node_id, want_reply=True)
        if self._next_join_at is not None and now >= self._next_join_at:
            self._join(now, out)
        if now >= self._next_reconnect_at:
            self._next_reconnect_at = now + self.config.reconnect_interval_s
            self._reconnect(out)
        return out

    def on_message(self, msg: Message, from_address: str, now: float) -> list[Effect]:
        """Handle one datagram from ``from_address`` (replies go back there)."""
        out: list[Effect] = []
        if self._left or msg.cluster != self.config.cluster or msg.sender_id == self.node_id:
            return out
        self._apply_all(msg.updates, now, out)
        body = msg.body
        if isinstance(body, Ping):
            if body.target_id == self.node_id:
                out.append(self._send(from_address, msg.sender_id, Ack(body.seq)))
        elif isinstance(body, Ack):
            self._on_ack(body.seq, out)
        elif isinstance(body, Nack):
            if self._probe is not None and self._probe.seq == body.seq:
                self._probe.nacks += 1
        elif isinstance(body, PingReq):
            seq = self._next_seq()
            self._relays[seq] = _Relay(from_address, body.seq, now + self.config.probe_timeout_s)
            out.append(self._send(body.target_address, body.target_id, Ping(seq, body.target_id)))
        else:
            self._apply_all(body.members, now, out)
            if body.want_reply:
                out += self._push_pull(from_address, msg.sender_id, want_reply=False)
        return out

    def leave(self, now: float) -> list[Effect]:
        """Leave gracefully: tell every live member we left; stop probing and answering."""
        if self._left:
            return []
        previous = self._members[self.node_id]
        self._left = True
        self._probe = None
        self._relays.clear()
        self._members[self.node_id] = replace(
            previous, state=MemberState.LEFT, state_changed_at=now
        )
        self._live_count = None
        record = self._self_update()
        out: list[Effect] = [MemberChanged(self._members[self.node_id], previous.state)]
        for nid in self._others(MemberState.ALIVE, MemberState.SUSPECT):
            body = PushPull(want_reply=False, members=(record,))
            out.append(Send(self._members[nid].address, self._message(body, ())))
        return out

    def members(self) -> Mapping[str, Member]:
        """A snapshot of the membership table, this node included."""
        return dict(self._members)

    def next_deadline(self) -> float | None:
        """The earliest time ``on_tick`` has work to do (None after leaving)."""
        if self._left:
            return None
        times = [self._next_push_pull_at, self._next_reconnect_at]
        probe = self._probe
        if probe is None:
            times.append(self._next_probe_at)
        else:
            times.append(probe.ends_at)
            if not probe.acked and not probe.indirect_sent:
                times.append(probe.indirect_at)
        if self._next_join_at is not None:
            times.append(self._next_join_at)
        times += [r.expires_at for r in self._relays.values()]
        times += [s.deadline() for s in self._suspicions.values()]
        times += self._gone_at.values()
        times += [t for _, _, t in self._tombstones.values()]
        return min(times)

    @property
    def local_health(self) -> int:
        """Lifeguard local health score (0 = healthy); scales our probe period."""
        return self._health

    # ------------------------------------------------------------------ probing

    def _run_probe(self, now: float, out: list[Effect]) -> None:
        probe = self._probe
        if probe is not None:
            if not probe.acked and not probe.indirect_sent and now >= probe.indirect_at:
                self._send_indirect(probe, now, out)
            if now >= probe.ends_at:
                self._probe = None
                self._next_probe_at = max(self._next_probe_at, probe.ends_at)
                self._finish_probe(probe, now, out)
        if self._probe is None and now >= self._next_probe_at:
            self._start_probe(now, out)

    def _start_probe(self, now: float, out: list[Effect]) -> None:
        scale = 1 + self._health
        self._next_probe_at = now + self.config.probe_interval_s * scale
        target_id = self._next_target()
        if target_id is None:
            return
        seq = self._next_seq()
        self._probe = _Probe(
            target_id=target_id,
            seq=seq,
            indirect_at=now + self.config.probe_timeout_s * scale,
            ends_at=self._next_probe_at,
        )
        out.append(self._send(self._members[target_id].address, target_id, Ping(seq, target_id)))

    def _next_target(self) -> str | None:
        while True:
            if self._probe_index >= len(self._probe_order):
                self._probe_order = self._others(MemberState.ALIVE, MemberState.SUSPECT)
                self._rng.shuffle(self._probe_order)
                self._probe_index = 0
                if not self._probe_order:
                    return None
            nid = self._probe_order[self._probe_index]
            self._probe_index += 1
            member = self._members.get(nid)
            if member is not None and member.state in LIVE_STATES:
                return nid

    def _send_indirect(self, probe: _Probe, now: float, out: list[Effect]) -> None:
        probe.indirect_sent = True
        target = self._members.get(probe.target_id)
        if target is None or target.state not in LIVE_STATES:
            return
        # A late tick (a stalled loop) must not shorten the window the relays get.
        window = probe.ends_at - probe.indirect_at
        if now + window > probe.ends_at:
            probe.ends_at = now + window
            self._next_probe_at = probe.ends_at
        # Retry the direct path too: under loss it is as good a second chance as a relay.
        out.append(self._send(target.address, target.node_id, Ping(probe.seq, target.node_id)))
        candidates = [nid for nid in self._others(MemberState.ALIVE) if nid != target.node_id]
        relays = self._rng.sample(candidates, min(self.config.indirect_probes, len(candidates)))
        probe.expected_nacks = len(relays)
        body = PingReq(probe.seq, target.node_id, target.address)
        out.extend(self._send(self._members[nid].address, nid, body) for nid in relays)

    def _finish_probe(self, probe: _Probe, now: float, out: list[Effect]) -> None:
        target = self._members.get(probe.target_id)
        if probe.acked or target is None or target.state not in LIVE_STATES:
            return  # (a target that left or died meanwhile says nothing about our health)
        # Lifeguard: relays that did not even nack point at us (slow, overloaded, cut off).
        missed = probe.expected_nacks - probe.nacks if probe.expected_nacks else 1
        self._health = min(self.config.max_local_health, self._health + missed)
        claim = self._record(target, origin_id=self.node_id)
        self._apply(replace(claim, state=MemberState.SUSPECT), now, out)

    def _on_ack(self, seq: int, out: list[Effect]) -> None:
        probe = self._probe
        if probe is not None and probe.seq == seq:
            if not probe.acked:
                probe.acked = True
                self._health = max(0, self._health - 1)
            return
        relay = self._relays.pop(seq, None)
        if relay is not None:
            out.append(self._send(relay.requester_address, None, Ack(relay.requester_seq)))

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % 2**64
        return self._seq

    # ------------------------------------------------------------------ joins, push-pull

    def _unknown_seeds(self) -> list[str]:
        known = self._members.keys() | self._tombstones.keys()
        return [nid for nid in sorted(self._seeds) if nid not in known]

    def _join(self, now: float, out: list[Effect]) -> None:
        unknown = self._unknown_seeds()
        if not unknown:
            self._next_join_at = None
            return
        self._next_join_at = now + self.config.join_retry_s
        fanout = max(3, self.config.indirect_probes)
        for nid in self._rng.sample(unknown, min(fanout, len(unknown))):
            out += self._push_pull(self._seeds[nid], nid, want_reply=True)

    def _reconnect(self, out: list[Effect]) -> None:
        """Push-pull with one roster seed we hold dead or tombstoned (partition healing).

        Probes, relays and push-pulls only go to live members, and a seed is only joined
        while unknown: without this, the two sides of a healed partition, each holding the
        other dead, would not exchange a datagram until the tombstones expire (dead_reap_s
        + tombstone_s). A member that really is dead just does not answer.
        """
        dead = [
            nid
            for nid in sorted(self._seeds)
            if (nid in self._members and self._members[nid].state is MemberState.DEAD)
            or (nid not in self._members and nid in self._tombstones)
        ]
        if dead:
            nid = self._rng.choice(dead)
            out += self._push_pull(self._seeds[nid], nid, want_reply=True)

    def _push_pull(self, address: str, to_id: str, *, want_reply: bool) -> list[Effect]:
        """Our full state to ``address``, split into datagrams; only the first asks a reply."""
        records = [self._record(m) for _, m in sorted(self._members.items())]
        buddy = self._buddy_record(to_id)
        if buddy is not None and to_id not in self._members:  # a restarted member must hear
            records.append(buddy)  # it was declared dead (tombstone) to refute it
        out: list[Effect] = []
        chunk: list[Update] = []
        chunk_bytes = 0
        head, limit = (
            envelope_head_size(self.config.cluster, self.node_id, self.address),
            self._limit,
        )

        def fits(body: int) -> bool:  # the whole datagram, for a PushPull body of this size
            return head + 1 + varint_size(body) + body <= limit

        for record in records:
            size = update_entry_size(record)
            if not fits(2 + size):  # not even alone (2: the want_reply flag)
                continue
            ask = want_reply and not out
            if chunk and not fits((2 if ask else 0) + chunk_bytes + size):
                out.append(Send(address, self._message(PushPull(ask, tuple(chunk)), ())))
                chunk, chunk_bytes = [], 0
            chunk.append(record)
            chunk_bytes += size
        if chunk or not out:
            ask = want_reply and not out
            out.append(Send(address, self._message(PushPull(ask, tuple(chunk)), ())))
        return out

    # ------------------------------------------------------------------ sending

    @property
    def _limit(self) -> int:
        return self.config.max_packet_bytes

    def _envelope(self, body: Body, extra: int, ups: int) -> int:
        return envelope_size(
            self.config.cluster, self.node_id, self.address, body_size(body) + extra, ups
        )

    def _fits_alone(self, record: Update) -> bool:
        return self._envelope(PushPull(True, ()), update_entry_size(record), 0) <= self._limit

    def _message(self, body: Body, ups: tuple[Update, ...]) -> Message:
        return Message(self.config.cluster, self.node_id, self.address, body, ups)

    def _send(self, to_address: str, to_id: str | None, body: Ping | Ack | Nack | PingReq) -> Send:
        """A message with as many piggybacked updates as fit (buddy record first)."""
        budget = self._limit - self._envelope(body, 0, 0)
        limit = self.config.retransmit_limit(self._n_live())
        ups = self._queue.select(budget, limit, self._buddy_record(to_id))
        return Send(to_address, self._message(body, ups))
