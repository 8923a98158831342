"""The workflow SDK: the base class a workflow package's module subclasses, plus small helpers.

Lifecycle of a loaded workflow (driven by the model actor, see DESIGN.md "The request path"
step 6): `__init__` once per load; `preprocess` once per request (validate, look up facts,
build features; may raise `InputError`); `forward` once per batch, in a worker thread under
`torch.inference_mode()`, on `self.device`; `postprocess` once per request (top-k,
thresholds, business rules).

Tensor convention (see `shardline.workflows.manifest`): inputs and outputs are numpy arrays; numeric
ones have exactly the declared dtype, string ones have dtype `str_` (`'<U…'`, never object
arrays), scalars are 0-d arrays. Inputs reach `preprocess` already validated against the
manifest's input schema (names, dtypes, shapes: the node does it before queueing, and
`run_batch` does it here through `Workflow.check_inputs`), so `preprocess` only checks
values (ranges, vocabularies, ids) — per-request work on the hot path stays small.

Workflow modules are imported by file path (not as package members), so they must use
absolute imports only (`from shardline.workflows.sdk import ...`).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeAlias, TypeVar

import numpy as np
import numpy.typing as npt
import torch
from safetensors.numpy import load_file as _load_numpy_file
from torch import nn

from shardline.workflows.manifest import (
    InputError as InputError,  # re-exported for workflow authors
)
from shardline.workflows.manifest import OutputError as OutputError
from shardline.workflows.manifest import TensorSpec as TensorSpec
from shardline.workflows.manifest import WorkflowManifest

Array: TypeAlias = npt.NDArray[Any]
Inputs: TypeAlias = Mapping[str, Array]
Outputs: TypeAlias = dict[str, Array]
T = TypeVar("T")


class ContextLike(Protocol):
    """Request context; the node passes `shardline.router.rules.RequestContext`, which has these."""

    @property
    def user_id(self) -> str: ...
    @property
    def country(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def surface(self) -> str: ...
    def get(self, key: str) -> str | None: ...


@dataclass(frozen=True)
class StaticContext:
    """A plain `ContextLike` for warm-up, tests, docs and benchmarks."""

    user_id: str = ""
    country: str = ""
    device: str = ""
    surface: str = ""
    extra: Mapping[str, str] = field(default_factory=dict, hash=False)

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> StaticContext:
        named = ("user_id", "country", "device", "surface")
        extra = {k: v for k, v in fields.items() if k not in named}
        return cls(**{k: fields[k] for k in named if k in fields}, extra=extra)

    def get(self, key: str) -> str | None:
        if key in ("user_id", "country", "device", "surface"):
            value: str = getattr(self, key)
            return value
        return self.extra.get(key)


class Workflow:
    """Base class. Lifecycle: `__init__` once per load; `preprocess` per request; `forward`
    per batch (called in a worker thread under `torch.inference_mode()`, tensors on
    `self.device`); `postprocess` per request."""

    def __init__(
        self,
        manifest: WorkflowManifest,
        weights: dict[str, torch.Tensor],
        package_dir: Path,
        device: torch.device,
    ) -> None:
        self.manifest = manifest
        self.weights = weights
        self.package_dir = Path(package_dir)
        self.device = device
        self.params: Mapping[str, Any] = manifest.params

    def preprocess(self, context: ContextLike, inputs: Inputs) -> Any:
        """Validate one request and build what `forward` needs; may raise `InputError`."""
        raise NotImplementedError

    def forward(self, batch: list[Any]) -> list[Any]:
        """One result per preprocessed item, same order; do the torch work batched."""
        raise NotImplementedError

    def postprocess(self, context: ContextLike, inputs: Inputs, raw: Any) -> Outputs:
        """Turn one `forward` result into the declared outputs."""
        raise NotImplementedError

    def example_request(self) -> tuple[dict[str, str], dict[str, Array]]:
        """(context fields incl. user_id, inputs): a valid request for warm-up, docs, benches."""
        raise NotImplementedError

    # -- helpers for subclasses ---------------------------------------------------------

    def check_inputs(self, inputs: Inputs) -> None:
        """Validate `inputs` against the manifest's input schema (raises `InputError`)."""
        self.manifest.check_inputs(inputs)

    def to_device(self, array: Array) -> torch.Tensor:
        """`torch.from_numpy`; on CUDA via pinned memory and a non-blocking copy."""
        if not array.flags.writeable or not array.flags.c_contiguous:
            array = np.array(array, order="C", copy=True)
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def param(self, key: str, kind: type[T]) -> T:
        """`params[key]`, checked to be a `kind` (an int is accepted where float is asked)."""
        if key not in self.params:
            raise ValueError(f"{self.manifest.model_key}: params.{key} is required")
        value = self.params[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(
                f"{self.manifest.model_key}: params.{key} must be {kind.__name__}, got {value!r}"
            )
        return value

    def param_strings(self, key: str) -> tuple[str, ...]:
        """`params[key]` as a non-empty list of distinct strings (a vocabulary)."""
        value = self.param(key, tuple)
        if not value or not all(isinstance(v, str) for v in value) or len(set(value)) != len(value):
            raise ValueError(
                f"{self.manifest.model_key}: params.{key} must be distinct strings, got {value!r}"
            )
        return tuple(str(v) for v in value)

    def load_data(self, path: str) -> dict[str, Array]:
        """Load a digest-checked data file (`[[files]]`): safetensors, or `.npy` (no pickle)."""
        if path not in {ref.path for ref in self.manifest.files}:
            raise ValueError(f"{self.manifest.model_key}: {path!r} is not listed in [[files]]")
        full = self.package_dir / path
        if path.endswith(".npy"):
            return {Path(path).stem: np.load(full, allow_pickle=False)}
        return dict(_load_numpy_file(str(full)))


# -- reading request inputs ----------------------------------------------------------------


def get_float(inputs: Inputs, name: str, low: float = -math.inf, high: float = math.inf) -> float:
    """A scalar input as a float; `InputError` unless finite and within [low, high]."""
    value = float(inputs[name].item())
    if not (math.isfinite(value) and low <= value <= high):
        raise InputError(name, f"must be finite and within [{low:g}, {high:g}], got {value!r}")
    return value


def get_int(
    inputs: Inputs,
    name: str,
    default: int | None = None,
    low: int | None = None,
    high: int | None = None,
) -> int:
    """A scalar input as an int (or `default` when absent); `InputError` if out of range."""
    if name not in inputs:
        if default is None:
            raise InputError(name, "required input is missing")
        value = default
    else:
        value = int(inputs[name].item())
    if (low is not None and value < low) or (high is not None and value > high):
        raise InputError(name, f"must be within [{low}, {high}], got {value}")
    return value


def get_bool(inputs: Inputs, name: str) -> bool:
    return bool(inputs[name].item())


def get_str(inputs: Inputs, name: str, allow_empty: bool = False) -> str:
    value = str(inputs[name].item())
    if not allow_empty and not value.strip():
        raise InputError(name, "must not be empty")
    return value


# -- ids, vocabularies and facts -------------------------------------------------------------


def stable_hash64(text: str) -> int:
    """A process-independent signed 64-bit hash of a string (blake2b)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def hash_ids(ids: Sequence[str]) -> Array:
    """`stable_hash64` of each id, as int64."""
    return np.array([stable_hash64(i) for i in ids], dtype=np.int64)


class KeyIndex:
    """Maps string ids to fact-table rows through sorted int64 `stable_hash64` keys."""

    def __init__(self, keys: Array) -> None:
        keys = np.asarray(keys, dtype=np.int64)
        if keys.ndim != 1 or (keys.size > 1 and not bool(np.all(keys[1:] > keys[:-1]))):
            raise ValueError("KeyIndex keys must be a strictly increasing 1-d array")
        self.keys = keys

    def row(self, text: str) -> int | None:
        key = stable_hash64(text)
        pos = int(np.searchsorted(self.keys, key))
        return pos if pos < self.keys.size and int(self.keys[pos]) == key else None


def vocab_index(vocab: Sequence[str], value: str, other: str = "other") -> int:
    """Index of `value` in `vocab`; unknown values map to the `other` bucket."""
    try:
        return vocab.index(value)
    except ValueError:
        return vocab.index(other)


def one_hot(index: int, size: int) -> Array:
    out = np.zeros(size, dtype=np.float32)
    out[index] = 1.0
    return out


def context_one_hot(context: ContextLike, vocabularies: Mapping[str, Sequence[str]]) -> Array:
    """Concatenated one-hots of context fields, e.g. `{"country": [...], "device": [...]}`;
    matched case-insensitively, missing or unknown values go to the `other` bucket."""
    parts = []
    for key, vocab in vocabularies.items():
        lowered = [v.lower() for v in vocab]
        parts.append(one_hot(vocab_index(lowered, (context.get(key) or "").lower()), len(vocab)))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def get_ids(inputs: Inputs, name: str, low: int, high: int, max_count: int) -> Array:
    """A 1-d int id input, deduplicated (first occurrences, in order); `InputError` if it
    holds more than `max_count` ids or any id outside [low, high]."""
    ids = np.asarray(inputs[name], dtype=np.int64)
    if ids.size > max_count:
        raise InputError(name, f"at most {max_count} ids, got {ids.size}")
    bad = (ids < low) | (ids > high)
    if bool(np.any(bad)):
        first = int(ids[int(np.argmax(bad))])
        raise InputError(name, f"id {first} is out of range [{low}, {high}]")
    return unique_in_order(ids)


def row_ids(index: KeyIndex, table: Array, key: str) -> Array:
    """The -1-padded id row of `key` in `table` without padding (int64); empty if unknown."""
    row = index.row(key)
    if row is None:
        return np.zeros(0, dtype=np.int64)
    return real_ids(table[row]).astype(np.int64)


def unique_in_order(ids: Array) -> Array:
    """`ids` without repeats, keeping first occurrences in order."""
    _, first = np.unique(ids, return_index=True)
    return ids[np.sort(first)]


def real_ids(row: Array) -> Array:
    """A `-1`-padded id row without its padding."""
    return row[row >= 0]


def mean_embedding(table: Array, rows: Array) -> Array:
    """Mean of `table[rows]` (float32); zeros when `rows` is empty."""
    if rows.size == 0:
        return np.zeros(table.shape[1], dtype=np.float32)
    return np.asarray(table[rows].mean(axis=0), dtype=np.float32)


def top_k(
    ids: Array, scores: Array, k: int, exclude: Array | set[int] | None = None
) -> tuple[Array, Array]:
    """The `k` best (id, score) pairs, scores descending (ties: smaller id first), minus
    `exclude`; returns (int64 ids, float32 scores)."""
    ids = np.asarray(ids, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float32)
    if exclude is not None and len(exclude) > 0:
        banned = np.fromiter(exclude, dtype=np.int64) if isinstance(exclude, set) else exclude
        keep = ~np.isin(ids, banned)
        ids, scores = ids[keep], scores[keep]
    order = np.lexsort((ids, -scores))[: max(k, 0)]
    return ids[order], scores[order]


# -- batching and torch ----------------------------------------------------------------------


def concat_rows(parts: Sequence[Array]) -> tuple[Array, list[int]]:
    """Concatenate per-request row blocks; returns (rows, sizes) for `split_rows`."""
    sizes = [int(p.shape[0]) for p in parts]
    return np.concatenate(parts, axis=0), sizes


def split_rows(rows: Array, sizes: Sequence[int]) -> list[Array]:
    """Undo `concat_rows` on a per-row result."""
    bounds = np.cumsum(sizes)[:-1]
    return list(np.split(rows, bounds, axis=0))


def to_numpy(tensor: torch.Tensor) -> Array:
    """A CPU numpy copy-or-view of a tensor (synchronizes with the device)."""
    return tensor.detach().to("cpu").numpy()


def mlp(sizes: Sequence[int], activation: Callable[[], nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear layers `sizes[0] -> … -> sizes[-1]` with `activation` between them."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


M = TypeVar("M", bound=nn.Module)


def load_module(
    module: M, weights: Mapping[str, torch.Tensor], prefix: str, device: torch.device
) -> M:
    """Load the `prefix`-ed entries of `weights` into `module` (strictly), move it to
    `device` and put it in eval mode.

    The loaded tensors become the module's parameters (``assign=True``): nothing is copied,
    so a loaded model holds its weights once (the module's initial parameters are freed),
    not twice. Build `module` under ``torch.device("meta")`` to skip even the transient
    allocation of its initial parameters."""
    state = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
    module.load_state_dict(state, strict=True, assign=True)
    module.to(device)
    module.eval()
    return module


def standardize(rows: Array, mean: Array, std: Array) -> Array:
    """`(rows - mean) / std` as float32 (`std` must be positive)."""
    return np.asarray((rows - mean) / std, dtype=np.float32)


def platt(logits: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """Platt-calibrated probabilities `sigmoid(a * logit + b)`."""
    return torch.sigmoid(a * logits + b)


def band(value: float, bands: Sequence[tuple[float, str]], default: str) -> str:
    """The label of the first `(threshold, label)` with `value >= threshold`, else `default`."""
    for threshold, label in bands:
        if value >= threshold:
            return label
    return default


def run_batch(workflow: Workflow, requests: Sequence[tuple[ContextLike, Inputs]]) -> list[Outputs]:
    """Run whole requests synchronously as one batch (warm-up, tests, CLI) as the node would:
    check input schemas, preprocess each, one `forward` under `torch.inference_mode()`,
    postprocess each, check output schemas."""
    for _, inputs in requests:
        workflow.check_inputs(inputs)
    prepared = [workflow.preprocess(ctx, inputs) for ctx, inputs in requests]
    with torch.inference_mode():
        raw = workflow.forward(prepared)
    if len(raw) != len(prepared):
        raise RuntimeError(f"forward returned {len(raw)} results for {len(prepared)} items")
    outputs = [
        workflow.postprocess(ctx, inputs, r) for (ctx, inputs), r in zip(requests, raw, strict=True)
    ]
    for out in outputs:
        workflow.manifest.check_outputs(out)
    return outputs


def example_batch(workflow: Workflow, copies: int = 1) -> list[tuple[ContextLike, Inputs]]:
    """`copies` of the workflow's example request, ready for `run_batch`."""
    fields, inputs = workflow.example_request()
    return [(StaticContext.from_fields(fields), inputs)] * copies
