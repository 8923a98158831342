"""The asyncio UDP shell around the pure SWIM core: sockets, the loop clock, callbacks.

``GossipAgent`` binds one UDP socket, feeds every datagram through ``gossip_wire.decode``
into ``Swim.on_message`` (malformed ones are dropped and counted in ``rejected_packets``),
sends the ``Send`` effects, hands ``MemberChanged`` effects to subscribers, and runs one
task that calls ``Swim.on_tick(loop.time())`` exactly when ``Swim.next_deadline()`` says:
it sleeps on an ``asyncio.Event`` (set whenever a message may have moved the deadline)
with a timeout at the deadline, so there is no fixed polling.

All decisions are the core's; this module only does I/O. ``stop(graceful=True)`` leaves
the cluster (peers see LEFT) and flushes; ``abort()`` just vanishes, like a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
from collections.abc import Callable, Mapping
from typing import TypeVar

from shardline.membership.gossip_wire import GossipDecodeError, decode, encode
from shardline.membership.swim import (
    NO_LOAD,
    Effect,
    Load,
    LoadChanged,
    Member,
    MemberChanged,
    Send,
    Swim,
    SwimConfig,
)

logger = logging.getLogger(__name__)

_E = TypeVar("_E", MemberChanged, LoadChanged)
Subscriber = Callable[[MemberChanged], None]
LoadSubscriber = Callable[[LoadChanged], None]
_FLUSH_TIMEOUT_S = 1.0


def split_address(address: str) -> tuple[str, int]:
    """("host", port) of a "host:port" / "[v6]:port" address."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, agent: GossipAgent) -> None:
        self._agent = agent
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self._agent._on_datagram(data, join_address(str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        logger.debug("gossip socket error: %s", exc)


class GossipAgent:
    """One node's gossip endpoint: a ``Swim`` core behind a UDP socket."""

    def __init__(
        self,
        node_id: str,
        config: SwimConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        advertise_host: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.node_id = node_id
        self.config = config or SwimConfig()
        self._host, self._port = host, port
        self._advertise_host = advertise_host
        self._rng = rng or random.Random()
        self._swim: Swim | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol: _Protocol | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._subscribers: list[Subscriber] = []
        self._load_subscribers: list[LoadSubscriber] = []
        self._seeds: dict[str, str] = {}
        self._load: tuple[int, Load] | None = None
        self._resolved: dict[str, tuple[str, int]] = {}
        self._resolving: set[asyncio.Task[None]] = set()
        self._closed = False
        self.rejected_packets = 0
        self.received_packets = 0
        self.sent_packets = 0
        self.packet_observer: Callable[[str, int, str], None] | None = None
        """Called with (direction: sent|received|rejected, size in bytes, message kind)."""

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind the socket, create the core, contact the seeds, start the tick task."""
        if self._swim is not None:
            raise RuntimeError("GossipAgent already started")
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self._host, self._port)
        )
        self._transport = transport
        self._protocol = protocol
        bound_host, bound_port = transport.get_extra_info("sockname")[:2]
        address = join_address(self._advertise_host or str(bound_host), int(bound_port))
        self._swim = Swim(self.node_id, address, self.config, self._rng, loop.time())
        if self._load is not None:
            self._swim.set_local_load(*self._load)
        if self._seeds:
            self._dispatch(self._swim.set_seeds(self._seeds, loop.time()))
        self._task = asyncio.create_task(self._run(), name=f"gossip-{self.node_id}")
        self._task.add_done_callback(self._task_done)
        logger.info("gossip %s listening on %s", self.node_id, address)

    async def stop(self, graceful: bool = True) -> None:
        """Stop; when ``graceful``, first tell the cluster we left and flush the socket."""
        if self._closed or self._swim is None:
            return
        if graceful:
            self._dispatch(self._swim.leave(asyncio.get_running_loop().time()))
            if self._resolving:
                await asyncio.wait(self._resolving, timeout=_FLUSH_TIMEOUT_S)
        task = self._task
        self._close()  # closing a datagram transport sends what it still buffers first
        if self._protocol is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._protocol.closed), _FLUSH_TIMEOUT_S)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def abort(self) -> None:
        """Stop at once without leaving (peers must detect us): simulates a crash."""
        if self._transport is not None:
            self._transport.abort()
        self._close()

    def _close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        for task in self._resolving:
            task.cancel()
        if self._transport is not None:
            self._transport.close()

    # ------------------------------------------------------------------ API

    @property
    def address(self) -> str:
        """Our gossip address, "host:port" (after ``start``)."""
        if self._swim is None:
            raise RuntimeError("GossipAgent not started")
        return self._swim.address

    @property
    def swim(self) -> Swim:
        if self._swim is None:
            raise RuntimeError("GossipAgent not started")
        return self._swim

    def set_seeds(self, seeds: Mapping[str, str]) -> None:
        """The etcd roster (node_id -> gossip address); may be called on every change."""
        self._seeds = dict(seeds)
        if self._swim is not None and not self._closed:
            self._dispatch(self._swim.set_seeds(self._seeds, self._now()))
            self._wake.set()

    def set_local_load(self, in_flight: int, load: Load = NO_LOAD) -> None:
        """Our load, gossiped with our alive record (raises ValueError when invalid)."""
        if self._swim is not None:
            self._swim.set_local_load(in_flight, load)
        self._load = (in_flight, load)

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback`` on every MemberChanged; returns the unsubscribe function."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    def subscribe_load(self, callback: LoadSubscriber) -> Callable[[], None]:
        """Call ``callback`` whenever another member's load changes; returns unsubscribe."""
        self._load_subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._load_subscribers.remove(callback)

        return unsubscribe

    def members(self) -> Mapping[str, Member]:
        return {} if self._swim is None else self._swim.members()

    # ------------------------------------------------------------------ internals

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    async def _run(self) -> None:
        swim = self.swim
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            deadline = swim.next_deadline()
            if deadline is None:
                await self._wake.wait()
                continue
            now = loop.time()
            if deadline <= now:
                self._dispatch(swim.on_tick(now))
                await asyncio.sleep(0)  # let datagrams in between ticks
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._wake.wait()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("gossip %s tick task failed", self.node_id, exc_info=task.exception())

    def _on_datagram(self, data: bytes, from_address: str) -> None:
        if self._closed or self._swim is None:
            return
        try:
            msg = decode(data, self.config.cluster, self.config.max_packet_bytes)
        except GossipDecodeError as exc:
            self.rejected_packets += 1
            self._observe("rejected", len(data), "")
            logger.debug(
                "gossip %s dropped a datagram from %s: %s", self.node_id, from_address, exc
            )
            return
        self.received_packets += 1
        self._observe("received", len(data), type(msg.body).__name__.lower())
        try:
            self._dispatch(self._swim.on_message(msg, from_address, self._now()))
        except Exception:  # a bug, not a bad packet: log it and keep serving
            logger.exception("gossip %s failed on a message from %s", self.node_id, from_address)
        self._wake.set()

    def _observe(self, direction: str, size: int, kind: str) -> None:
        if self.packet_observer is not None:
            try:
                self.packet_observer(direction, size, kind)
            except Exception:
                logger.exception("gossip packet observer failed")

    def _dispatch(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                self._send(effect)
                continue
            if isinstance(effect, MemberChanged):
                self._notify(self._subscribers, effect)
            else:
                self._notify(self._load_subscribers, effect)

    @staticmethod
    def _notify(callbacks: list[Callable[[_E], None]], event: _E) -> None:
        for callback in list(callbacks):
            try:
                callback(event)
            except Exception:
                logger.exception("gossip subscriber failed on %s", event)

    def _send(self, effect: Send) -> None:
        transport = self._transport
        if transport is None or self._closed:
            return
        data = encode(effect.message)
        if len(data) > self.config.max_packet_bytes:  # the core sizes packets; never expected
            logger.warning("gossip %s: %d-byte datagram not sent", self.node_id, len(data))
            return
        try:
            host, port = split_address(effect.to_address)
        except ValueError:
            logger.debug("gossip %s: bad address %r", self.node_id, effect.to_address)
            return
        target = (host, port) if _is_ip(host) else self._resolved.get(effect.to_address)
        if target is None:
            task = asyncio.get_running_loop().create_task(self._resolve_and_send(host, port, data))
            self._resolving.add(task)
            task.add_done_callback(self._resolving.discard)
            return
        self.sent_packets += 1
        self._observe("sent", len(data), type(effect.message.body).__name__.lower())
        transport.sendto(data, target)

    async def _resolve_and_send(self, host: str, port: int, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            logger.debug("gossip %s: cannot resolve %s: %s", self.node_id, host, exc)
            return
        target = infos[0][4]
        self._resolved[join_address(host, port)] = (str(target[0]), int(target[1]))
        if self._transport is not None and not self._closed:
            self.sent_packets += 1
            self._transport.sendto(data, (str(target[0]), int(target[1])))
