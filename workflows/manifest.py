"""Workflow package manifests (`workflow.toml`): parsing, validation and tensor schemas.

A workflow package is a directory holding `workflow.toml`, the Python module named by
`entrypoint`, its weights in safetensors and optional data files; every file but the module
is pinned by a sha256 digest. This module needs only numpy (no torch), so control-plane
code can read and validate manifests cheaply.

Tensor convention (used by `TensorSpec.check` and the whole request path): a numeric tensor
is a numpy array of exactly the declared dtype in native byte order; a string tensor is a
numpy array of dtype `str_` (`'<U…'`); a scalar is a 0-d array. `check` also accepts a
`list[str]` as a 1-d string tensor and a numpy scalar as a 0-d array. `InputError` lives
here to keep this module torch-free; `shardline.workflows.sdk` re-exports it for workflow authors.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any, Final, TypeVar

import numpy as np

MANIFEST_FILE: Final = "workflow.toml"
T = TypeVar("T")

_NUMERIC = ("float32", "float64", "int32", "int64", "bool")
DTYPES: Mapping[str, np.dtype[Any] | None] = MappingProxyType(
    {**{name: np.dtype(name) for name in _NUMERIC}, "string": None}
)
DEVICES: Final = ("auto", "cpu", "cuda")

_NAME_RE = re.compile(r"[a-z0-9_]+")
_VERSION_RE = re.compile(r"[A-Za-z0-9._-]+")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_MAX_RANK = 8
_MAX_NAME_LEN = 64


class ManifestError(ValueError):
    """An invalid manifest; the message names the file (when known) and the field path."""

    def __init__(self, field: str, message: str, source: str = "") -> None:
        self.field, self.message, self.source = field, message, source
        super().__init__(": ".join([p for p in (source, field) if p] + [message]))

    def within(self, prefix: str) -> ManifestError:
        """The same error with `prefix` prepended to its field path."""
        path = f"{prefix}.{self.field}" if self.field else prefix
        return ManifestError(path, self.message, self.source)

    def in_file(self, source: str) -> ManifestError:
        """The same error attributed to `source` (kept if one is already set)."""
        return ManifestError(self.field, self.message, self.source or source)


class InputError(ValueError):
    """A bad request input: becomes gRPC INVALID_ARGUMENT. `str(e)` starts with the field."""

    def __init__(self, field: str, message: str) -> None:
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


class OutputError(RuntimeError):
    """A workflow produced outputs that break its own output schema (a workflow bug)."""

    def __init__(self, field: str, message: str) -> None:
        self.field, self.message = field, message
        super().__init__(f"outputs.{field}: {message}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_str(field_path: str, value: object) -> str:
    if not isinstance(value, str):
        raise ManifestError(field_path, f"expected a string, got {type(value).__name__}")
    return value


def _check_rel_path(field_path: str, value: object) -> str:
    """A relative POSIX path that stays inside the package."""
    text = _check_str(field_path, value)
    if not text or "\x00" in text or "\\" in text:
        raise ManifestError(field_path, f"invalid path {text!r}")
    path = PurePosixPath(text)
    if path.is_absolute() or text.startswith("~"):
        raise ManifestError(field_path, f"path must be relative to the package, got {text!r}")
    if ".." in path.parts:
        raise ManifestError(field_path, f"path must stay inside the package, got {text!r}")
    if str(path) in ("", ".") or path.name == "":
        raise ManifestError(field_path, f"path must name a file, got {text!r}")
    return str(path)


def _format_shape(shape: Sequence[int]) -> str:
    return "[] (scalar)" if len(shape) == 0 else "[" + ", ".join(str(d) for d in shape) + "]"


def _describe(value: object) -> tuple[str, tuple[int, ...] | None]:
    """(dtype name as used in manifests, shape) of a candidate tensor value."""
    if isinstance(value, (np.ndarray, np.generic)):  # a numpy scalar counts as 0-d
        dt = value.dtype
        name = "string" if dt.kind == "U" else dt.name if dt.isnative else dt.str
        return name, tuple(int(d) for d in value.shape)
    if isinstance(value, list):
        if all(isinstance(v, str) for v in value):
            return "string", (len(value),)
        return "list (not all strings)", (len(value),)
    return type(value).__name__, None


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output tensor: dtype, shape (-1 = any length) and docs."""

    name: str
    dtype: str
    shape: tuple[int, ...] = ()
    optional: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _IDENT_RE.fullmatch(self.name):
            raise ManifestError("name", f"must match [A-Za-z_][A-Za-z0-9_]*, got {self.name!r}")
        if not isinstance(self.dtype, str) or self.dtype not in DTYPES:
            raise ManifestError("dtype", f"must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.shape, (tuple, list)):
            raise ManifestError(
                "shape", f"expected a list of ints, got {type(self.shape).__name__}"
            )
        if len(self.shape) > _MAX_RANK:
            raise ManifestError("shape", f"at most {_MAX_RANK} dimensions, got {len(self.shape)}")
        for dim in self.shape:
            if not _is_int(dim) or (dim < 1 and dim != -1):
                raise ManifestError("shape", f"each dimension must be -1 or >= 1, got {dim!r}")
        object.__setattr__(self, "shape", tuple(self.shape))
        if not isinstance(self.optional, bool):
            raise ManifestError(
                "optional", f"expected a boolean, got {type(self.optional).__name__}"
            )
        _check_str("description", self.description)

    @property
    def numpy_dtype(self) -> np.dtype[Any] | None:
        """The numpy dtype of this tensor; None for strings (any `'<U…'` width)."""
        return DTYPES[self.dtype]

    def shape_matches(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.shape) and all(
            want in (-1, got) for want, got in zip(self.shape, shape, strict=True)
        )

    def check(self, value: object) -> None:
        """Raise `InputError` (field = this spec's name) unless `value` fits this spec."""
        got_dtype, got_shape = _describe(value)
        if got_dtype == self.dtype and got_shape is not None and self.shape_matches(got_shape):
            return
        got = got_dtype if got_shape is None else f"{got_dtype} of shape {_format_shape(got_shape)}"
        raise InputError(
            self.name, f"expected {self.dtype} of shape {_format_shape(self.shape)}, got {got}"
        )


@dataclass(frozen=True)
class BatchingConfig:
    """How the model actor forms batches: size cap, wait cap and mailbox bound."""

    max_batch_size: int = 32
    max_delay_ms: float = 2.0
    queue_capacity: int = 1024

    def __post_init__(self) -> None:
        if not _is_int(self.max_batch_size) or not 1 <= self.max_batch_size <= 4096:
            raise ManifestError(
                "max_batch_size",
                f"must be between 1 and 4096, got {self.max_batch_size!r}",
            )
        delay = self.max_delay_ms
        if isinstance(delay, bool) or not isinstance(delay, (int, float)):
            raise ManifestError("max_delay_ms", f"expected a number, got {delay!r}")
        if not math.isfinite(delay) or not 0 <= delay <= 1000:
            raise ManifestError("max_delay_ms", f"must be between 0 and 1000, got {delay!r}")
        object.__setattr__(self, "max_delay_ms", float(delay))
        cap = self.queue_capacity
        if not _is_int(cap) or not self.max_batch_size <= cap <= 1_000_000:
            raise ManifestError(
                "queue_capacity",
                f"must be between max_batch_size ({self.max_batch_size}) and 1000000, got {cap!r}",
            )


MAX_MEMORY_BYTES = 2**50  # 1 PiB: anything larger is a typo


@dataclass(frozen=True)
class MemoryConfig:
    """The memory a loaded model takes (``[memory]``): placement and the node's budget count
    it. Left out, ``host_bytes`` is estimated from the weights file's size (what a load
    costs: weights are held once) and replaced by the measured footprint after a load."""

    host_bytes: int | None = None
    device_bytes: int = 0

    def __post_init__(self) -> None:
        for name in ("host_bytes", "device_bytes"):
            value = getattr(self, name)
            if name == "host_bytes" and value is None:
                continue
            if not _is_int(value) or not 0 <= value <= MAX_MEMORY_BYTES:
                raise ManifestError(name, f"must be an integer of bytes >= 0, got {value!r}")


@dataclass(frozen=True)
class FileRef:
    """A file inside the package pinned by its sha256 digest (lowercase hex)."""

    path: str
    sha256: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", _check_rel_path("path", self.path))
        digest = _check_str("sha256", self.sha256).lower()
        if not _SHA256_RE.fullmatch(digest):
            raise ManifestError("sha256", f"expected 64 hex digits, got {self.sha256!r}")
        object.__setattr__(self, "sha256", digest)


def _freeze(value: object, field_path: str) -> Any:
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ManifestError(field_path, f"keys must be strings, got {key!r}")
            out[key] = _freeze(item, f"{field_path}.{key}")
        return MappingProxyType(out)
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(item, f"{field_path}[{i}]") for i, item in enumerate(value))
    if isinstance(value, (str, int, float, bool, _dt.date, _dt.time)):
        return value
    raise ManifestError(field_path, f"unsupported value of type {type(value).__name__}")


