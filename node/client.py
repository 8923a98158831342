"""Python client SDK for shardline (usable from other projects).

    async with Client("127.0.0.1:7400") as client:
        p = await client.predict("payment_fraud", {"amount": 12.5, ...}, user_id="u1")
        p.outputs["probability"], p.model_key, p.cell, p.timing

Inputs are numpy arrays or plain Python values (ints become int64, floats float32,
strings string tensors). Errors raise ``PredictError`` carrying the gRPC status and the
server's message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np
from grpclib.client import Channel, UnaryUnaryMethod
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from node import tensors
from node._proto.shardline import v1
from node._proto.shardline.v1 import inference_pb2 as pb
from node.service import RawBytes, WireCodec


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


def parse_target(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"target must be HOST:PORT, got {target!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


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


class Client:
    """One pooled HTTP/2 connection to a node."""

    def __init__(self, target: str = "127.0.0.1:7400", *, timeout_s: float = 10.0) -> None:
        host, port = parse_target(target)
        self.target = target
        self.timeout_s = timeout_s
        self.channel = Channel(host, port, codec=WireCodec())
        self._predict = UnaryUnaryMethod[Any, Any](
            self.channel, "/shardline.v1.Inference/Predict", RawBytes, RawBytes
        )
        self._inference = v1.InferenceStub(self.channel)

    async def predict_raw(self, raw: bytes, *, timeout_s: float | None = None) -> bytes:
        timeout = timeout_s or self.timeout_s
        try:
            reply = await self._predict(raw, timeout=timeout)
        except GRPCError as exc:
            raise PredictError(exc.status, exc.message or "") from None
        except TimeoutError:
            raise PredictError(
                Status.DEADLINE_EXCEEDED, f"no answer from {self.target} within {timeout:g}s"
            ) from None
        assert isinstance(reply, bytes)
        return reply

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

    async def list_objectives(self) -> list[v1.ObjectiveInfo]:
        try:
            reply = await self._inference.list_objectives(
                v1.ListObjectivesRequest(), timeout=self.timeout_s
            )
        except GRPCError as exc:
            raise PredictError(exc.status, exc.message or "") from None
        return list(reply.objectives)

    def close(self) -> None:
        self.channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
