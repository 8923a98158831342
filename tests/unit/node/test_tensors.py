"""Wire tensors <-> numpy: round trips, zero-copy decode, clear errors naming the field."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from node import tensors
from node._proto.shardline.v1 import inference_pb2 as pb
from node.errors import InvalidArgument

numeric = st.sampled_from(["<f4", "<f8", "<i4", "<i8", "?"])


def roundtrip(array: np.ndarray) -> np.ndarray:
    t = pb.Tensor()
    tensors.encode_into(t, "x", array)
    wire = pb.Tensor.FromString(t.SerializeToString())
    return tensors.decode("inputs.x", wire.dtype, wire.shape, wire.data, wire.strings)


@given(hnp.arrays(numeric, hnp.array_shapes(min_dims=0, max_dims=4, max_side=5)))
def test_numeric_roundtrip(array: np.ndarray) -> None:
    out = roundtrip(array)
    assert out.shape == array.shape
    assert out.dtype == array.dtype
    np.testing.assert_array_equal(out, array)


@given(
    st.lists(
        st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=8),
        max_size=6,
    )
)
def test_string_roundtrip(items: list[str]) -> None:
    # numpy's str_ drops trailing NUL characters, and protobuf strings are UTF-8 (no lone
    # surrogates): strings carrying either are out of scope.
    array = np.array(items, dtype=np.str_)
    assert roundtrip(array).tolist() == items


def test_decode_is_a_view_over_the_bytes() -> None:
    data = np.arange(4, dtype="<f4").tobytes()
    out = tensors.decode("inputs.x", "float32", [4], data, [])
    assert not out.flags.writeable  # frombuffer view: no copy was made
    assert out.tolist() == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    ("dtype", "shape", "data", "strings", "needle"),
    [
        ("float16", [], b"\0\0", [], "unknown dtype"),
        ("float32", [2], b"\0" * 4, [], "needs 8 bytes, got 4"),
        ("int64", [-1], b"", [], "negative dimension"),
        ("string", [2], b"", ["a"], "needs 2 strings"),
        ("string", [], b"x", ["a"], "carries its values in `strings`"),
        ("float32", [9] * 9, b"", [], "at most 8 dimensions"),
    ],
)
def test_bad_tensors_name_the_field(
    dtype: str, shape: list[int], data: bytes, strings: list[str], needle: str
) -> None:
    with pytest.raises(InvalidArgument) as err:
        tensors.decode("inputs.amount", dtype, shape, data, strings)
    assert str(err.value).startswith("inputs.amount: ")
    assert needle in str(err.value)


def test_as_array_picks_wire_friendly_dtypes() -> None:
    assert tensors.as_array(3).dtype == np.dtype("<i8")
    assert tensors.as_array(2.5).dtype == np.dtype("<f4")
    assert tensors.as_array([True]).dtype == np.dtype("?")
    assert tensors.wire_dtype(tensors.as_array("USD")) == "string"
