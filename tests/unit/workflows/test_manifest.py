"""Tests for shardline.workflows.manifest: validation errors name the field, round trips, tensor
checks."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardline.workflows.manifest import (
    DTYPES,
    BatchingConfig,
    FileRef,
    InputError,
    ManifestError,
    OutputError,
    TensorSpec,
    WorkflowManifest,
    load_manifest,
)
from shardline.workflows.sdk import InputError as SdkInputError

EXAMPLES = Path(__file__).resolve().parents[3] / "workflows" / "examples"
SHA = "ab" * 32


def valid() -> dict[str, Any]:
    return {
        "name": "payment_fraud",
        "version": "1",
        "description": "test",
        "entrypoint": "workflow.py:FraudWorkflow",
        "device": "auto",
        "replicas": 2,
        "weights": {"path": "weights.safetensors", "sha256": SHA},
        "files": [{"path": "data/facts.safetensors", "sha256": "cd" * 32}],
        "batching": {"max_batch_size": 64, "max_delay_ms": 2.0, "queue_capacity": 1024},
        "inputs": [
            {"name": "amount", "dtype": "float32", "shape": []},
            {"name": "tags", "dtype": "string", "shape": [-1], "optional": True},
        ],
        "outputs": [{"name": "probability", "dtype": "float32", "shape": []}],
        "params": {"threshold": 0.5, "vocab": ["a", "b"], "nested": {"x": [1, 2]}},
    }


def error_for(mutate: Any) -> ManifestError:
    d = valid()
    mutate(d)
    with pytest.raises(ManifestError) as info:
        WorkflowManifest.from_dict(d, source="pkg/workflow.toml")
    return info.value


def test_valid_manifest_parses() -> None:
    m = WorkflowManifest.from_dict(valid())
    assert m.model_key == "payment_fraud@1"
    assert m.entrypoint_file == "workflow.py"
    assert m.entrypoint_class == "FraudWorkflow"
    assert m.input("amount").dtype == "float32"
    assert m.files[0].path == "data/facts.safetensors"
    assert m.batching == BatchingConfig(64, 2.0, 1024)
    assert m.params["nested"]["x"] == (1, 2)
    with pytest.raises(KeyError):
        m.input("nope")
    with pytest.raises(TypeError):
        m.params["threshold"] = 1  # type: ignore[index]
    hash(m)


def test_defaults() -> None:
    d = valid()
    for key in ("description", "device", "replicas", "files", "batching", "params"):
        del d[key]
    m = WorkflowManifest.from_dict(d)
    assert (m.device, m.replicas, m.files, m.description) == ("auto", 2, (), "")
    assert m.batching == BatchingConfig()
    assert dict(m.params) == {}


def test_round_trip() -> None:
    m = WorkflowManifest.from_dict(valid())
    assert WorkflowManifest.from_dict(m.to_dict()) == m
    assert m.to_dict()["params"] == valid()["params"]


@pytest.mark.parametrize("package", sorted(p.parent for p in EXAMPLES.rglob("workflow.toml")))
def test_examples_round_trip(package: Path) -> None:
    m = load_manifest(package)
    assert WorkflowManifest.from_dict(copy.deepcopy(m.to_dict())) == m


def _set(path: str, value: Any) -> Any:
    def mutate(d: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = d
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        if value is KeyError:
            del target[int(last) if last.isdigit() else last]
        else:
            target[int(last) if last.isdigit() else last] = value

    return mutate


INVALID = [
    (_set("name", KeyError), "name: required"),
    (_set("name", "Payment-Fraud"), "name: must match"),
    (_set("name", 3), "name: expected a string"),
    (_set("version", "1 0"), "version: must match"),
    (_set("version", ""), "version: must match"),
    (_set("description", 1), "description: expected a string"),
    (_set("entrypoint", "workflow:Fraud"), "entrypoint: expected 'file.py:Class'"),
    (_set("entrypoint", "workflow.py:"), "entrypoint: expected"),
    (_set("entrypoint", "../up.py:Fraud"), "entrypoint: path must stay inside"),
    (_set("entrypoint", "/abs/wf.py:Fraud"), "entrypoint: path must be relative"),
    (_set("device", "tpu"), "device: must be one of"),
    (_set("replicas", 0), "replicas: must be an integer >= 1"),
    (_set("replicas", True), "replicas: must be an integer >= 1"),
    (_set("replicas", "2"), "replicas: must be an integer >= 1"),
    (_set("weights", KeyError), "weights: required"),
    (_set("weights", "weights.safetensors"), "weights: expected a table"),
    (_set("weights.path", "../weights.safetensors"), "weights.path: path must stay inside"),
    (_set("weights.path", "/etc/passwd"), "weights.path: path must be relative"),
    (_set("weights.path", "a\\..\\b"), "weights.path: invalid path"),
    (_set("weights.sha256", "xyz"), "weights.sha256: expected 64 hex digits"),
    (_set("weights.sha256", KeyError), "weights.sha256: required"),
    (_set("weights.size", 3), "weights.size: unknown key(s) ['size']"),
    (_set("files.0.path", "weights.safetensors"), "files[0].path: duplicate path"),
    (_set("files.0.path", "x/../../facts"), "files[0].path: path must stay inside"),
    (_set("files", {"path": "x"}), "files: expected an array of tables"),
    (_set("batching.max_batch", 3), "batching.max_batch: unknown key(s)"),
    (_set("batching.max_batch_size", 0), "batching.max_batch_size: must be between 1 and 4096"),
    (_set("batching.max_delay_ms", "2"), "batching.max_delay_ms: expected a number"),
    (_set("batching.queue_capacity", 8), "batching.queue_capacity: must be between"),
    (_set("inputs", []), "inputs: at least one tensor is required"),
    (_set("inputs", KeyError), "inputs: required"),
    (_set("outputs", KeyError), "outputs: required"),
    (_set("inputs.0.dtype", "float16"), "inputs[0].dtype: must be one of"),
    (_set("inputs.0.dtype", KeyError), "inputs[0].dtype: required"),
    (_set("inputs.0.dtype", ["float32"]), "inputs[0].dtype: must be one of"),
    (_set("inputs.0.shape", [0]), "inputs[0].shape: each dimension must be -1 or >= 1"),
    (_set("inputs.0.shape", [-2]), "inputs[0].shape: each dimension"),
    (_set("inputs.0.shape", [True]), "inputs[0].shape: each dimension"),
    (_set("inputs.0.shape", "[]"), "inputs[0].shape: expected a list of ints"),
    (_set("inputs.0.shape", [1] * 9), "inputs[0].shape: at most 8 dimensions"),
    (_set("inputs.0.optional", "yes"), "inputs[0].optional: expected a boolean"),
    (_set("inputs.0.dtypes", "float32"), "inputs[0].dtypes: unknown key(s)"),
    (_set("inputs.0.name", "1st"), "inputs[0].name: must match"),
    (_set("inputs.1.name", "amount"), "inputs[1].name: duplicate name 'amount'"),
    (_set("outputs.0.dtype", "complex64"), "outputs[0].dtype: must be one of"),
    (_set("weight", {}), "weight: unknown key(s) ['weight']"),
    (_set("params", [1]), "params: expected a table"),
    (_set("params.when", object()), "params.when: unsupported value"),
]


@pytest.mark.parametrize(("mutate", "expected"), INVALID)
def test_invalid_manifest_names_field(mutate: Any, expected: str) -> None:
    err = error_for(mutate)
    assert str(err).startswith("pkg/workflow.toml: "), str(err)
    assert expected in str(err), str(err)
    assert isinstance(err, ValueError)


def test_error_message_format_for_file() -> None:
    text = (EXAMPLES / "payment_fraud" / "v1" / "workflow.toml").read_text()
    text = text.replace("max_batch_size = 64", "max_batch_size = 0")
    with pytest.raises(ManifestError) as info:
        WorkflowManifest.from_toml(text, "/pkgs/fraud/workflow.toml")
    assert str(info.value) == (
        "/pkgs/fraud/workflow.toml: batching.max_batch_size: must be between 1 and 4096, got 0"
    )
    assert info.value.field == "batching.max_batch_size"


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"x\.toml: invalid TOML"):
        WorkflowManifest.from_toml("name = ", "x.toml")
    with pytest.raises(ManifestError, match="cannot read manifest"):
        load_manifest(tmp_path)


def test_sha256_is_normalized_to_lowercase() -> None:
    assert FileRef("w.safetensors", "AB" * 32).sha256 == "ab" * 32


@given(
    size=st.integers(-10, 5000),
    delay=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 2000)),
    capacity=st.integers(-10, 10_000),
)
def test_batching_validation(size: int, delay: float, capacity: int) -> None:
    ok = (
        1 <= size <= 4096
        and math.isfinite(delay)
        and 0 <= delay <= 1000
        and size <= capacity <= 1_000_000
    )
    d = valid()
    d["batching"] = {"max_batch_size": size, "max_delay_ms": delay, "queue_capacity": capacity}
    if ok:
        m = WorkflowManifest.from_dict(d)
        assert m.batching.max_delay_ms == float(delay)
    else:
        with pytest.raises(ManifestError) as info:
            WorkflowManifest.from_dict(d)
        assert info.value.field.startswith("batching.")


@given(shape=st.lists(st.integers(-3, 5), max_size=10))
def test_shape_validation(shape: list[int]) -> None:
    ok = len(shape) <= 8 and all(d == -1 or d >= 1 for d in shape)
    if ok:
        assert TensorSpec("x", "int64", tuple(shape)).shape == tuple(shape)
    else:
        with pytest.raises(ManifestError) as info:
            TensorSpec("x", "int64", tuple(shape))
        assert info.value.field == "shape"


_NUMERIC = [k for k, v in DTYPES.items() if v is not None]


@given(
    spec_dtype=st.sampled_from(_NUMERIC),
    spec_shape=st.lists(st.sampled_from([-1, 1, 2, 3]), max_size=3),
    value_dtype=st.sampled_from([*_NUMERIC, "uint8", "float16"]),
    value_shape=st.lists(st.integers(0, 3), max_size=3),
)
def test_check_accepts_exactly_matching_tensors(
    spec_dtype: str, spec_shape: list[int], value_dtype: str, value_shape: list[int]
) -> None:
    spec = TensorSpec("x", spec_dtype, tuple(spec_shape))
    value = np.zeros(value_shape, dtype=value_dtype)
    fits = (
        value_dtype == spec_dtype
        and len(value_shape) == len(spec_shape)
        and all(w in (-1, g) for w, g in zip(spec_shape, value_shape, strict=True))
    )
    if fits:
        spec.check(value)
    else:
        with pytest.raises(InputError) as info:
            spec.check(value)
        assert info.value.field == "x"
        assert str(info.value).startswith("x: expected ")


def test_check_messages() -> None:
    spec = TensorSpec("amount", "float32", ())
    with pytest.raises(SdkInputError) as info:
        spec.check(np.zeros(3, dtype=np.int64))
    expected = "amount: expected float32 of shape [] (scalar), got int64 of shape [3]"
    assert str(info.value) == expected
    assert info.value.field == "amount"
    with pytest.raises(InputError, match=r"expected float32 of shape \[\] \(scalar\), got float"):
        spec.check(1.5)
    spec.check(np.array(1.5, dtype=np.float32))
    spec.check(np.float32(1.5))  # numpy scalars count as 0-d arrays
    with pytest.raises(InputError, match=r"got float64 of shape \[\] \(scalar\)"):
        spec.check(np.float64(1.5))
    with pytest.raises(InputError, match=r"got >f4 of shape \[\]"):
        spec.check(np.array(1.5, dtype=">f4"))
    ids = TensorSpec("ids", "int64", (-1, 2))
    with pytest.raises(InputError, match=r"ids: expected int64 of shape \[-1, 2\], got int64 of"):
        ids.check(np.zeros((4, 3), dtype=np.int64))
    ids.check(np.zeros((0, 2), dtype=np.int64))


def test_check_strings() -> None:
    scalar = TensorSpec("currency", "string", ())
    scalar.check(np.array("EUR"))
    with pytest.raises(InputError, match="got object of shape"):
        scalar.check(np.array("EUR", dtype=object))
    with pytest.raises(InputError, match=r"got string of shape \[1\]"):
        scalar.check(np.array(["EUR"]))
    vector = TensorSpec("tags", "string", (-1,))
    vector.check(["a", "b"])
    vector.check(np.array(["a", "bcd"]))
    with pytest.raises(InputError, match="not all strings"):
        vector.check(["a", 1])


def test_check_inputs_and_outputs() -> None:
    m = WorkflowManifest.from_dict(valid())
    m.check_inputs({"amount": np.array(1.0, dtype=np.float32)})
    with pytest.raises(InputError) as info:
        m.check_inputs({})
    assert info.value.field == "amount"
    assert "required input is missing" in str(info.value)
    with pytest.raises(InputError, match="bogus: unknown input"):
        m.check_inputs({"amount": np.array(1.0, dtype=np.float32), "bogus": np.array(1)})
    with pytest.raises(InputError, match="tags: expected string"):
        m.check_inputs({"amount": np.array(1.0, dtype=np.float32), "tags": np.array([1])})
    m.check_outputs({"probability": np.array(0.5, dtype=np.float32)})
    with pytest.raises(OutputError, match=r"outputs.probability: expected float32"):
        m.check_outputs({"probability": np.array(0.5)})
    with pytest.raises(OutputError, match=r"outputs\.probability: required output is missing"):
        m.check_outputs({})
    with pytest.raises(OutputError, match=r"outputs\.extra: unknown output"):
        m.check_outputs({"probability": np.array(0.5, dtype=np.float32), "extra": np.array(1)})
