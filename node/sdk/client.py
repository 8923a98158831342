"""Python client SDK for shardline (usable from other projects).

    async with Client("127.0.0.1:7401") as client:
        p = await client.predict("payment_fraud", {"amount": 12.5, ...}, user_id="u1")
        p.outputs["probability"], p.model_key, p.cell, p.timing

Inputs are numpy arrays or plain Python values (ints become int64, floats float32,
strings string tensors). Errors raise ``PredictError`` carrying the gRPC status and the
server's message.

**Several nodes.** Every node answers every request (it forwards to the model's owners),
so a client spreads its requests over several nodes and survives one leaving or dying.
Give ``Client`` several addresses (``Client("10.0.0.1:7400,10.0.0.2:7400")`` or a list)
and it does the standard thing by itself: round robin over the nodes, skipping those
whose ``grpc.health.v1`` Watch for ``shardline.v1.Inference`` says NOT_SERVING (starting,
or draining) or whose connection failed, and a request that fails with UNAVAILABLE is
retried on another node within its deadline (inference is idempotent).

Any other gRPC client does the same with the standard service config shipped in
``node/grpc_service_config.json`` (round_robin, client-side health checking, a retry
policy for UNAVAILABLE on Inference and Cluster) and a multi-address target; for grpcio::

    from shardline import grpc_channel_options, grpc_target
    channel = grpc.insecure_channel(
        grpc_target(["10.0.0.1:7400", "10.0.0.2:7400", "10.0.0.3:7400"]),  # ipv4:…,…
        options=grpc_channel_options(),
    )
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np
from grpclib.client import Channel, UnaryUnaryMethod
from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from shardline.node._proto.shardline import v1
from shardline.node._proto.shardline.v1 import inference_pb2 as pb
from shardline.node.sdk import tensors
from shardline.node.sdk.coalesce import CoalescingChannel
from shardline.node.sdk.codec import RawBytes, WireCodec
from shardline.node.sdk.targets import (
    DEFAULT_TARGET,
    HEALTH_SERVICE,
    parse_target,
    parse_targets,
    transport_failure,
)
from shardline.node.sdk.tls import TlsFiles, client_context
from shardline.router.objectives import ObjectiveConfig
from shardline.router.replica import choose_replica
from shardline.router.rules import OverrideNotAllowed, RequestContext, evaluate


class PredictError(Exception):
    def __init__(self, status: Status, message: str) -> None:
        super().__init__(f"{status.name}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Prediction:
    outputs: dict[str, np.ndarray]
    model_key: str
    cell: str
    node_id: str
    hops: int
    request_id: str
    timing: dict[str, float] = field(default_factory=dict)


MAX_ATTEMPTS = 3  # one request, on at most this many nodes
DOWN_FOR_S = 1.0  # a node whose connection failed is skipped this long (or until SERVING)


def build_request(
    objective: str,
    inputs: Mapping[str, Any],
    *,
    user_id: str = "",
    country: str = "",
    device: str = "",
    surface: str = "",
    attributes: Mapping[str, str] | None = None,
    model_override: str = "",
    synthetic: bool = False,
    request_id: str = "",
) -> bytes:
    """Encode a ``PredictRequest`` (exposed for benchmarks and raw callers)."""
    request = pb.PredictRequest(
        objective=objective,
        model_override=model_override,
        synthetic=synthetic,
        request_id=request_id,
    )
    ctx = request.context
    ctx.user_id, ctx.country, ctx.device, ctx.surface = user_id, country, device, surface
    ctx.attributes.update(attributes or {})
    for name, value in inputs.items():
        tensors.encode_into(request.inputs.add(), name, tensors.as_array(value))
    return request.SerializeToString()  # type: ignore[no-any-return]


def parse_response(raw: bytes) -> Prediction:
    response = pb.PredictResponse()
    response.ParseFromString(raw)
    outputs = {
        t.name: tensors.decode(f"outputs.{t.name}", t.dtype, t.shape, t.data, t.strings)
        for t in response.outputs
    }
    p = response.provenance
    t = p.timing
    timing = {
        "queue_ms": t.queue_ms,
        "preprocess_ms": t.preprocess_ms,
        "compute_ms": t.compute_ms,
        "postprocess_ms": t.postprocess_ms,
        "total_ms": t.total_ms,
        "batch_size": float(t.batch_size),
    }
    return Prediction(outputs, p.model_key, p.cell, p.node_id, p.hops, p.request_id, timing)


class _Node:
    """One node of a ``Client``: its channel and what the client knows of its health."""

    def __init__(self, address: str, channel: Channel) -> None:
        self.address = address
        self.channel = channel
        self.predict = UnaryUnaryMethod[Any, Any](
            channel, "/shardline.v1.Inference/Predict", RawBytes, RawBytes
        )
        self.serving: bool | None = None  # None: unknown (not watched yet, or no health)
        self.down_until = 0.0

    def usable(self, now: float) -> bool:
        return self.serving is not False and now >= self.down_until


class Client:
    """HTTP/2 connections to one node, or to several spread by round robin.

    With several addresses, each node's health is watched (``grpc.health.v1`` Watch of
    ``shardline.v1.Inference``) while the client is used: a node that says NOT_SERVING
    (starting, draining) or whose connection failed is skipped, and a request that fails
    with UNAVAILABLE is retried on another node (at most ``MAX_ATTEMPTS`` nodes, within
    the request's deadline). With one address it is one pooled connection, no retries.
    """

    def __init__(
        self,
        target: str | Sequence[str] = DEFAULT_TARGET,
        *,
        timeout_s: float = 10.0,
        tls: TlsFiles | None = None,
    ) -> None:
        addresses = parse_targets(target)
        self.target = ",".join(addresses)
        self.timeout_s = timeout_s
        ssl_context = client_context(tls) if tls is not None else None
        self._nodes = []
        for address in addresses:
            host, port = parse_target(address)
            channel = CoalescingChannel(host, port, codec=WireCodec(), ssl=ssl_context)
            self._nodes.append(_Node(address, channel))
        self.channel = self._nodes[0].channel
        self._inference = v1.InferenceStub(self.channel)
        self._next = 0
        self._watchers: list[asyncio.Task[None]] = []

    # -- several nodes ---------------------------------------------------------------------

    def _watch_health(self) -> None:
        if len(self._nodes) > 1 and not self._watchers:
            self._watchers = [
                asyncio.create_task(self._watch(node), name=f"health:{node.address}")
                for node in self._nodes
            ]

    async def _watch(self, node: _Node) -> None:
        backoff = 0.1
        while True:
            try:
                async with HealthStub(node.channel).Watch.open() as stream:
                    await stream.send_message(HealthCheckRequest(service=HEALTH_SERVICE), end=True)
                    async for reply in stream:
                        node.serving = reply.status == HealthCheckResponse.SERVING
                        if node.serving:
                            node.down_until = 0.0
                            backoff = 0.1
            except GRPCError as exc:
                if exc.status in (Status.UNIMPLEMENTED, Status.NOT_FOUND):
                    node.serving = None  # a node without that health service: unknown
                    return
                node.serving = False
            except (OSError, StreamTerminatedError, ProtocolError, TimeoutError):
                node.serving = False  # refused, reset, or the node said GOAWAY
            await asyncio.sleep(backoff)  # reconnect backoff
            backoff = min(backoff * 2, 2.0)

    def _pick(self, tried: set[str]) -> _Node | None:
        now = time.monotonic()
        left = [n for n in self._nodes if n.address not in tried]
        candidates = [n for n in left if n.usable(now)] or left
        if not candidates:
            return None
        self._next += 1
        return candidates[self._next % len(candidates)]

    async def _call(self, node: _Node, raw: bytes, timeout_s: float) -> bytes:
        try:
            reply = await node.predict(raw, timeout=timeout_s)
        except GRPCError as exc:
            raise PredictError(exc.status, exc.message or "") from None
        except TimeoutError:
            raise PredictError(
                Status.DEADLINE_EXCEEDED, f"no answer from {node.address} within {timeout_s:g}s"
            ) from None
        except (OSError, StreamTerminatedError, ProtocolError) as exc:
            raise PredictError(Status.UNAVAILABLE, transport_failure(node.address, exc)) from None
        assert isinstance(reply, bytes)
        return reply

    async def predict_raw(self, raw: bytes, *, timeout_s: float | None = None) -> bytes:
        timeout = timeout_s or self.timeout_s
        if len(self._nodes) == 1:
            return await self._call(self._nodes[0], raw, timeout)
        self._watch_health()
        deadline = time.monotonic() + timeout
        tried: set[str] = set()
        last: PredictError | None = None
        while len(tried) < MAX_ATTEMPTS:
            node = self._pick(tried)
            remaining = deadline - time.monotonic()
            if node is None or remaining <= 0:
                break
            tried.add(node.address)
            try:
                return await self._call(node, raw, remaining)
            except PredictError as exc:
                if exc.status != Status.UNAVAILABLE:
                    raise
                last = exc
                node.down_until = time.monotonic() + DOWN_FOR_S
        if last is not None:
            raise last
        raise PredictError(
            Status.DEADLINE_EXCEEDED, f"no answer from {self.target} within {timeout:g}s"
        )

    async def predict(
        self,
        objective: str,
        inputs: Mapping[str, Any],
        *,
        timeout_s: float | None = None,
        **request: Any,
    ) -> Prediction:
        """Ask for a prediction; ``request`` takes the ``build_request`` keywords."""
        raw = build_request(objective, inputs, **request)
        return parse_response(await self.predict_raw(raw, timeout_s=timeout_s))

    async def _first_answer(self, call: Any) -> Any:
        """A read-only call on the first node that answers it."""
        last: PredictError | None = None
        for node in self._nodes:
            try:
                return await call(node.channel)
            except GRPCError as exc:
                last = PredictError(exc.status, exc.message or "")
                if exc.status != Status.UNAVAILABLE:
                    raise last from None
            except (OSError, StreamTerminatedError, ProtocolError, TimeoutError) as exc:
                last = PredictError(Status.UNAVAILABLE, transport_failure(node.address, exc))
        assert last is not None
        raise last

    async def routing_table(self) -> v1.RoutingTable:
        return await self._first_answer(
            lambda ch: v1.ClusterStub(ch).get_routing_table(
                v1.GetRoutingTableRequest(), timeout=self.timeout_s
            )
        )

    async def list_objectives(self) -> list[v1.ObjectiveInfo]:
        reply = await self._first_answer(
            lambda ch: v1.InferenceStub(ch).list_objectives(
                v1.ListObjectivesRequest(), timeout=self.timeout_s
            )
        )
        return list(reply.objectives)

    def close(self) -> None:
        for task in self._watchers:
            task.cancel()
        self._watchers = []
        for node in self._nodes:
            node.channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SmartClient:
    """Routes each request straight to an owner of its model, from a routing table.

    It fetches the table (members, placements, objective configs) from any node, decides
    the model version locally with the same pure rules the nodes use, and sends the
    request to a warm owner, where it is served without a hop: the owner this client is
    sticky to (rendezvous on a random id per client, so different clients spread over the
    owners and one client keeps one owner warm), unless that owner holds more of this
    client's requests in flight than the others by the replicas' bound
    (``router.replica.choose_replica``, the rule a node uses between replicas). When the
    table is older than ``refresh_s`` it is refreshed; when the owner fails
    (UNAVAILABLE or no connection) the table is refreshed and the request goes to any
    other node, which routes it.
    """

    def __init__(
        self,
        seeds: Sequence[str],
        *,
        timeout_s: float = 10.0,
        refresh_s: float = 5.0,
        tls: TlsFiles | None = None,
    ) -> None:
        self.tls = tls
        if not seeds:
            raise ValueError("SmartClient needs at least one seed node")
        self.seeds = list(seeds)
        self.timeout_s = timeout_s
        self.refresh_s = refresh_s
        self._clients: dict[str, Client] = {}
        self._table: v1.RoutingTable | None = None
        self._fetched_at = -1e9
        self._configs: dict[str, ObjectiveConfig] = {}
        self._owners: dict[str, list[str]] = {}  # model key -> addresses of warm owners
        self._nodes: list[str] = []
        self._refreshing: asyncio.Task[None] | None = None
        """The one table refresh in flight (requests meanwhile use the table they have)."""
        self._affinity = os.urandom(8).hex()  # this client's sticky key among owners
        self._in_flight: dict[str, int] = {}  # node address -> this client's requests there
        self._rng = random.Random()

    def _client(self, target: str) -> Client:
        client = self._clients.get(target)
        if client is None:
            client = self._clients[target] = Client(target, timeout_s=self.timeout_s, tls=self.tls)
        return client

    async def refresh(self) -> None:
        """Fetch the routing table from the first node that answers."""
        last: Exception | None = None
        for target in [*self._nodes, *self.seeds]:
            try:
                table = await self._client(target).routing_table()
            except (PredictError, OSError, TimeoutError) as exc:
                last = exc
                continue
            self._install(table)
            return
        raise PredictError(Status.UNAVAILABLE, f"no node answered for the routing table: {last}")

    async def _refresh_once(self) -> None:
        """One refresh for every request that finds the table old: the first request
        without a table waits for it; with a table, requests go on with it while the
        refresh runs in the background (64 requests in flight used to fetch 64 tables)."""
        task = self._refreshing
        if task is None or task.done():
            task = self._refreshing = asyncio.create_task(self._refresh_quietly())
        if self._table is None:
            await asyncio.shield(task)

    async def _refresh_quietly(self) -> None:
        with contextlib.suppress(PredictError):  # keep the stale table; nodes route anyway
            await self.refresh()

    def _install(self, table: v1.RoutingTable) -> None:
        address = {m.node_id: m.grpc_address for m in table.members}
        warm = {m.node_id: set(m.models) for m in table.members}
        self._owners = {
            p.model_key: [address[o] for o in p.owners if o in address and p.model_key in warm[o]]
            for p in table.placements
        }
        self._configs = {
            name: ObjectiveConfig.from_dict(json.loads(doc))
            for name, doc in table.objectives_json.items()
        }
        self._nodes = [m.grpc_address for m in table.members]
        self._table = table
        self._fetched_at = time.monotonic()

    def owner_for(self, objective: str, context: RequestContext, override: str = "") -> str | None:
        """The node this client would send the request to (None: let any node route it)."""
        config = self._configs.get(objective)
        if config is None:
            return None
        try:
            decision = evaluate(config, context, override or None)
        except OverrideNotAllowed:
            return None
        owners = self._owners.get(decision.model_key)
        if not owners:
            return None
        return choose_replica(owners, self._affinity, self._in_flight, self._rng)

    async def predict(
        self,
        objective: str,
        inputs: Mapping[str, Any],
        *,
        timeout_s: float | None = None,
        **request: Any,
    ) -> Prediction:
        if time.monotonic() - self._fetched_at > self.refresh_s:
            await self._refresh_once()
        raw = build_request(objective, inputs, **request)
        context = RequestContext(
            user_id=request.get("user_id", ""),
            country=request.get("country", ""),
            device=request.get("device", ""),
            surface=request.get("surface", ""),
            attributes=dict(request.get("attributes") or {}),
        )
        target = self.owner_for(objective, context, request.get("model_override", ""))
        fallbacks = [n for n in [*self._nodes, *self.seeds] if n != target]
        attempts = [target] if target else []
        attempts += fallbacks[:1] if target else fallbacks[:2]
        last: PredictError | None = None
        in_flight = self._in_flight
        for i, node in enumerate(attempts):
            in_flight[node] = in_flight.get(node, 0) + 1
            try:
                answer = await self._client(node).predict_raw(raw, timeout_s=timeout_s)
                return parse_response(answer)
            except PredictError as exc:
                last = exc
                if exc.status not in (Status.UNAVAILABLE,) or i == len(attempts) - 1:
                    raise
                self._fetched_at = -1e9  # stale: refresh on the next call
            finally:
                in_flight[node] -= 1
        assert last is not None
        raise last

    def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    async def __aenter__(self) -> SmartClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
