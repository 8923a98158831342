"""Unit tests for membership/gossip_wire.py: round trips, exact sizes, hostile datagrams."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardline.membership._proto.shardline.gossip import v1 as gpb
from shardline.membership.dissemination import message_size
from shardline.membership.gossip_wire import GossipDecodeError, decode, encode
from shardline.membership.swim import Send, Swim, SwimConfig
from shardline.membership.swim_state import (
    MAX_COUNTER,
    MAX_IN_FLIGHT,
    Ack,
    Load,
    MemberState,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Update,
)

CLUSTER = "prod-eu"
BIG = 65_507

ids = st.text(
    alphabet=st.characters(categories=("L", "N", "P", "S"), max_codepoint=0x2FF),
    min_size=1,
    max_size=40,
)
addresses = st.builds(
    lambda host, port: f"{host}:{port}",
    st.sampled_from(["127.0.0.1", "10.1.2.3", "node-7.svc", "[::1]"]),
    st.integers(1, 65535),
)
counters = st.integers(0, MAX_COUNTER)
seqs = st.integers(0, 2**64 - 1)
updates = st.builds(
    Update,
    node_id=ids,
    address=addresses,
    incarnation=counters,
    state=st.sampled_from(list(MemberState)),
    origin_id=ids,
    load_seq=counters,
    in_flight=st.integers(0, MAX_IN_FLIGHT),
    load=st.builds(
        Load,
        resident_bytes=st.integers(0, 2**63 - 1),
        loaded_count=counters,
        loaded_version=counters,
    ),
)
bodies = st.one_of(
    st.builds(Ping, seqs, ids),
    st.builds(Ack, seqs),
    st.builds(Nack, seqs),
    st.builds(PingReq, seqs, ids, addresses),
    st.builds(PushPull, st.booleans(), st.lists(updates, max_size=4).map(tuple)),
)
messages = st.builds(
    Message,
    cluster=st.just(CLUSTER),
    sender_id=ids,
    sender_address=addresses,
    body=bodies,
    updates=st.lists(updates, max_size=6).map(tuple),
)


def sample_message() -> Message:
    me = Update("n1", "127.0.0.1:7001", 3, MemberState.ALIVE, "n1", 9, 4, Load(2048, 2, 5))
    return Message(CLUSTER, "n1", "127.0.0.1:7001", Ping(77, "n2"), (me,))


@settings(max_examples=150, deadline=None)
@given(messages)
def test_round_trip_and_exact_size(msg: Message) -> None:
    data = encode(msg)
    assert decode(data, CLUSTER, BIG) == msg
    assert len(data) == message_size(
        msg.cluster, msg.sender_id, msg.sender_address, msg.body, msg.updates
    ), "the core's size arithmetic must match the encoding byte for byte"


def test_messages_the_core_builds_fit_in_a_packet_and_decode() -> None:
    config = SwimConfig(cluster=CLUSTER)
    swim = Swim("n000", "10.0.0.1:7946", config, random.Random(1), 0.0)
    # The largest summary there is: a node with every count at its maximum.
    swim.set_local_load(12, Load(2**63 - 1, MAX_COUNTER, MAX_COUNTER))
    crowd = [
        Update(
            f"n{i:03d}",
            f"10.0.{i // 200}.{i % 200 + 2}:7946",
            i % 7,
            MemberState.ALIVE,
            f"n{i:03d}",
            i,
            i * 3,
            Load(resident_bytes=i << 40, loaded_count=i * 100, loaded_version=i * 7),
        )
        for i in range(1, 300)
    ]
    join = Message(CLUSTER, "n001", crowd[0].address, PushPull(True, tuple(crowd)), ())
    effects = swim.on_message(join, crowd[0].address, 0.1)
    now = 0.1
    for _ in range(80):
        now += 0.05
        effects += swim.on_tick(now)
    sends = [e for e in effects if isinstance(e, Send)]
    pushed = [s for s in sends if isinstance(s.message.body, PushPull)]
    assert len(pushed) > 5, "a 300-member state is split over several datagrams"
    assert sum(1 for s in pushed if s.message.body.want_reply) == 0  # type: ignore[union-attr]
    carried = {u.node_id for s in pushed for u in s.message.body.members}  # type: ignore[union-attr]
    assert carried == {u.node_id for u in crowd} | {"n000"}, "every member is pushed"
    for send in sends:
        data = encode(send.message)
        assert len(data) <= config.max_packet_bytes
        assert decode(data, CLUSTER, config.max_packet_bytes) == send.message
    piggybacked = [s for s in sends if not isinstance(s.message.body, PushPull)]
    assert len(piggybacked) >= 8
    assert max(len(s.message.updates) for s in piggybacked) > 10, "packets are filled"


# ----------------------------------------------------------------------------- hostile input


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=1600))
def test_random_bytes_raise_only_gossip_decode_error(data: bytes) -> None:
    try:
        decode(data, CLUSTER)
    except GossipDecodeError as exc:
        assert str(exc)
    # (a random string may, very rarely, be a valid message: that is fine)


@settings(max_examples=60, deadline=None)
@given(messages, st.data())
def test_truncated_and_bit_flipped_packets_raise_only_gossip_decode_error(
    msg: Message, data: st.DataObject
) -> None:
    raw = encode(msg)
    cut = data.draw(st.integers(0, len(raw)))
    flips = data.draw(
        st.lists(st.tuples(st.integers(0, max(0, len(raw) - 1)), st.integers(1, 255)))
    )
    mangled = bytearray(raw[:cut])
    for pos, mask in flips:
        if pos < len(mangled):
            mangled[pos] ^= mask
    with contextlib.suppress(GossipDecodeError):
        decode(bytes(mangled), CLUSTER, BIG)


def test_oversize_datagram_is_rejected() -> None:
    with pytest.raises(GossipDecodeError, match="exceeds 1400"):
        decode(b"\x00" * 1401, CLUSTER)
    with pytest.raises(GossipDecodeError, match="empty"):
        decode(b"", CLUSTER)


def test_wrong_cluster_is_rejected() -> None:
    with pytest.raises(GossipDecodeError, match="cluster 'prod-eu' is not 'staging'"):
        decode(encode(sample_message()), "staging")


def env(**fields: object) -> bytes:
    base: dict[str, object] = {
        "cluster": CLUSTER,
        "sender_id": "n1",
        "sender_address": "127.0.0.1:7001",
    }
    if not {"ping", "ack", "nack", "ping_req", "push_pull"} & fields.keys():
        base["ack"] = gpb.Ack(seq=1)
    base.update(fields)
    return bytes(gpb.Envelope(**base))


def upd(**fields: object) -> gpb.MemberUpdate:
    base: dict[str, object] = {
        "node_id": "n2",
        "address": "127.0.0.1:7002",
        "state": gpb.MemberState.ALIVE,
        "origin_id": "n2",
    }
    base.update(fields)
    return gpb.MemberUpdate(**base)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        # Garbage either fails to parse or parses to an empty envelope, depending on the
        # protobuf runtime: refused either way.
        (b"\xff\xff\xff", "not a gossip envelope|cluster is missing"),
        (bytes(gpb.Envelope(cluster=CLUSTER, sender_id="n1", sender_address="h:1")), "no body"),
        (env(sender_id=""), "sender_id is missing"),
        (env(sender_id="x" * 129), "sender_id is longer than 128"),
        (env(sender_address="nohost"), "not host:port"),
        (env(sender_address="h:70000"), "not host:port"),
        (env(sender_id="bad\nid"), "unprintable"),
        (env(ping=gpb.Ping(seq=1)), "ping.target_id is missing"),
        (env(updates=[upd(in_flight=-1)]), r"updates\[0\].in_flight -1 is out of range"),
        (env(updates=[upd(loaded_version=2**60)]), "loaded_version is out of range"),
        (env(updates=[upd(loaded_count=2**60)]), "loaded_count is out of range"),
        (env(updates=[upd(node_id="n" * 200)]), "node_id is longer than 128"),
        (env(updates=[upd(state=gpb.MemberState.UNSPECIFIED)]), "state 0 is not"),
        (env(updates=[upd(incarnation=2**60)]), "incarnation is out of range"),
        (env(updates=[upd(origin_id="")]), "origin_id is missing"),
        (env(push_pull=gpb.PushPull(members=[upd(address="")])), "members\\[0\\].address"),
    ],
)
def test_invalid_fields_are_rejected_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(GossipDecodeError, match=reason):
        decode(data, CLUSTER)


def test_unknown_state_enum_value_is_rejected() -> None:
    # MemberUpdate{node_id: "n2", state: 9} inside Envelope.updates
    update = bytes(upd()) + b"\x20\x09"
    data = env() + b"\x7a" + bytes([len(update)]) + update
    with pytest.raises(GossipDecodeError, match="state 9 is not a member state"):
        decode(data, CLUSTER)
