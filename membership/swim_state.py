"""The data of the SWIM core: its config, members, gossip records, messages and effects.

Everything here is plain immutable data (plus the Lifeguard ``Suspicion`` timer), shared by
the pure state machine (``shardline.membership.swim``), the wire codec
(``shardline.membership.gossip_wire``), the UDP shell (``shardline.membership.gossip``) and the
simulator. Times are float seconds on whatever clock the driver passes in as ``now``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

# Bounds on what a gossip record may hold (the wire codec rejects anything beyond them).
MAX_ID_CHARS = 128  # node ids, cluster names
MAX_ADDRESS_CHARS = 255
MAX_IN_FLIGHT = 2**31 - 1
MAX_COUNTER = 2**53  # incarnations, load sequence numbers, loaded-set versions
MAX_BYTES = 2**63 - 1


@dataclass(frozen=True)
class SwimConfig:
    """Tuning of one gossip cluster; every member should run the same values.

    The defaults give a 3-node cluster a crash-detection time of about 1.5-2.5 s and keep
    a 20-node cluster free of false positives under 10 % uniform packet loss (see
    ``tests/unit/membership/test_swim.py`` and ``bench/gossip_detection.py``).
    """

    cluster: str = "default"
    probe_interval_s: float = 0.5
    # Direct ack wait before indirect probes (also the relay's wait before it nacks).
    probe_timeout_s: float = 0.2
    # k: relays asked to probe indirectly, and the most Lifeguard confirmations counted.
    indirect_probes: int = 3
    # Lifeguard: min suspicion timeout = mult * log10(max(N, 10)) * probe_interval.
    suspicion_min_mult: float = 2.0
    # Max suspicion timeout (no confirmations) = max_mult * min timeout.
    suspicion_max_mult: float = 6.0
    # lambda: each update is piggybacked lambda * ceil(log10(N + 1)) times.
    retransmit_mult: float = 4.0
    push_pull_interval_s: float = 10.0
    max_packet_bytes: int = 1400
    # Dead and left members are forgotten after this; a tombstone (incarnation) stays
    # for ``tombstone_s`` longer so stale alive records cannot resurrect them.
    dead_reap_s: float = 60.0
    tombstone_s: float = 600.0
    # Roster seeds we have not heard from are re-contacted (push-pull) this often.
    join_retry_s: float = 1.0
    # Roster seeds we hold dead (or only a tombstone of): one of them is push-pulled this
    # often, so that two sides of a healed partition, each holding the other dead, meet
    # again (the contacted member sees our claim, refutes it, and answers with its state).
    reconnect_interval_s: float = 5.0
    # Lifeguard local health: probe interval and timeout scale by (1 + score), score <= this.
    max_local_health: int = 8

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.cluster or len(self.cluster) > MAX_ID_CHARS:
            problems.append(f"cluster must be 1..{MAX_ID_CHARS} characters")
        if not self.probe_interval_s > 0:
            problems.append("probe_interval_s must be > 0")
        if not 0 < self.probe_timeout_s < self.probe_interval_s:
            problems.append("probe_timeout_s must be > 0 and < probe_interval_s")
        if not 0 <= self.indirect_probes <= 16:
            problems.append("indirect_probes must be in 0..16")
        if not self.suspicion_min_mult > 0:
            problems.append("suspicion_min_mult must be > 0")
        if not self.suspicion_max_mult >= 1:
            problems.append("suspicion_max_mult must be >= 1")
        if not self.retransmit_mult > 0:
            problems.append("retransmit_mult must be > 0")
        problems.extend(
            f"{name} must be > 0"
            for name in (
                "push_pull_interval_s",
                "dead_reap_s",
                "join_retry_s",
                "reconnect_interval_s",
            )
            if not getattr(self, name) > 0
        )
        if not self.tombstone_s >= 0:
            problems.append("tombstone_s must be >= 0")
        if not 512 <= self.max_packet_bytes <= 65_507:
            problems.append("max_packet_bytes must be in 512..65507")
        if not 0 <= self.max_local_health <= 64:
            problems.append("max_local_health must be in 0..64")
        if problems:
            raise ValueError("invalid SwimConfig: " + "; ".join(problems))

    def suspicion_bounds_s(self, n_members: int) -> tuple[float, float]:
        """(min, max) suspicion timeout for a cluster of ``n_members`` (Lifeguard)."""
        low = self.suspicion_min_mult * math.log10(max(n_members, 10)) * self.probe_interval_s
        return low, low * self.suspicion_max_mult

    def retransmit_limit(self, n_members: int) -> int:
        """How many times one update is piggybacked: lambda * ceil(log10(N + 1))."""
        return max(1, math.ceil(self.retransmit_mult * math.ceil(math.log10(n_members + 1))))


class MemberState(Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


LIVE_STATES = frozenset({MemberState.ALIVE, MemberState.SUSPECT})


@dataclass(frozen=True)
class Load:
    """The load summary a member gossips besides its in-flight count: fixed size, whatever
    the number of models it holds.

    Which models a node holds is *not* gossiped (a list grows with the catalog and a datagram
    does not): each node publishes its loaded set in etcd under its lease
    (``shardline.membership.loaded``) and gossips only the set's version, so a peer can tell
    whether the copy it read from etcd is current.
    """

    resident_bytes: int = 0
    """Bytes of model memory resident on the member."""
    loaded_count: int = 0
    """How many models are resident."""
    loaded_version: int = 0
    """Bumped on every change of the loaded set (the etcd record carries the same number)."""

    def __post_init__(self) -> None:
        for name in ("resident_bytes", "loaded_count", "loaded_version"):
            value = getattr(self, name)
            bound = MAX_BYTES if name == "resident_bytes" else MAX_COUNTER
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= bound:
                raise ValueError(f"load.{name} must be an int in 0..{bound}, got {value!r}")


NO_LOAD = Load()


@dataclass(frozen=True)
class Member:
    """One row of the membership table (``Swim.members()``)."""

    node_id: str
    address: str  # "host:port" of its gossip socket
    incarnation: int
    state: MemberState
    state_changed_at: float
    in_flight: int = 0
    load: Load = NO_LOAD
    load_seq: int = 0


@dataclass(frozen=True)
class Update:
    """A gossip record: a claim about one member, piggybacked or pushed in full state."""

    node_id: str
    address: str
    incarnation: int
    state: MemberState
    origin_id: str  # who claims it (the suspecter for SUSPECT, the member itself for ALIVE)
    load_seq: int = 0
    in_flight: int = 0
    load: Load = NO_LOAD


# --- protocol messages (the core's view of ``shardline.gossip.v1``) ---------------------


@dataclass(frozen=True)
class Ping:
    seq: int
    target_id: str


@dataclass(frozen=True)
class Ack:
    seq: int


@dataclass(frozen=True)
class Nack:
    seq: int


@dataclass(frozen=True)
class PingReq:
    seq: int
    target_id: str
    target_address: str


@dataclass(frozen=True)
class PushPull:
    want_reply: bool
    members: tuple[Update, ...]


Body = Ping | Ack | Nack | PingReq | PushPull


@dataclass(frozen=True)
class Message:
    """One datagram: envelope (cluster, sender), body, piggybacked updates."""

    cluster: str
    sender_id: str
    sender_address: str
    body: Body
    updates: tuple[Update, ...] = ()


# --- effects returned by the core -------------------------------------------------------


@dataclass(frozen=True)
class Send:
    to_address: str
    message: Message


@dataclass(frozen=True)
class MemberChanged:
    """A member appeared (``previous is None``), changed state, or changed address."""

    member: Member
    previous: MemberState | None


@dataclass(frozen=True)
class LoadChanged:
    """Another member's in-flight count or model list changed (its state did not need to)."""

    member: Member


Effect = Send | MemberChanged | LoadChanged


@dataclass
class Suspicion:
    """Lifeguard suspicion timer: starts at max, shrinks toward min with confirmations.

    timeout = max(min, max - (max - min) * log(C + 1) / log(K + 1)), where C counts distinct
    members (other than the first suspecter) that independently suspect, capped at K.
    """

    incarnation: int
    started_at: float
    min_s: float
    max_s: float
    expected: int  # K
    seen: set[str] = field(default_factory=set)  # the first suspecter, then confirmers

    @property
    def confirmations(self) -> int:
        return max(0, len(self.seen) - 1)

    def confirm(self, origin_id: str) -> bool:
        """Count an independent suspicion; False when already counted or saturated."""
        if origin_id in self.seen or self.confirmations >= self.expected:
            return False
        self.seen.add(origin_id)
        return True

    def timeout_s(self) -> float:
        if self.expected < 1:
            return self.min_s
        frac = math.log(self.confirmations + 1) / math.log(self.expected + 1)
        return max(self.min_s, self.max_s - (self.max_s - self.min_s) * frac)

    def deadline(self) -> float:
        return self.started_at + self.timeout_s()
