"""Three real GossipAgents on 127.0.0.1 UDP: convergence, crash detection, leave, bad packets.

Every wait is on the agents' MemberChanged subscriptions (or a reply datagram), never a
sleep; the timeouts are generous upper bounds, not expected durations.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from shardline.membership.gossip import GossipAgent, split_address
from shardline.membership.gossip_wire import decode, encode
from shardline.membership.swim import LoadChanged, MemberChanged, MemberState, Message, SwimConfig
from shardline.membership.swim_state import Ack, Load, Ping

pytestmark = pytest.mark.integration

CONFIG = SwimConfig(cluster="itest")
IDS = ("a", "b", "c")


@pytest.fixture
async def agents() -> AsyncIterator[dict[str, GossipAgent]]:
    group = {nid: GossipAgent(nid, CONFIG) for nid in IDS}
    for agent in group.values():
        await agent.start()
    roster = {nid: agent.address for nid, agent in group.items()}
    for agent in group.values():
        agent.set_seeds(roster)
    yield group
    for agent in group.values():
        await agent.stop(graceful=False)


async def until(agents: list[GossipAgent], predicate: Callable[[], bool], limit_s: float) -> None:
    """Wait until ``predicate()`` holds, re-checking on every MemberChanged of ``agents``."""
    changed = asyncio.Event()

    def poke(_: MemberChanged) -> None:
        changed.set()

    unsubscribe = [agent.subscribe(poke) for agent in agents]
    try:
        async with asyncio.timeout(limit_s):
            while not predicate():
                await changed.wait()
                changed.clear()
    finally:
        for unsub in unsubscribe:
            unsub()


def sees(observer: GossipAgent, subject: str, state: MemberState) -> bool:
    member = observer.members().get(subject)
    return member is not None and member.state is state


def all_alive(group: list[GossipAgent]) -> bool:
    return all(sees(o, s.node_id, MemberState.ALIVE) for o in group for s in group)


async def test_agents_converge_and_share_load(agents: dict[str, GossipAgent]) -> None:
    group = list(agents.values())
    await until(group, lambda: all_alive(group), 5.0)

    pending = {"a", "c"}
    everywhere = asyncio.Event()

    def on_load(observer: str) -> Callable[[LoadChanged], None]:
        def seen(event: LoadChanged) -> None:
            if event.member.node_id == "b" and event.member.in_flight == 5:
                pending.discard(observer)
                if not pending:
                    everywhere.set()

        return seen

    for observer in ("a", "c"):
        agents[observer].subscribe_load(on_load(observer))
    agents["b"].set_local_load(5, Load(resident_bytes=123, loaded_count=1, loaded_version=3))
    await asyncio.wait_for(everywhere.wait(), 5.0)
    assert agents["c"].members()["b"].load == Load(123, 1, 3)


async def test_aborted_agent_is_confirmed_dead_by_the_others(
    agents: dict[str, GossipAgent],
) -> None:
    group = list(agents.values())
    await until(group, lambda: all_alive(group), 5.0)
    agents["c"].abort()
    survivors = [agents["a"], agents["b"]]
    started = asyncio.get_running_loop().time()
    await until(survivors, lambda: all(sees(o, "c", MemberState.DEAD) for o in survivors), 10.0)
    took = asyncio.get_running_loop().time() - started
    assert took < 10.0
    assert all(sees(o, s.node_id, MemberState.ALIVE) for o in survivors for s in survivors)


async def test_graceful_stop_is_seen_as_left(agents: dict[str, GossipAgent]) -> None:
    group = list(agents.values())
    await until(group, lambda: all_alive(group), 5.0)
    events: list[MemberChanged] = []
    for nid in ("a", "c"):
        agents[nid].subscribe(events.append)
    await agents["b"].stop(graceful=True)
    others = [agents["a"], agents["c"]]
    await until(others, lambda: all(sees(o, "b", MemberState.LEFT) for o in others), 5.0)
    assert not [e for e in events if e.member.state is MemberState.DEAD]


class _Reply(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.replies.put_nowait(data)


async def test_malformed_datagram_is_counted_and_the_agent_keeps_working(
    agents: dict[str, GossipAgent],
) -> None:
    group = list(agents.values())
    await until(group, lambda: all_alive(group), 5.0)
    target = agents["a"]
    loop = asyncio.get_running_loop()
    transport, probe = await loop.create_datagram_endpoint(
        _Reply, remote_addr=split_address(target.address)
    )
    try:
        host, port = transport.get_extra_info("sockname")[:2]
        transport.sendto(b"\x0a\xff\xffnot a gossip packet")
        transport.sendto(encode(Message("other-cluster", "x", f"{host}:{port}", Ping(1, "a"))))
        # Then a valid ping: its ack proves the agent is alive and has read the junk first.
        transport.sendto(encode(Message(CONFIG.cluster, "tester", f"{host}:{port}", Ping(7, "a"))))
        reply = decode(await asyncio.wait_for(probe.replies.get(), 5.0), CONFIG.cluster)
    finally:
        transport.close()
    assert reply.body == Ack(7) and reply.sender_id == "a"
    assert target.rejected_packets == 2
    assert all_alive(group), "the cluster is unaffected"
