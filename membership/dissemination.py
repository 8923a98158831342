"""Piggyback dissemination for SWIM: the update queue and exact datagram sizes.

``Disseminator`` holds at most one pending update per member (a newer claim replaces the
older one and starts its retransmit count over). Each outgoing Ping/Ack/Nack/PingReq
carries as many pending updates as fit in ``max_packet_bytes``: membership news first (a
member joined, was suspected, declared dead, left or refuted: its state or incarnation
changed), then load-only refreshes (the in-flight and load summary riding on an alive
record), fewest-transmitted first within each, newest first among equals; an update is
dropped after ``limit`` transmissions. Every member's load changes every few seconds: in a
fleet of 1 000, fresh load refreshes would otherwise always rank ahead of an older death
and starve its dissemination (the simulator's zone failure, 100 of 1 000 nodes: detection
took a median of 40 s, 31 % of the pairs still undetected 60 s after the crash; 15.9 s and
0.02 % with news first).

The ``*_size`` functions compute, without encoding, the exact number of bytes the
protobuf encoding of ``shardline.gossip.v1.Envelope`` takes (a wire test checks them
against betterproto), so the pure core can fill datagrams up to the limit.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable
from dataclasses import dataclass

from shardline.membership.swim_state import Ack, Body, MemberState, Nack, Ping, PingReq, Update

# ----------------------------------------------------------------------------- sizes


def varint_size(value: int) -> int:
    """Bytes of a protobuf varint (negative int64 values take 10)."""
    if value < 0:
        return 10
    size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


def _str(value: str) -> int:
    """A singular string field (tag < 16): omitted when empty."""
    if not value:
        return 0
    n = len(value.encode())
    return 1 + varint_size(n) + n


def _uint(value: int) -> int:
    """A singular integer field (tag < 16): omitted when zero."""
    return 0 if value == 0 else 1 + varint_size(value)


def _nested(size: int) -> int:
    """A length-delimited field (tag < 16) holding ``size`` bytes (always emitted)."""
    return 1 + varint_size(size) + size


def update_size(update: Update) -> int:
    """Encoded size of one MemberUpdate message (without its own tag and length)."""
    load = update.load
    return (
        _str(update.node_id)
        + _str(update.address)
        + _uint(update.incarnation)
        + 2  # state: never UNSPECIFIED, value < 128
        + _uint(update.load_seq)
        + _uint(update.in_flight)
        + _uint(load.resident_bytes)
        + _uint(load.loaded_count)
        + _uint(load.loaded_version)
        + _str(update.origin_id)
    )


@functools.lru_cache(maxsize=8192)  # push-pull sizes every member's record every time
def update_entry_size(update: Update) -> int:
    """Bytes one update adds to a message as a repeated field element."""
    return _nested(update_size(update))


def body_size(body: Body) -> int:
    """Encoded size of the body message (without its tag and length)."""
    if isinstance(body, Ping):
        return _uint(body.seq) + _str(body.target_id)
    if isinstance(body, Ack | Nack):
        return _uint(body.seq)
    if isinstance(body, PingReq):
        return _uint(body.seq) + _str(body.target_id) + _str(body.target_address)
    return (2 if body.want_reply else 0) + sum(update_entry_size(u) for u in body.members)


def envelope_head_size(cluster: str, sender_id: str, sender_address: str) -> int:
    """Bytes of an Envelope's sender fields (add ``1 + varint_size(b) + b`` for a body of b)."""
    return _str(cluster) + _str(sender_id) + _str(sender_address)


def envelope_size(
    cluster: str, sender_id: str, sender_address: str, body_bytes: int, updates_bytes: int
) -> int:
    """Encoded size of an Envelope given its body size and the sum of its update entries."""
    return (
        envelope_head_size(cluster, sender_id, sender_address) + _nested(body_bytes) + updates_bytes
    )


def message_size(
    cluster: str, sender_id: str, sender_address: str, body: Body, updates: Iterable[Update]
) -> int:
    """Exact encoded size of a whole datagram."""
    updates_bytes = sum(update_entry_size(u) for u in updates)
    return envelope_size(cluster, sender_id, sender_address, body_size(body), updates_bytes)


# ----------------------------------------------------------------------------- queue

_MIN_ENTRY_BYTES = 8  # no update entry is smaller: stop scanning below this budget


@dataclass
class _Entry:
    update: Update
    size: int
    transmits: int
    newest: int  # minus the enqueue order: sorts newest first
    load_only: bool  # a load refresh of an alive member, no membership news


_RANK = operator.attrgetter("load_only", "transmits", "newest")  # news, fewest sent, newest


class Disseminator:
    """Pending updates, one per member, each piggybacked a bounded number of times."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._order = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._entries

    def pending(self) -> dict[str, Update]:
        return {nid: e.update for nid, e in self._entries.items()}

    def enqueue(self, update: Update, *, load_only: bool = False) -> None:
        """Queue ``update`` (replacing any pending update about the same member).

        ``load_only``: it changes only the member's load (ranked after membership news).
        Replacing pending news about the same state and incarnation, it carries that news
        on: it stays news and keeps the news's transmissions and place, so the news still
        retires after ``limit`` sends however often the member's load changes."""
        self._order += 1
        if load_only:
            prev = self._entries.get(update.node_id)
            if (
                prev is not None
                and not prev.load_only
                and prev.update.state is update.state
                and prev.update.incarnation == update.incarnation
            ):
                self._entries[update.node_id] = _Entry(
                    update, update_entry_size(update), prev.transmits, prev.newest, False
                )
                return
            load_only = update.state is MemberState.ALIVE
        self._entries[update.node_id] = _Entry(
            update, update_entry_size(update), 0, -self._order, load_only
        )

    def drop(self, node_id: str) -> None:
        self._entries.pop(node_id, None)

    def select(self, budget: int, limit: int, first: Update | None = None) -> tuple[Update, ...]:
        """Updates to piggyback on one message within ``budget`` bytes; counts a transmission.

        ``first`` (Lifeguard's buddy system: what we believe about the destination when we
        suspect it) goes first whether or not it is queued.
        """
        chosen: list[Update] = []
        skip: str | None = None
        if first is not None:
            size = update_entry_size(first)
            if size <= budget:
                chosen.append(first)
                budget -= size
                skip = first.node_id
                entry = self._entries.get(first.node_id)
                if entry is not None and entry.update == first:
                    self._count(entry, limit)
        if not self._entries or budget < _MIN_ENTRY_BYTES:
            return tuple(chosen)
        for entry in sorted(self._entries.values(), key=_RANK):
            if entry.update.node_id == skip or entry.size > budget:
                continue
            chosen.append(entry.update)
            budget -= entry.size
            self._count(entry, limit)
            if budget < _MIN_ENTRY_BYTES:
                break
        return tuple(chosen)

    def _count(self, entry: _Entry, limit: int) -> None:
        entry.transmits += 1
        if entry.transmits >= limit:
            del self._entries[entry.update.node_id]
