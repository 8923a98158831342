"""Tensors on the wire: ``{name, dtype, shape, little-endian bytes}`` <-> numpy.

Decoding is zero-copy: the array is a read-only view over the message's bytes.
String tensors carry their elements in ``strings`` and decode to ``numpy.str_``
arrays. Every malformed tensor is an ``InvalidArgument`` naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from node.errors import InvalidArgument, clip

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


def _shape(field: str, shape: Iterable[int]) -> tuple[int, ...]:
    dims = tuple(int(d) for d in shape)
    if len(dims) > MAX_DIMS:
        raise InvalidArgument(field, f"at most {MAX_DIMS} dimensions, got {len(dims)}")
    if any(d < 0 for d in dims):
        raise InvalidArgument(field, f"negative dimension in shape {list(dims)}")
    return dims


def decode(field: str, dtype: str, shape: Iterable[int], data: bytes, strings: Any) -> np.ndarray:
    """One wire tensor -> numpy array (``field`` names it in errors, e.g. ``inputs.amount``)."""
    dims = _shape(field, shape)
    count = math.prod(dims)
    if dtype == STRING:
        if data:
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
    expected = count * np_dtype.itemsize
    if len(data) != expected:
        raise InvalidArgument(
            field,
            f"shape {list(dims)} of {dtype} needs {expected} bytes, got {len(data)}",
        )
    return np.frombuffer(data, dtype=np_dtype).reshape(dims)


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
