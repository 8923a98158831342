"""Wire tensors <-> numpy: round trips, zero-copy decode, clear errors naming the field."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from shardline.node._proto.shardline.v1 import inference_pb2 as pb
from shardline.node.sdk import tensors
from shardline.node.sdk.errors import InvalidArgument, clip
from shardline.node.serving.inputs import InputDecoder
from shardline.workflows.manifest import load_manifest
from tests.procs import EXAMPLES

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


# -- typed contents (no byte packing) ------------------------------------------------------


def typed_tensor(name: str, dtype: str, shape: list[int], **contents: list[object]) -> Any:
    t = pb.Tensor(name=name, dtype=dtype, shape=shape)
    for field, values in contents.items():
        getattr(t.contents, field).extend(values)
    return pb.Tensor.FromString(t.SerializeToString())


@pytest.mark.parametrize(
    ("dtype", "field", "values"),
    [
        ("float32", "fp32_contents", [1.5, -2.25, 3e-3]),
        ("float64", "fp64_contents", [1e300, -0.5, 2.0]),
        ("int32", "int_contents", [1, -(2**31), 2**31 - 1]),
        ("int64", "int64_contents", [1, -(2**63), 2**63 - 1]),
        ("bool", "bool_contents", [True, False, True]),
    ],
)
def test_typed_contents_decode_like_packed_bytes(
    dtype: str, field: str, values: list[object]
) -> None:
    t = typed_tensor("x", dtype, [3], **{field: values})
    out = tensors.decode("inputs.x", t.dtype, t.shape, t.data, t.strings, t.contents)
    packed = np.array(values, dtype=tensors.WIRE_DTYPES[dtype])
    assert out.dtype == packed.dtype and out.shape == (3,)
    if dtype.startswith("float"):
        np.testing.assert_allclose(out, packed, rtol=1e-6)
    else:
        np.testing.assert_array_equal(out, packed)
    assert not out.flags.writeable


def test_typed_scalar() -> None:
    t = typed_tensor("x", "float32", [], fp32_contents=[912.5])
    out = tensors.decode("inputs.x", t.dtype, t.shape, t.data, t.strings, t.contents)
    assert out.shape == () and abs(float(out) - 912.5) < 1e-3


@pytest.mark.parametrize(
    ("dtype", "shape", "data", "contents", "needle"),
    [
        ("float32", [2], b"\0" * 8, {"fp32_contents": [1.0, 2.0]}, "either `data`"),
        ("float32", [2], b"", {"fp64_contents": [1.0, 2.0]}, "in `contents.fp32_contents`"),
        ("int64", [2], b"", {"int64_contents": [1, 2], "int_contents": [3]}, "contents.int_"),
        ("int64", [3], b"", {"int64_contents": [1, 2]}, "needs 3 values"),
        ("string", [1], b"", {"int64_contents": [1]}, "carries its values in `strings`"),
    ],
)
def test_bad_typed_contents_name_the_field(
    dtype: str, shape: list[int], data: bytes, contents: dict[str, list[object]], needle: str
) -> None:
    t = typed_tensor("amount", dtype, shape, **contents)
    with pytest.raises(InvalidArgument) as err:
        tensors.decode("inputs.amount", dtype, shape, data, ["a"] if dtype == "string" else [],
                       t.contents)  # fmt: skip
    assert str(err.value).startswith("inputs.amount: ")
    assert needle in str(err.value)


def test_input_decoder_takes_typed_contents_with_the_same_checks() -> None:
    manifest = load_manifest(EXAMPLES / "payment_fraud" / "v1")
    decoder = InputDecoder(manifest)
    packed = pb.PredictRequest()
    typed = pb.PredictRequest()
    for spec in manifest.inputs:
        value = tensors.as_array("USD" if spec.dtype == "string" else 1)
        value = value.astype(tensors.WIRE_DTYPES[spec.dtype]) if spec.dtype != "string" else value
        tensors.encode_into(packed.inputs.add(), spec.name, value)
        t = typed.inputs.add(name=spec.name, dtype=spec.dtype)
        if spec.dtype == "string":
            t.strings.append("USD")
        else:
            getattr(t.contents, tensors.CONTENTS_FIELDS[spec.dtype]).append(value.item())
    a, b = decoder.decode(packed.inputs), decoder.decode(typed.inputs)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape
        assert a[name].tolist() == b[name].tolist()
    bad = pb.PredictRequest()
    bad.CopyFrom(typed)
    numeric = next(t for t in bad.inputs if t.dtype != "string")
    numeric.contents.fp64_contents.append(1.0)  # a second typed field
    with pytest.raises(InvalidArgument, match=f"inputs.{numeric.name}: "):
        decoder.decode(bad.inputs)


def test_oversized_names_are_refused_briefly() -> None:
    decoder = InputDecoder(load_manifest(EXAMPLES / "payment_fraud" / "v1"))
    request = pb.PredictRequest()
    request.inputs.add(name="n" * 100_000, dtype="float32")
    with pytest.raises(InvalidArgument) as err:
        decoder.decode(request.inputs)
    assert len(str(err.value)) < 200
    request = pb.PredictRequest()
    request.inputs.add(name="amount", dtype="d" * 100_000)
    with pytest.raises(InvalidArgument) as err:
        decoder.decode(request.inputs)
    assert len(str(err.value)) < 200


def test_clip_bounds_and_escapes() -> None:
    assert clip("abc") == "'abc'"
    cut = clip("x" * 10_000 + "\n")
    assert len(cut) < 100 and "10001 characters" in cut
    assert "\n" not in clip("a\nb\x1b[31m") and "\\n" in clip("a\nb")
