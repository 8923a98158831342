"""The membership table of the SWIM core and the rules for merging gossip claims into it.

Precedence (SWIM paper, with incarnations owned by each member):
  ALIVE(j)   overrides any record with incarnation i < j;
  SUSPECT(j) overrides ALIVE(i) for i <= j (and a SUSPECT(i) for i < j); a SUSPECT(i)
             about a member we already suspect at i is a Lifeguard confirmation;
  DEAD(j)    overrides ALIVE/SUSPECT(i) for i <= j, anything for i < j;
  LEFT(j)    overrides ALIVE/SUSPECT/DEAD(i) for i <= j, anything for i < j.
A claim about ourselves that is not our current alive record is refuted: we bump our
incarnation past it and disseminate ALIVE. Load (in-flight, the load summary) is ordered by
(incarnation, load_seq), independently of the state. Dead and left members are reaped
after ``dead_reap_s``; a tombstone keeps their incarnation so stale records cannot
resurrect them.

``Swim`` (``shardline.membership.swim``) subclasses ``MergeCore`` and adds probing and messaging.
"""

from __future__ import annotations

import random
from dataclasses import replace

from shardline.membership.dissemination import Disseminator
from shardline.membership.swim_state import (
    LIVE_STATES,
    NO_LOAD,
    Effect,
    Load,
    LoadChanged,
    Member,
    MemberChanged,
    MemberState,
    Suspicion,
    SwimConfig,
    Update,
)

ALIVE, SUSPECT, DEAD, LEFT = (
    MemberState.ALIVE,
    MemberState.SUSPECT,
    MemberState.DEAD,
    MemberState.LEFT,
)