def _find(specs: tuple[TensorSpec, ...], name: str, missing: str) -> TensorSpec:
    for spec in specs:
        if spec.name == name:
            return spec
    raise KeyError(missing)


def _check_tensors(specs: tuple[TensorSpec, ...], values: Mapping[str, object], kind: str) -> None:
    known = {spec.name for spec in specs}
    for key in values:
        if key not in known:
            raise InputError(key, f"unknown {kind}; expected some of {sorted(known)}")
    for spec in specs:
        if spec.name in values:
            spec.check(values[spec.name])
        elif not spec.optional:
            raise InputError(spec.name, f"required {kind} is missing")


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class WorkflowManifest:
    """A validated `workflow.toml`. Immutable; `params` is a read-only mapping."""

    name: str
    version: str
    entrypoint: str
    weights: FileRef
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    description: str = ""
    device: str = "auto"
    replicas: int = 2
    files: tuple[FileRef, ...] = ()
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    params: Mapping[str, Any] = field(default_factory=dict, hash=False)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    pinned: bool = False
    """Keep it resident on all its owners (never loaded lazily, never evicted)."""

    def __post_init__(self) -> None:
        for key, regex in (("name", _NAME_RE), ("version", _VERSION_RE)):
            text = _check_str(key, getattr(self, key))
            if not regex.fullmatch(text) or len(text) > _MAX_NAME_LEN:
                raise ManifestError(key, f"must match {regex.pattern} (<= 64 chars), got {text!r}")
        _check_str("description", self.description)
        file_part, sep, class_part = _check_str("entrypoint", self.entrypoint).partition(":")
        if not sep or not file_part.endswith(".py") or not _IDENT_RE.fullmatch(class_part):
            raise ManifestError("entrypoint", f"expected 'file.py:Class', got {self.entrypoint!r}")
        _check_rel_path("entrypoint", file_part)
        if self.device not in DEVICES:
            raise ManifestError("device", f"must be one of {list(DEVICES)}, got {self.device!r}")
        if not _is_int(self.replicas) or self.replicas < 1:
            raise ManifestError("replicas", f"must be an integer >= 1, got {self.replicas!r}")
        if not isinstance(self.pinned, bool):
            raise ManifestError("pinned", f"must be true or false, got {self.pinned!r}")
        object.__setattr__(self, "files", tuple(self.files))
        seen = {self.weights.path}
        for i, ref in enumerate(self.files):
            if ref.path in seen:
                raise ManifestError(f"files[{i}].path", f"duplicate path {ref.path!r}")
            seen.add(ref.path)
        for kind in ("inputs", "outputs"):
            specs = tuple(getattr(self, kind))
            object.__setattr__(self, kind, specs)
            if not specs:
                raise ManifestError(kind, "at least one tensor is required")
            names = [s.name for s in specs]
            for i, spec_name in enumerate(names):
                if spec_name in names[:i]:
                    raise ManifestError(f"{kind}[{i}].name", f"duplicate name {spec_name!r}")
        if not isinstance(self.params, Mapping):
            raise ManifestError("params", f"expected a table, got {type(self.params).__name__}")
        object.__setattr__(self, "params", _freeze(self.params, "params"))

    @property
    def model_key(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def entrypoint_file(self) -> str:
        return self.entrypoint.partition(":")[0]

    @property
    def entrypoint_class(self) -> str:
        return self.entrypoint.partition(":")[2]

    def input(self, name: str) -> TensorSpec:
        return _find(self.inputs, name, f"{self.model_key} has no input {name!r}")

    def output(self, name: str) -> TensorSpec:
        return _find(self.outputs, name, f"{self.model_key} has no output {name!r}")

    def check_inputs(self, inputs: Mapping[str, object]) -> None:
        """Raise `InputError` on an unknown, missing (non-optional) or ill-shaped input."""
        _check_tensors(self.inputs, inputs, "input")

    def check_outputs(self, outputs: Mapping[str, object]) -> None:
        """Raise `OutputError` unless `outputs` holds exactly the declared tensors."""
        try:
            _check_tensors(self.outputs, outputs, "output")
        except InputError as exc:
            raise OutputError(exc.field, exc.message) from None

    def to_dict(self) -> dict[str, Any]:
        """A TOML-shaped dict; `from_dict(m.to_dict()) == m`."""
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "entrypoint": self.entrypoint,
            "device": self.device,
            "replicas": self.replicas,
            "weights": asdict(self.weights),
            "files": [asdict(ref) for ref in self.files],
            "batching": asdict(self.batching),
            "inputs": [{**asdict(spec), "shape": list(spec.shape)} for spec in self.inputs],
            "outputs": [{**asdict(spec), "shape": list(spec.shape)} for spec in self.outputs],
            "params": _thaw(self.params),
            "pinned": self.pinned,
            "memory": {k: v for k, v in asdict(self.memory).items() if v is not None},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "") -> WorkflowManifest:
        try:
            return _parse_manifest(d)
        except ManifestError as exc:
            raise exc.in_file(source) from None

    @classmethod
    def from_toml(cls, text: str, source: str = "") -> WorkflowManifest:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ManifestError("", f"invalid TOML: {exc}", source) from None
        return cls.from_dict(data, source)


