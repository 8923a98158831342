"""Gossip datagrams on the wire: encode the core's messages, decode and validate received ones.

One datagram is one ``shardline.gossip.v1.Envelope`` (betterproto). ``decode`` is the
trust boundary: anything that is too big, not parseable, for another cluster, missing a
required field or carrying absurd values (negative in-flight counts, absurd byte counts,
over-long ids) raises ``GossipDecodeError`` with a one-line reason, and nothing else ever
escapes it. What it returns is the core's plain dataclasses (``shardline.membership.swim_state``).
"""

from __future__ import annotations

from typing import Any

import betterproto

from shardline.membership._proto.shardline.gossip import v1 as gpb
from shardline.membership.swim_state import (
    MAX_ADDRESS_CHARS,
    MAX_BYTES,
    MAX_COUNTER,
    MAX_ID_CHARS,
    MAX_IN_FLIGHT,
    Ack,
    Body,
    Load,
    MemberState,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    SwimConfig,
    Update,
)

DEFAULT_MAX_PACKET_BYTES = SwimConfig().max_packet_bytes
MAX_SEQ = 2**64 - 1

_TO_PB = {
    MemberState.ALIVE: gpb.MemberState.ALIVE,
    MemberState.SUSPECT: gpb.MemberState.SUSPECT,
    MemberState.DEAD: gpb.MemberState.DEAD,
    MemberState.LEFT: gpb.MemberState.LEFT,
}
_FROM_PB = {int(pb): state for state, pb in _TO_PB.items()}


class GossipDecodeError(ValueError):
    """A datagram that is not a valid gossip message for this cluster."""


# ----------------------------------------------------------------------------- encode


def _update_to_pb(u: Update) -> gpb.MemberUpdate:
    return gpb.MemberUpdate(
        node_id=u.node_id,
        address=u.address,
        incarnation=u.incarnation,
        state=_TO_PB[u.state],
        load_seq=u.load_seq,
        in_flight=u.in_flight,
        resident_bytes=u.load.resident_bytes,
        loaded_count=u.load.loaded_count,
        loaded_version=u.load.loaded_version,
        origin_id=u.origin_id,
    )


def encode(msg: Message) -> bytes:
    """The datagram for ``msg``."""
    env = gpb.Envelope(
        cluster=msg.cluster,
        sender_id=msg.sender_id,
        sender_address=msg.sender_address,
        updates=[_update_to_pb(u) for u in msg.updates],
    )
    body = msg.body
    if isinstance(body, Ping):
        env.ping = gpb.Ping(seq=body.seq, target_id=body.target_id)
    elif isinstance(body, Ack):
        env.ack = gpb.Ack(seq=body.seq)
    elif isinstance(body, Nack):
        env.nack = gpb.Nack(seq=body.seq)
    elif isinstance(body, PingReq):
        env.ping_req = gpb.PingReq(
            seq=body.seq, target_id=body.target_id, target_address=body.target_address
        )
    else:
        env.push_pull = gpb.PushPull(
            want_reply=body.want_reply, members=[_update_to_pb(u) for u in body.members]
        )
    return bytes(env)


# ----------------------------------------------------------------------------- decode


def decode(data: bytes, cluster: str, max_packet_bytes: int = DEFAULT_MAX_PACKET_BYTES) -> Message:
    """Parse and validate one datagram for ``cluster``; raises ``GossipDecodeError``."""
    if len(data) > max_packet_bytes:
        raise GossipDecodeError(f"datagram of {len(data)} bytes exceeds {max_packet_bytes}")
    if not data:
        raise GossipDecodeError("empty datagram")
    try:
        env = gpb.Envelope().parse(bytes(data))
    except Exception as exc:  # betterproto raises many types on garbage
        raise GossipDecodeError(f"not a gossip envelope: {type(exc).__name__}") from None
    try:
        return _validate(env, cluster)
    except GossipDecodeError:
        raise
    except Exception as exc:  # a field of an unexpected type: still just a bad packet
        raise GossipDecodeError(f"malformed envelope: {type(exc).__name__}: {exc}") from None


