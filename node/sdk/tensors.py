"""Tensors on the wire: ``{name, dtype, shape, little-endian bytes}`` <-> numpy.

Decoding ``data`` is zero-copy: the array is a read-only view over the message's bytes.
A client that does not pack bytes sends typed values in ``contents`` instead (one
repeated field per dtype, as in the Open Inference Protocol V2); those are copied into a
read-only array. String tensors carry their elements in ``strings`` and decode to
``numpy.str_`` arrays. Every malformed tensor is an ``InvalidArgument`` naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from shardline.node.sdk.errors import InvalidArgument, clip

#: Wire dtype -> little-endian numpy dtype ("string" is handled apart).
WIRE_DTYPES: Mapping[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
    "bool": np.dtype("?"),
}
STRING = "string"
MAX_DIMS = 8
#: Wire dtype -> the ``TensorContents`` field that carries its elements as typed values.
CONTENTS_FIELDS: Mapping[str, str] = {
    "float32": "fp32_contents",
    "float64": "fp64_contents",
    "int32": "int_contents",
    "int64": "int64_contents",
    "bool": "bool_contents",
}


def _shape(field: str, shape: Iterable[int]) -> tuple[int, ...]:
    dims = tuple(int(d) for d in shape)
    if len(dims) > MAX_DIMS:
        raise InvalidArgument(field, f"at most {MAX_DIMS} dimensions, got {len(dims)}")
    if any(d < 0 for d in dims):
        raise InvalidArgument(field, f"negative dimension in shape {list(dims)}")
    return dims


def decode(
    field: str,
    dtype: str,
    shape: Iterable[int],
    data: bytes,
    strings: Any,
    contents: Any = None,
) -> np.ndarray:
    """One wire tensor -> numpy array (``field`` names it in errors, e.g. ``inputs.amount``).

    ``contents`` is the tensor's ``TensorContents`` message (typed values), if any.
    """
    dims = _shape(field, shape)
    count = math.prod(dims)
    typed = contents.ListFields() if contents is not None else ()
    if dtype == STRING:
        if data or typed:
            raise InvalidArgument(field, "a string tensor carries its values in `strings`")
        if len(strings) != count:
            raise InvalidArgument(
                field, f"shape {list(dims)} needs {count} strings, got {len(strings)}"
            )
        return np.array(list(strings), dtype=np.str_).reshape(dims)
    np_dtype = WIRE_DTYPES.get(dtype)
    if np_dtype is None:
        known = ", ".join([*WIRE_DTYPES, STRING])
        raise InvalidArgument(field, f"unknown dtype {clip(dtype)}; expected one of {known}")
    if strings:
        raise InvalidArgument(field, f"a {dtype} tensor carries its values in `data`")
    if typed:
        return _from_contents(field, dtype, dims, count, data, typed)
    expected = count * np_dtype.itemsize
    if len(data) != expected:
        raise InvalidArgument(
            field,
            f"shape {list(dims)} of {dtype} needs {expected} bytes, got {len(data)}",
        )
    return np.frombuffer(data, dtype=np_dtype).reshape(dims)


def _from_contents(
    field: str, dtype: str, dims: tuple[int, ...], count: int, data: bytes, typed: Any
) -> np.ndarray:
    want = CONTENTS_FIELDS[dtype]
    if data:
        raise InvalidArgument(field, "set either `data` (bytes) or `contents` (typed values)")
    given = [descriptor.name for descriptor, _ in typed]
    if given != [want]:
        raise InvalidArgument(
            field,
            f"a {dtype} tensor carries typed values in `contents.{want}`, "
            f"got `contents.{'`, `contents.'.join(given)}`",
        )
    values = typed[0][1]
    if len(values) != count:
        raise InvalidArgument(
            field, f"shape {list(dims)} needs {count} values in contents.{want}, got {len(values)}"
        )
    array = np.array(values, dtype=WIRE_DTYPES[dtype]).reshape(dims)
    array.flags.writeable = False  # like the zero-copy views over `data`
    return array


def wire_dtype(array: np.ndarray) -> str:
    """The wire dtype name of a numpy array (TypeError for dtypes the wire cannot carry)."""
    if array.dtype.kind in "US":
        return STRING
    for name, np_dtype in WIRE_DTYPES.items():
        if array.dtype == np_dtype or array.dtype == np_dtype.newbyteorder("="):
            return name
    raise TypeError(f"dtype {array.dtype} cannot travel on the wire")


def encode_into(message: Any, name: str, value: Any) -> None:
    """Fill a wire ``Tensor`` message (protobuf or betterproto) from a numpy-compatible value."""
    array = np.asarray(value)
    if array.dtype.kind == "f" and array.dtype.itemsize not in (4, 8):
        array = array.astype("<f4")
    message.name = name
    dtype = wire_dtype(array)
    message.dtype = dtype
    message.shape[:] = list(array.shape)
    if dtype == STRING:
        message.strings[:] = [str(s) for s in array.reshape(-1).tolist()]
    else:
        message.data = np.ascontiguousarray(array, dtype=WIRE_DTYPES[dtype]).tobytes()


def as_array(value: Any) -> np.ndarray:
    """A user value (number, bool, str, list, array) as the array the client would send.

    Python ints become int64 and floats float32 — the dtypes the examples declare — so
    ``--input amount=12.5`` means what a person expects.
    """
    array = np.asarray(value)
    if array.dtype.kind == "i":
        return array.astype("<i8")
    if array.dtype.kind == "f":
        return array.astype("<f4")
    return array
