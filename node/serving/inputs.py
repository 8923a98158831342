"""Request inputs decoded and validated against a model's manifest, on the hot path.

An ``InputDecoder`` is compiled once per loaded model from its manifest's input specs;
``decode`` then checks each wire tensor's name, dtype and shape with plain comparisons
and turns it into a zero-copy numpy view. Errors are ``InvalidArgument`` naming the
field (``inputs.amount: expected float32 of shape [], got int64 of shape [3]``).

``check_head`` bounds the identifiers of a request (objective, model override, request
id, the context's fields and attributes) before any work is done for it, and the decoder
bounds input names and dtypes before it looks them up: a client-supplied string is never
longer than these limits in the node, and reaches a message only clipped (``errors.clip``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardline.node.sdk import tensors
from shardline.node.sdk.errors import InvalidArgument, check_length, clip
from shardline.node.serving import oip_tensors
from shardline.workflows.manifest import WorkflowManifest

MAX_ELEMENTS = 50_000_000

# Longest tensor identifiers (characters), checked before a name is looked up: input names
# are bounded by the manifests that declare them, dtypes by the wire's vocabulary.
MAX_INPUT_NAME_CHARS = 128
MAX_DTYPE_CHARS = 16  # the longest wire dtype is "float32": 7


@dataclass(frozen=True)
class HeadLimits:
    """Longest identifiers a request's head may carry (characters) and the most context
    attributes, checked before any work (``check_head``). A node's are in
    ``NodeConfig.head_limits``; ``shardline serve`` sets the context ones
    (``--max-context-chars``, ``--max-attributes``, ``--max-attribute-chars``)."""

    objective_chars: int = 128
    model_key_chars: int = 256  # model_override: "name@version"
    request_id_chars: int = 128
    context_chars: int = 256  # user_id, country, device, surface
    attributes: int = 64
    attribute_key_chars: int = 128
    attribute_value_chars: int = 1024

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"head limit {name} must be a positive integer, got {value!r}")


DEFAULT_HEAD_LIMITS = HeadLimits()


def check_head(head: Any, limits: HeadLimits = DEFAULT_HEAD_LIMITS) -> None:
    """INVALID_ARGUMENT for a ``PredictRequest(Head)`` whose identifiers exceed ``limits``."""
    c = head.context
    context_chars = limits.context_chars
    if (  # the common case in one expression (on every request, at its ingress)
        len(head.objective) <= limits.objective_chars
        and len(head.model_override) <= limits.model_key_chars
        and len(head.request_id) <= limits.request_id_chars
        and len(c.user_id) <= context_chars
        and len(c.country) <= context_chars
        and len(c.device) <= context_chars
        and len(c.surface) <= context_chars
        and not c.attributes
    ):
        return
    check_length("objective", head.objective, limits.objective_chars)
    check_length("model_override", head.model_override, limits.model_key_chars)
    check_length("request_id", head.request_id, limits.request_id_chars)
    check_length("context.user_id", c.user_id, context_chars)
    check_length("context.country", c.country, context_chars)
    check_length("context.device", c.device, context_chars)
    check_length("context.surface", c.surface, context_chars)
    attributes = c.attributes
    if len(attributes) > limits.attributes:
        raise InvalidArgument(
            "context.attributes", f"at most {limits.attributes} entries, got {len(attributes)}"
        )
    for key, value in attributes.items():
        check_length("context.attributes key", key, limits.attribute_key_chars)
        check_length(f"context.attributes[{clip(key)}]", value, limits.attribute_value_chars)


def check_tensor_ids(t: Any) -> None:
    """INVALID_ARGUMENT for a wire tensor whose name or dtype exceeds the limits."""
    check_length("inputs[].name", t.name, MAX_INPUT_NAME_CHARS)
    check_length(f"inputs.{t.name}.dtype", t.dtype, MAX_DTYPE_CHARS)


def _fmt(shape: Iterable[int]) -> str:
    return "[" + ", ".join("N" if d < 0 else str(d) for d in shape) + "]"


@dataclass(frozen=True, slots=True)
class _Spec:
    name: str
    field: str
    dtype: str
    np_dtype: np.dtype[Any] | None
    shape: tuple[int, ...]  # -1: any length
    optional: bool
    exact: bool  # no -1 dimension: the wire shape must equal ``shape``
    nbytes: int  # with ``exact`` and a numeric dtype: the data size to expect

    def shape_ok(self, shape: tuple[int, ...]) -> bool:
        if self.exact:
            return shape == self.shape
        if len(shape) != len(self.shape):
            return False
        return all(want < 0 or want == got for want, got in zip(self.shape, shape, strict=True))


def _compile(spec: Any) -> _Spec:
    shape = tuple(spec.shape)
    np_dtype = tensors.WIRE_DTYPES.get(spec.dtype)
    exact = all(d >= 0 for d in shape)
    nbytes = math.prod(shape) * np_dtype.itemsize if exact and np_dtype is not None else -1
    return _Spec(
        spec.name, f"inputs.{spec.name}", spec.dtype, np_dtype, shape, spec.optional, exact, nbytes
    )


class InputDecoder:
    """Validates and decodes the inputs of one model key."""

    def __init__(self, manifest: WorkflowManifest) -> None:
        self.model_key = manifest.model_key
        self._specs = {s.name: _compile(s) for s in manifest.inputs}
        self._required = tuple(s.name for s in manifest.inputs if not s.optional)

    def decode(self, wire_inputs: Iterable[Any]) -> dict[str, np.ndarray]:
        specs = self._specs
        out: dict[str, np.ndarray] = {}
        for t in wire_inputs:
            name = t.name
            spec = specs.get(name)
            if spec is None:
                check_tensor_ids(t)
                expected = ", ".join(specs) or "none"
                raise InvalidArgument(
                    f"inputs.{clip(name, quote=False)}",
                    f"unknown input for {self.model_key}; expected {expected}",
                )
            if name in out:
                raise InvalidArgument(spec.field, "given more than once")
            shape = tuple(t.shape)
            if t.dtype != spec.dtype or not spec.shape_ok(shape):
                check_tensor_ids(t)
                got = clip(t.dtype) if t.dtype else "?"
                raise InvalidArgument(
                    spec.field,
                    f"expected {spec.dtype} of shape {_fmt(spec.shape[:16])}, "
                    f"got {got} of shape {_fmt(shape[:16])}{'…' if len(shape) > 16 else ''}",
                )
            np_dtype = spec.np_dtype
            data = t.data
            if (
                spec.exact  # the common case: fixed shape, numeric, packed bytes
                and np_dtype is not None
                and len(data) == spec.nbytes
                and not t.HasField("contents")
            ):
                out[name] = np.frombuffer(data, dtype=np_dtype).reshape(shape)
                continue
            if math.prod(shape) > MAX_ELEMENTS:
                raise InvalidArgument(
                    spec.field, f"shape {_fmt(shape)} has more than {MAX_ELEMENTS} elements"
                )
            # Typed contents, strings, wildcard shapes, and every malformed tensor.
            contents = t.contents if t.HasField("contents") else None
            out[name] = tensors.decode(spec.field, t.dtype, shape, data, t.strings, contents)
        self._check_required(out)
        return out

    def decode_oip(self, request: Any) -> tuple[dict[str, np.ndarray], bool]:
        """The inputs of an Open Inference Protocol ``ModelInferRequest``
        (``oip_tensors.decode_input``), and whether they came as a batch of one."""
        oip_tensors.check_request(request)
        specs = self._specs
        raw = request.raw_input_contents
        out: dict[str, np.ndarray] = {}
        batched = False
        for i, t in enumerate(request.inputs):
            name = t.name
            spec = specs.get(name)
            if spec is None:
                check_length("inputs[].name", name, MAX_INPUT_NAME_CHARS)
                expected = ", ".join(specs) or "none"
                raise InvalidArgument(
                    f"inputs.{clip(name, quote=False)}",
                    f"unknown input for {self.model_key}; expected {expected}",
                )
            if name in out:
                raise InvalidArgument(spec.field, "given more than once")
            if len(t.datatype) > MAX_DTYPE_CHARS:
                check_length(f"{spec.field}.datatype", t.datatype, MAX_DTYPE_CHARS)
            array, one = oip_tensors.decode_input(spec, t, raw[i] if raw else None, MAX_ELEMENTS)
            out[name] = array
            batched |= one
        self._check_required(out)
        return out, batched

    def _check_required(self, out: Mapping[str, np.ndarray]) -> None:
        if len(out) < len(self._required):
            for name in self._required:
                if name not in out:
                    raise InvalidArgument(f"inputs.{name}", "required input is missing")
