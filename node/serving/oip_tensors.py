"""Open Inference Protocol (V2) tensors <-> numpy, where a request runs.

A V2 request reaches the node that runs it as it came (``PredictRequest.oip_request``, see
``shardline.node.serving.oip``): its tensors are decoded once, here, against the model's
input specs — exactly where a ``Predict`` request's are — and the answer is encoded
straight into a ``ModelInferResponse``. Nothing re-encodes the inputs on the way.

Datatypes: ``BOOL``, ``INT32``, ``INT64``, ``FP32``, ``FP64``, ``BYTES`` are the workflow
dtypes; ``INT8``, ``INT16``, ``UINT8``…``UINT64`` and ``FP16`` are converted to the input's
declared dtype when numpy does it without loss. A leading dimension of 1 is taken off an
input whose declared rank is one less: a scalar sent as ``[1]`` (how metadata describes
it), or a batch of one of a tensor, which puts the batch of one back on every output.
Scalar outputs always go back as ``[1]``.
Every malformed tensor is ``InvalidArgument`` naming it (``inputs.amount: …``).
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import numpy as np

from shardline.node._proto_oip import grpc_service_pb2 as v2
from shardline.node.sdk import tensors
from shardline.node.sdk.errors import InvalidArgument, clip

#: V2 datatype -> the workflow dtype it is (no conversion).
V2_DTYPES: Mapping[str, str] = {
    "BOOL": "bool",
    "INT32": "int32",
    "INT64": "int64",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "string",
}
#: Workflow dtype -> V2 datatype.
WIRE_TO_V2: Mapping[str, str] = {wire: name for name, wire in V2_DTYPES.items()}
#: V2 numeric datatypes a workflow has no dtype for: converted to the input's declared
#: dtype when that is lossless (``numpy.can_cast(..., "safe")``).
V2_CONVERTED: Mapping[str, np.dtype[Any]] = {
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
}
#: Typed contents of the converted datatypes (FP16 travels raw only).
_CONVERTED_CONTENTS: Mapping[str, str] = {
    "INT8": "int_contents",
    "INT16": "int_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
}
_LENGTH = struct.Struct("<I")
_DOUBLE = struct.Struct("<d")


class InputSpec(Protocol):
    """What decoding needs of a declared input (``inputs._Spec`` is one)."""

    @property
    def field(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def np_dtype(self) -> np.dtype[Any] | None: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def exact(self) -> bool: ...
    @property
    def nbytes(self) -> int: ...

    def shape_ok(self, shape: tuple[int, ...]) -> bool: ...


def field_of(name: str) -> str:
    return f"inputs.{clip(name, quote=False)}"


def check_request(req: Any) -> None:
    """The checks of a whole request, before any tensor: raw tensors for every input or none,
    and no output named twice. (How many inputs and outputs a request may name is the
    model's: an unknown or repeated input is refused at the first one, an unknown output
    too; the request's size is bounded by the node's message limit.)"""
    inputs, raw = req.inputs, req.raw_input_contents
    if raw and len(raw) != len(inputs):
        raise InvalidArgument(
            "raw_input_contents",
            f"{len(raw)} raw tensors for {len(inputs)} inputs: send every input raw, or none",
        )
    outputs = req.outputs
    if len(outputs) > 1 and len({o.name for o in outputs}) != len(outputs):
        raise InvalidArgument("outputs", "an output is named more than once")


def decode_input(
    spec: InputSpec, tensor: Any, raw: bytes | None, max_elements: int
) -> tuple[np.ndarray, bool]:
    """One V2 input as the array the workflow declared; True when it came as a batch of one
    (a leading dimension of 1 taken off an input of rank >= 1; a scalar sent as ``[1]`` is
    just how V2 clients send a scalar, not a batch)."""
    shape = tuple(tensor.shape)
    batched = False
    if len(shape) == len(spec.shape) + 1 and shape[0] == 1:
        shape = shape[1:]
        batched = bool(spec.shape)
    datatype = tensor.datatype
    wire = V2_DTYPES.get(datatype)
    np_dtype = spec.np_dtype
    if (  # the common case: raw elements of the declared dtype and fixed shape
        raw is not None
        and wire == spec.dtype
        and spec.exact
        and np_dtype is not None
        and shape == spec.shape
        and len(raw) == spec.nbytes
    ):
        return np.frombuffer(raw, dtype=np_dtype).reshape(shape), batched
    if (  # the other common case: one raw BYTES element (a scalar string)
        raw is not None
        and wire == "string"
        and spec.dtype == "string"
        and shape == spec.shape == ()
        and len(raw) >= 4
        and _LENGTH.unpack_from(raw)[0] == len(raw) - 4
    ):
        try:
            return np.array(raw[4:].decode(), dtype=np.str_), batched
        except UnicodeDecodeError:
            raise InvalidArgument(spec.field, "a BYTES element is not UTF-8 text") from None
    field = spec.field
    if any(d < 0 for d in shape):
        raise InvalidArgument(field, f"shape {list(shape)[:16]} has a negative dimension")
    count = math.prod(shape)
    if count > max_elements:
        raise InvalidArgument(
            field, f"shape {list(shape)[:16]} holds more than {max_elements} elements"
        )
    if wire is None or (wire not in ("string", spec.dtype) and spec.dtype != "string"):
        data = _converted(field, datatype, spec, tensor, raw, count)
        array = tensors.decode(field, spec.dtype, shape, data, ())
    elif wire == "string":
        if raw is not None:
            items: Iterable[bytes] = split_bytes(field, raw, count)
        else:
            items = tensor.contents.bytes_contents
        try:
            strings = [item.decode() for item in items]
        except UnicodeDecodeError:
            raise InvalidArgument(field, "a BYTES element is not UTF-8 text") from None
        array = tensors.decode(field, wire, shape, b"", strings)
    else:
        contents = tensor.contents if raw is None and tensor.HasField("contents") else None
        array = tensors.decode(field, wire, shape, raw or b"", (), contents)
    return _checked(spec, array, datatype), batched


def _checked(spec: InputSpec, array: np.ndarray, datatype: str) -> np.ndarray:
    wire = tensors.wire_dtype(array)
    if wire != spec.dtype or not spec.shape_ok(array.shape):
        got = WIRE_TO_V2.get(wire, datatype)
        raise InvalidArgument(
            spec.field,
            f"expected {WIRE_TO_V2.get(spec.dtype, spec.dtype)} of shape "
            f"{_fmt(spec.shape)} (or [1, …] for a batch of one), got {clip(got)} of shape "
            f"{_fmt(array.shape[:16])}",
        )
    return array


def _fmt(shape: Iterable[int]) -> str:
    return "[" + ", ".join("N" if d < 0 else str(d) for d in shape) + "]"


def _converted(
    field: str, datatype: str, spec: InputSpec, tensor: Any, raw: bytes | None, count: int
) -> bytes:
    """The little-endian bytes of a tensor converted to the declared dtype (when lossless)."""
    wire = V2_DTYPES.get(datatype)
    source = tensors.WIRE_DTYPES.get(wire) if wire is not None else V2_CONVERTED.get(datatype)
    if source is None:
        known = ", ".join([*V2_DTYPES, *V2_CONVERTED])
        raise InvalidArgument(field, f"datatype {clip(datatype)} is not one of {known}")
    target = spec.np_dtype
    if target is None or not np.can_cast(source, target, "safe"):
        raise InvalidArgument(
            field,
            f"expected {WIRE_TO_V2.get(spec.dtype, spec.dtype)}, got {datatype} "
            "(not convertible without loss)",
        )
    if raw is not None:
        if len(raw) != count * source.itemsize:
            raise InvalidArgument(
                field,
                f"{len(raw)} raw bytes for {count} {datatype} elements "
                f"({count * source.itemsize} expected)",
            )
        values = np.frombuffer(raw, source)
    else:
        name = (
            tensors.CONTENTS_FIELDS[wire] if wire is not None else _CONVERTED_CONTENTS.get(datatype)
        )
        if name is None:
            raise InvalidArgument(field, f"datatype {datatype} travels in raw_input_contents only")
        values = np.asarray(getattr(tensor.contents, name))
        if values.size != count:
            raise InvalidArgument(
                field, f"{values.size} values in contents.{name} for {count} elements"
            )
        if values.size and source.kind in "iu":
            info = np.iinfo(source)
            if values.min() < info.min or values.max() > info.max:
                raise InvalidArgument(field, f"a value in contents does not fit {datatype}")
    return values.astype(target).tobytes()


def split_bytes(field: str, raw: bytes, count: int) -> list[bytes]:
    """The elements of a raw BYTES tensor (each a 4-byte little-endian length, then bytes)."""
    items: list[bytes] = []
    at, end = 0, len(raw)
    while at < end:
        if len(items) >= count:
            raise InvalidArgument(field, f"raw BYTES hold more than its shape's {count} elements")
        if at + 4 > end:
            raise InvalidArgument(field, "raw BYTES cut short in an element's length")
        (size,) = _LENGTH.unpack_from(raw, at)
        at += 4
        if at + size > end:
            raise InvalidArgument(field, "raw BYTES cut short in an element")
        items.append(raw[at : at + size])
        at += size
    if len(items) != count:
        raise InvalidArgument(field, f"raw BYTES hold {len(items)} elements, its shape {count}")
    return items


# -- the answer ----------------------------------------------------------------------------


def encode_response(
    req: Any,
    batched: bool,
    outputs: Mapping[str, Any],
    provenance: Mapping[str, str | int | float],
) -> bytes:
    """The encoded ``ModelInferResponse`` of a V2 request's outputs (requested ones only,
    raw when the request was), with shardline's provenance in its parameters
    (``shardline.<key>``: strings, non-negative integers and floats)."""
    model_key = str(provenance["model_key"])
    res = v2.ModelInferResponse(
        model_name=req.model_name,
        model_version=model_key.rpartition("@")[2],
        id=req.id or str(provenance["request_id"]),
    )
    raw = bool(req.raw_input_contents)
    requested = req.outputs
    names = [o.name for o in requested] if requested else list(outputs)
    for name in names:
        array = outputs.get(name)
        if array is None:
            raise InvalidArgument(
                f"outputs.{clip(name, quote=False)}",
                f"{model_key} has no such output; it has {', '.join(outputs)}",
            )
        _encode_output(res, name, array, batched, raw)
    # The parameters map, appended as its encoded entries (a protobuf message's fields may
    # come in any order): built from cached parts, a third of the cost of the map's API.
    return res.SerializeToString() + _parameters(provenance)  # type: ignore[no-any-return]


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


@functools.lru_cache(maxsize=1024)
def _prefix(key: str, tag: int, size: int) -> bytes:
    """The bytes of one ``parameters`` entry (field 4 of ModelInferResponse) before its
    value's body: ``shardline.<key>`` and an InferParameter whose ``tag`` field carries
    ``size`` bytes (string_param = 3, int64_param = 2 as a varint, double_param = 4)."""
    k = f"shardline.{key}".encode()
    head = bytes([tag]) + (_varint(size) if tag == 0x1A else b"")
    payload_size = 1 + len(_varint(len(k))) + len(k) + 1 + len(_varint(len(head) + size))
    payload_size += len(head) + size
    return (
        b"\x22" + _varint(payload_size) + b"\x0a" + _varint(len(k)) + k
        + b"\x12" + _varint(len(head) + size) + head
    )  # fmt: skip


def _parameters(provenance: Mapping[str, str | int | float]) -> bytes:
    parts = []
    for key, value in provenance.items():
        if isinstance(value, str):
            body = value.encode()
            parts.append(_prefix(key, 0x1A, len(body)))
        elif isinstance(value, int):
            body = _varint(max(0, value))
            parts.append(_prefix(key, 0x10, len(body)))
        else:
            body = _DOUBLE.pack(value)
            parts.append(_prefix(key, 0x21, 8))
        parts.append(body)
    return b"".join(parts)


#: numpy dtype (either byte order spelling) -> (workflow dtype, V2 datatype).
_OUTPUT_TYPES: Mapping[np.dtype[Any], tuple[str, str]] = {
    **{dt: (wire, WIRE_TO_V2[wire]) for wire, dt in tensors.WIRE_DTYPES.items()},
    **{dt.newbyteorder("="): (wire, WIRE_TO_V2[wire]) for wire, dt in tensors.WIRE_DTYPES.items()},
}


_STRING = (tensors.STRING, "BYTES")


def _encode_output(res: Any, name: str, value: Any, batched: bool, raw: bool) -> None:
    array = np.asarray(value)
    kind = _STRING if array.dtype.kind == "U" else _OUTPUT_TYPES.get(array.dtype)
    if kind is None:  # floats of other widths (sent as float32), anything else refused
        if array.dtype.kind == "f":
            array = array.astype("<f4")
        kind = (tensors.wire_dtype(array), "")
        kind = (kind[0], WIRE_TO_V2[kind[0]])
    wire, datatype = kind
    # Scalars go back as [1] (what the metadata says); anything else gets the batch back.
    dims = array.shape
    shape = [1, *dims] if batched else (list(dims) if dims else [1])
    out = res.outputs.add(name=name, datatype=datatype, shape=shape)
    if wire == tensors.STRING:
        items = [str(s).encode() for s in (array.reshape(-1).tolist() if dims else [array.item()])]
        if raw:
            res.raw_output_contents.append(
                b"".join(_LENGTH.pack(len(item)) + item for item in items)
            )
        else:
            out.contents.bytes_contents.extend(items)
        return
    if raw:
        res.raw_output_contents.append(
            np.ascontiguousarray(array, dtype=tensors.WIRE_DTYPES[wire]).tobytes()
        )
    else:
        getattr(out.contents, tensors.CONTENTS_FIELDS[wire]).extend(array.reshape(-1).tolist())


__all__ = [
    "V2_CONVERTED",
    "V2_DTYPES",
    "WIRE_TO_V2",
    "check_request",
    "decode_input",
    "encode_response",
    "split_bytes",
]