def _table(value: object, field_path: str, allowed: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ManifestError(field_path, f"expected a table, got {type(value).__name__}")
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        where = f"{field_path}." if field_path else ""
        raise ManifestError(
            f"{where}{unknown[0]}", f"unknown key(s) {unknown}; allowed: {sorted(allowed)}"
        )
    return value


def _array(value: object, field_path: str) -> list[Any]:
    if not isinstance(value, list):
        raise ManifestError(field_path, f"expected an array of tables, got {type(value).__name__}")
    return value


def _entry(cls: type[T], value: object, field_path: str, required: tuple[str, ...]) -> T:
    """Build dataclass `cls` from a table with exactly its fields (`required` ones present)."""
    t = _table(value, field_path, _keys(cls))
    for key in required:
        if key not in t:
            raise ManifestError(f"{field_path}.{key}" if field_path else key, "required")
    try:
        return cls(**t)
    except ManifestError as exc:
        raise exc.within(field_path) if field_path else exc from None


def _keys(cls: type[Any]) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls))


def _parse_manifest(d: Mapping[str, Any]) -> WorkflowManifest:
    top = dict(_table(d, "", _keys(WorkflowManifest)))
    for key in ("name", "version", "entrypoint", "weights", "inputs", "outputs"):
        if key not in top:
            raise ManifestError(key, "required")
    top["batching"] = _entry(BatchingConfig, top.get("batching", {}), "batching", ())
    top["memory"] = _entry(MemoryConfig, top.get("memory", {}), "memory", ())
    top["weights"] = _entry(FileRef, top["weights"], "weights", ("path", "sha256"))
    files = _array(top.get("files", []), "files")
    top["files"] = tuple(
        _entry(FileRef, f, f"files[{i}]", ("path", "sha256")) for i, f in enumerate(files)
    )
    for kind in ("inputs", "outputs"):
        specs = _array(top[kind], kind)
        top[kind] = tuple(
            _entry(TensorSpec, t, f"{kind}[{i}]", ("name", "dtype")) for i, t in enumerate(specs)
        )
    return WorkflowManifest(**top)