def _validate(env: gpb.Envelope, cluster: str) -> Message:
    got_cluster = _text(env.cluster, "cluster", MAX_ID_CHARS)
    if got_cluster != cluster:
        raise GossipDecodeError(f"cluster {got_cluster!r} is not {cluster!r}")
    sender_id = _text(env.sender_id, "sender_id", MAX_ID_CHARS)
    sender_address = _address(env.sender_address, "sender_address")
    name, found = betterproto.which_one_of(env, "body")
    value: Any = found
    body: Body
    if name == "ping":
        body = Ping(_seq(value.seq), _text(value.target_id, "ping.target_id", MAX_ID_CHARS))
    elif name == "ack":
        body = Ack(_seq(value.seq))
    elif name == "nack":
        body = Nack(_seq(value.seq))
    elif name == "ping_req":
        body = PingReq(
            _seq(value.seq),
            _text(value.target_id, "ping_req.target_id", MAX_ID_CHARS),
            _address(value.target_address, "ping_req.target_address"),
        )
    elif name == "push_pull":
        if not isinstance(value.want_reply, bool):
            raise GossipDecodeError("push_pull.want_reply is not a bool")
        members = _updates(value.members, "push_pull.members")
        body = PushPull(value.want_reply, members)
    else:
        raise GossipDecodeError("envelope has no body")
    return Message(got_cluster, sender_id, sender_address, body, _updates(env.updates, "updates"))


def _text(value: Any, name: str, max_chars: int) -> str:
    if not isinstance(value, str) or not value:
        raise GossipDecodeError(f"{name} is missing")
    if len(value) > max_chars:
        raise GossipDecodeError(f"{name} is longer than {max_chars} characters")
    if not value.isprintable() or value != value.strip():
        raise GossipDecodeError(f"{name} has unprintable or surrounding space characters")
    return value


def _address(value: Any, name: str) -> str:
    text = _text(value, name, MAX_ADDRESS_CHARS)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise GossipDecodeError(f"{name} {text!r} is not host:port")
    return text


def _seq(value: Any) -> int:
    if not isinstance(value, int) or not 0 <= value <= MAX_SEQ:
        raise GossipDecodeError("seq is out of range")
    return value


def _counter(value: Any, name: str) -> int:
    if not isinstance(value, int) or not 0 <= value <= MAX_COUNTER:
        raise GossipDecodeError(f"{name} is out of range (0..{MAX_COUNTER})")
    return value


def _updates(values: Any, name: str) -> tuple[Update, ...]:
    if not isinstance(values, list):
        raise GossipDecodeError(f"{name} is not a list")
    return tuple(_update(v, f"{name}[{i}]") for i, v in enumerate(values))


def _update(u: Any, name: str) -> Update:
    if not isinstance(u, gpb.MemberUpdate):
        raise GossipDecodeError(f"{name} is not a member update")
    state = _FROM_PB.get(int(u.state))
    if state is None:
        raise GossipDecodeError(f"{name}.state {int(u.state)} is not a member state")
    in_flight = u.in_flight
    if not isinstance(in_flight, int) or not 0 <= in_flight <= MAX_IN_FLIGHT:
        raise GossipDecodeError(f"{name}.in_flight {in_flight} is out of range")
    resident = u.resident_bytes
    if not isinstance(resident, int) or not 0 <= resident <= MAX_BYTES:
        raise GossipDecodeError(f"{name}.resident_bytes {resident} is out of range")
    load = Load(
        resident_bytes=resident,
        loaded_count=_counter(u.loaded_count, f"{name}.loaded_count"),
        loaded_version=_counter(u.loaded_version, f"{name}.loaded_version"),
    )
    return Update(
        node_id=_text(u.node_id, f"{name}.node_id", MAX_ID_CHARS),
        address=_address(u.address, f"{name}.address"),
        incarnation=_counter(u.incarnation, f"{name}.incarnation"),
        state=state,
        origin_id=_text(u.origin_id, f"{name}.origin_id", MAX_ID_CHARS),
        load_seq=_counter(u.load_seq, f"{name}.load_seq"),
        in_flight=in_flight,
        load=load,
    )