class MergeCore:
    """Member table, suspicion timers, tombstones and the dissemination queue."""

    def __init__(
        self,
        node_id: str,
        address: str,
        config: SwimConfig,
        rng: random.Random,
        now: float,
        incarnation: int,
    ) -> None:
        if not node_id or not address:
            raise ValueError("node_id and address must be non-empty")
        if incarnation < 0:
            raise ValueError("incarnation must be >= 0")
        self.node_id = node_id
        self.address = address
        self.config = config
        self._rng = rng
        self._incarnation = incarnation
        self._load_seq = 0
        self._in_flight = 0
        self._load: Load = NO_LOAD
        self._left = False
        self._health = 0
        self._members: dict[str, Member] = {
            node_id: Member(node_id, address, incarnation, ALIVE, now)
        }
        self._origins: dict[str, str] = {}  # who made the claim we hold (suspect/dead)
        self._suspicions: dict[str, Suspicion] = {}
        self._gone_at: dict[str, float] = {}  # dead/left member -> when to forget it
        self._tombstones: dict[str, tuple[int, str, float]] = {}  # -> (inc, address, expiry)
        self._live_count: int | None = 1  # cached _n_live(); None when stale
        self._probe_order: list[str] = []
        self._probe_index = 0
        self._queue = Disseminator()
        self._queue.enqueue(self._self_update())

    # ------------------------------------------------------------------ records

    def _self_update(self) -> Update:
        state = LEFT if self._left else ALIVE
        return Update(
            self.node_id,
            self.address,
            self._incarnation,
            state,
            self.node_id,
            self._load_seq,
            self._in_flight,
            self._load,
        )

    def _refresh_self(self) -> None:
        me = self._members[self.node_id]
        self._members[self.node_id] = replace(
            me,
            incarnation=self._incarnation,
            in_flight=self._in_flight,
            load=self._load,
            load_seq=self._load_seq,
        )

    def _record(self, member: Member, origin_id: str | None = None) -> Update:
        """What we believe about ``member``, as a gossip record."""
        if member.node_id == self.node_id:
            return self._self_update()
        origin = origin_id or self._origins.get(member.node_id, member.node_id)
        return Update(
            member.node_id,
            member.address,
            member.incarnation,
            member.state,
            origin,
            member.load_seq,
            member.in_flight,
            member.load,
        )

    def _buddy_record(self, to_id: str | None) -> Update | None:
        """Our claim about the destination when it is not alive to us (so it can refute)."""
        if to_id is None:
            return None
        member = self._members.get(to_id)
        if member is not None:
            return None if member.state is ALIVE else self._record(member)
        tomb = self._tombstones.get(to_id)
        if tomb is None:
            return None
        return Update(to_id, tomb[1], tomb[0], DEAD, self.node_id)

    def _others(self, *states: MemberState) -> list[str]:
        """Sorted ids of the other members in ``states``."""
        me = self.node_id
        return [nid for nid, m in sorted(self._members.items()) if nid != me and m.state in states]

    def _n_live(self) -> int:
        """Alive and suspect members, ourselves included (the N of the formulas)."""
        if self._live_count is None:
            self._live_count = sum(1 for m in self._members.values() if m.state in LIVE_STATES)
        return self._live_count

    # ------------------------------------------------------------------ merging

    def _apply_all(self, updates: tuple[Update, ...], now: float, out: list[Effect]) -> None:
        """Merge the claims of one datagram, skipping at once (a hot loop: most piggybacked
        records are known) the alive claims about others that ``_merge`` would ignore."""
        members, me = self._members, self.node_id
        for u in updates:
            cur = members.get(u.node_id)
            if (
                cur is not None
                and u.state is ALIVE
                and u.node_id != me
                and (
                    u.incarnation < cur.incarnation
                    or (u.incarnation == cur.incarnation and u.load_seq <= cur.load_seq)
                )
            ):
                continue
            self._apply(u, now, out)

    def _apply(self, u: Update, now: float, out: list[Effect]) -> None:
        """Merge one claim (from gossip, push-pull or our own probing)."""
        if u.node_id == self.node_id:
            self._apply_about_self(u)
            return
        cur = self._members.get(u.node_id)
        if cur is None:
            self._apply_new(u, now, out)
            return
        self._merge(cur, u, now, out)
        after = self._members[cur.node_id]
        if (after.in_flight, after.load) != (cur.in_flight, cur.load):
            out.append(LoadChanged(after))

    def _merge(self, cur: Member, u: Update, now: float, out: list[Effect]) -> None:
        newer = u.incarnation > cur.incarnation
        same = u.incarnation == cur.incarnation
        if u.state is ALIVE:
            accept = newer
        elif u.state is SUSPECT:
            if cur.state is SUSPECT and (same or newer):
                self._confirm(cur, u, now)
                return
            accept = cur.state is ALIVE and (same or newer)
        elif u.state is DEAD:
            accept = newer or (same and cur.state in LIVE_STATES)
        else:
            accept = newer or (same and cur.state is not LEFT)
        if accept:
            self._set(cur, u, now, out)
        elif same and u.load_seq > cur.load_seq:
            self._members[cur.node_id] = self._with_load(cur, u)
            self._queue.enqueue(self._record(self._members[cur.node_id]), load_only=True)

    @staticmethod
    def _with_load(member: Member, u: Update) -> Member:
        m = member  # (direct construction: dataclasses.replace is slow on this hot path)
        return Member(
            m.node_id, m.address, m.incarnation, m.state, m.state_changed_at,
            u.in_flight, u.load, u.load_seq,
        )  # fmt: skip

    def _apply_new(self, u: Update, now: float, out: list[Effect]) -> None:
        if u.state is not ALIVE:  # suspect/dead/left about a member we never knew
            return
        tomb = self._tombstones.get(u.node_id)
        if tomb is not None and u.incarnation <= tomb[0]:
            return
        self._tombstones.pop(u.node_id, None)
        member = Member(
            u.node_id, u.address, u.incarnation, ALIVE, now, u.in_flight, u.load, u.load_seq
        )
        self._members[u.node_id] = member
        self._live_count = None
        self._origins.pop(u.node_id, None)
        self._add_to_probe_order(u.node_id)
        self._queue.enqueue(self._record(member))
        out.append(MemberChanged(member, None))

    def _set(self, cur: Member, u: Update, now: float, out: list[Effect]) -> None:
        newer = u.incarnation > cur.incarnation
        member = Member(
            cur.node_id,
            u.address if (u.state is ALIVE and newer) else cur.address,
            u.incarnation,
            u.state,
            now if u.state is not cur.state else cur.state_changed_at,
            cur.in_flight,
            cur.load,
            cur.load_seq,
        )
        if newer or u.load_seq > cur.load_seq:
            member = self._with_load(member, u)
        nid = member.node_id
        self._members[nid] = member
        self._live_count = None
        self._origins[nid] = u.origin_id
        if member.state is SUSPECT:
            if cur.state is not SUSPECT:
                self._probe_soon(nid)
            low, high = self.config.suspicion_bounds_s(self._n_live())
            expected = min(self.config.indirect_probes, max(0, self._n_live() - 2))
            seen = {u.origin_id}
            self._suspicions[nid] = Suspicion(u.incarnation, now, low, high, expected, seen)
        else:
            self._suspicions.pop(nid, None)
        if member.state in LIVE_STATES:
            self._gone_at.pop(nid, None)
            if cur.state not in LIVE_STATES:
                self._add_to_probe_order(nid)
        elif cur.state in LIVE_STATES:
            self._gone_at[nid] = now + self.config.dead_reap_s
        self._queue.enqueue(self._record(member))
        if member.state is not cur.state or member.address != cur.address:
            out.append(MemberChanged(member, cur.state))

    def _confirm(self, cur: Member, u: Update, now: float) -> None:
        """Another SUSPECT claim about a member we already suspect."""
        nid = cur.node_id
        suspicion = self._suspicions.get(nid)
        if suspicion is None:  # not expected: every SUSPECT member gets a timer in _set
            low, high = self.config.suspicion_bounds_s(self._n_live())
            suspicion = Suspicion(cur.incarnation, now, low, high, 0, {u.origin_id})
            self._suspicions[nid] = suspicion
        member = cur
        if u.incarnation > cur.incarnation:
            member = self._with_load(replace(cur, incarnation=u.incarnation), u)
            suspicion.incarnation = u.incarnation
        elif u.load_seq > cur.load_seq:
            member = self._with_load(cur, u)
        changed = member != cur
        self._members[nid] = member
        me = self.node_id
        if suspicion.confirm(u.origin_id) and (u.origin_id == me or me not in suspicion.seen):
            # Re-gossip it under its origin, unless our own independent suspicion (the more
            # useful confirmation for others) is what we already gossip.
            self._origins[nid] = u.origin_id
            changed = True
        if changed:
            self._queue.enqueue(self._record(member))

    def _apply_about_self(self, u: Update) -> None:
        if self._left:
            return
        current = (
            u.state is ALIVE
            and u.incarnation <= self._incarnation
            and (
                u.incarnation < self._incarnation
                or (u.address == self.address and u.load_seq <= self._load_seq)
            )
        )
        if current:
            return
        if u.incarnation >= self._incarnation:
            # Refute: suspected/declared dead, or a record from an earlier life of this id.
            self._incarnation = u.incarnation + 1
            if u.state is not ALIVE:
                self._health = min(self.config.max_local_health, self._health + 1)
            self._refresh_self()
        self._queue.enqueue(self._self_update())  # also re-announce over stale claims

    def _add_to_probe_order(self, nid: str) -> None:
        """Insert a (re)joined member at a random position among those still to be probed."""
        if nid in self._probe_order[self._probe_index :]:
            return
        pos = self._rng.randint(self._probe_index, len(self._probe_order))
        self._probe_order.insert(pos, nid)

    def _probe_soon(self, nid: str) -> None:
        """Probe a newly suspected member next: the Ping carries the suspicion to it (buddy
        system) and its Ack brings back the refutation, if it is alive, before our timer ends.
        """
        rest = self._probe_order[self._probe_index :]
        if nid in rest:
            rest.remove(nid)
        self._probe_order[self._probe_index :] = [nid, *rest]

    # ------------------------------------------------------------------ timers

    def _expire_suspicions(self, now: float, out: list[Effect]) -> None:
        due = sorted(
            (s.deadline(), nid) for nid, s in self._suspicions.items() if s.deadline() <= now
        )
        for _, nid in due:
            member = self._members[nid]
            claim = self._record(member, origin_id=self.node_id)
            self._apply(replace(claim, state=DEAD), now, out)

    def _reap(self, now: float) -> None:
        for nid, at in sorted(self._gone_at.items()):
            if at <= now:
                member = self._members.pop(nid)
                del self._gone_at[nid]
                self._origins.pop(nid, None)
                self._queue.drop(nid)
                expires_at = now + self.config.tombstone_s
                self._tombstones[nid] = (member.incarnation, member.address, expires_at)
        for nid, (_, _, expires_at) in sorted(self._tombstones.items()):
            if expires_at <= now:
                del self._tombstones[nid]