def load_manifest(package_dir: Path) -> WorkflowManifest:
    """Read and validate `<package_dir>/workflow.toml`."""
    path = Path(package_dir) / MANIFEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError("", f"cannot read manifest: {exc}", str(path)) from None
    return WorkflowManifest.from_toml(text, str(path))


def rewrite_digests(text: str, digests: Mapping[str, str]) -> str:
    """``text`` (a workflow.toml) with the sha256 of each ``[weights]`` / ``[[files]]``
    entry whose path is in ``digests`` set; comments and layout are kept, and an entry
    without a ``sha256`` line gets one after its ``path`` line."""
    blocks: list[list[str]] = [[]]
    for line in text.splitlines(keepends=True):
        if re.match(r"\s*\[", line):
            blocks.append([])
        blocks[-1].append(line)
    out: list[str] = []
    for block in blocks:
        m_header = re.match(r"\s*(\[\[?[^\]]*\]\]?)", block[0]) if block else None
        header = m_header.group(1).replace(" ", "") if m_header else ""
        path_at = next(
            (i for i, ln in enumerate(block) if re.match(r'\s*path\s*=\s*"([^"]*)"', ln)), None
        )
        if header in ("[weights]", "[[files]]") and path_at is not None:
            m = re.match(r'(\s*)path\s*=\s*"([^"]*)"', block[path_at])
            assert m is not None
            path = m.group(2)
            if path in digests:
                sha = f'"{digests[path]}"'
                if any(re.match(r"\s*sha256\s*=", ln) for ln in block):
                    block = [re.sub(r"^(\s*sha256\s*=\s*)\S+", rf"\g<1>{sha}", ln) for ln in block]
                else:
                    end = "" if block[path_at].endswith("\n") else "\n"
                    block = [
                        *block[: path_at + 1],
                        f"{end}{m.group(1)}sha256 = {sha}\n",
                        *block[path_at + 1 :],
                    ]
        out.extend(block)
    return "".join(out)
