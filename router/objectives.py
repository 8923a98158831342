"""Objective configs: what an objective may say, checked when it is read (pure, synchronous).

An objective config (TOML or JSON; stored in etcd under ``objectives/<name>``) binds a
business objective to model versions ``name@version``: a default, context rules,
experiments (A/B tests split into cells), a canary, shadows, admission limits and a
prediction-log rate. `ObjectiveConfig.from_dict` / `from_toml` and the two file loaders
(the only I/O here) turn a bad config into a `ConfigError` naming the field, e.g.
``experiments[0].percent``; `to_dict` gives back plain data that ``from_dict`` reads.
How a config picks the model for a request is `shardline.router.rules.evaluate`.

Percents resolve to 1/100 % (`BUCKETS` = 10 000 buckets): experiments, the canary and the
shadows keep their shares as bucket counts, and a config without shadows keeps the
`Decision` every default-path user gets, both ready for `shardline.router.rules.evaluate`.

Imports: the standard library and `shardline.router.decision`; never `shardline.router.rules` (which
reads these configs).
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, field, fields
from itertools import accumulate
from pathlib import Path
from typing import Any, Protocol, TypeVar

from shardline.router.decision import DEFAULT_REASON, Decision, new_decision

MODEL_KEY_RE = re.compile(r"\A(?P<name>[a-z0-9_]+)@(?P<version>[A-Za-z0-9._-]+)\Z")
OBJECTIVE_NAME_RE = re.compile(r"\A[a-z0-9_]+\Z")
_LABEL_RE = re.compile(r"\A[A-Za-z0-9_.-]+\Z")  # rule names, experiment ids, cells, attrs
BUCKETS = 10_000
_T = TypeVar("_T")


class ConfigError(ValueError):
    """A bad objective config; ``path`` names the field, e.g. ``experiments[0].percent``."""

    def __init__(self, path: str, problem: str = "", source: str = "") -> None:
        self.path, self.problem, self.source = path, problem, source
        where = ": ".join(p for p in (source, path) if p)
        super().__init__(f"{where}: {problem}" if where and problem else where or problem)

    def within(self, prefix: str) -> ConfigError:
        """The same error, seen from the enclosing object at ``prefix``."""
        sep = "" if not self.path or self.path.startswith("[") else "."
        return ConfigError(prefix + sep + self.path, self.problem, self.source)


@contextmanager
def _at(prefix: str) -> Iterator[None]:
    try:
        yield
    except ConfigError as e:
        raise e.within(prefix) from None


def _label(value: object, path: str, what: str) -> str:
    if not isinstance(value, str) or not _LABEL_RE.match(value):
        raise ConfigError(path, f"{what} {value!r} must match [A-Za-z0-9_.-]+")
    return value


def _model(value: object, path: str = "model") -> str:
    with _at(path):
        return str(ModelKey.parse(value))  # type: ignore[arg-type]


def _percent(value: object, path: str = "percent") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(path, f"must be a number, got {value!r}")
    if not math.isfinite(value) or not 0.0 <= value <= 100.0:
        raise ConfigError(path, f"must be between 0 and 100, got {value!r}")
    return float(value)


def _threshold(percent: float) -> int:
    """Buckets (out of 10 000) that ``percent`` covers."""
    return round(percent * (BUCKETS / 100))


@dataclass(frozen=True)
class ModelKey:
    """A model version, ``name@version``."""

    name: str
    version: str

    def __post_init__(self) -> None:
        if not all(isinstance(p, str) for p in (self.name, self.version)) or not (
            MODEL_KEY_RE.match(f"{self.name}@{self.version}")
        ):
            raise ConfigError("", f"bad model key parts {self.name!r}, {self.version!r}")

    @classmethod
    def parse(cls, s: str) -> ModelKey:
        m = MODEL_KEY_RE.match(s) if isinstance(s, str) else None
        if m is None:
            problem = "name@version, name [a-z0-9_]+, version [A-Za-z0-9._-]+"
            raise ConfigError("", f"{s!r} is not a model key (expected {problem})")
        return cls(m["name"], m["version"])

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


class Attributes(Protocol):
    """What a context rule reads from a request (`shardline.router.rules.RequestContext` has it)."""

    def get(self, key: str) -> str | None:
        """The attribute ``key``; None when missing."""
        ...


def _fields(cls: Any) -> tuple[tuple[str, bool], ...]:
    """(name, required) for each init field of a dataclass."""
    return tuple(
        (f.name, f.default is MISSING and f.default_factory is MISSING)
        for f in fields(cls)
        if f.init
    )


def _table(value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError("", f"must be a table/object, got {type(value).__name__}")
    return value


def _build(cls: Callable[..., _T], raw: object, **parsed: Any) -> _T:
    """``cls(**raw)`` after rejecting unknown keys and reporting missing required ones."""
    d, spec = _table(raw), _fields(cls)
    unknown = sorted(str(k) for k in d if k not in dict(spec))
    if unknown:
        listed = ", ".join(map(repr, unknown))
        allowed = ", ".join(name for name, _ in spec)
        raise ConfigError(unknown[0], f"unknown key(s) {listed} (allowed: {allowed})")
    for name, required in spec:
        if required and name not in d:
            raise ConfigError(name, "required field is missing")
    return cls(**{**d, **parsed})


def _items(d: Mapping[str, Any], key: str, parse: Callable[[object], _T]) -> tuple[_T, ...]:
    raw = d.get(key, [])
    if not isinstance(raw, list | tuple):
        raise ConfigError(key, "must be a list (array of tables)")
    out = []
    for i, item in enumerate(raw):
        with _at(f"{key}[{i}]"):
            out.append(parse(item))
    return tuple(out)


def _unique(items: tuple[Any, ...], path: str, attr: str, what: str) -> None:
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        k = getattr(item, attr)
        if k in seen:
            also = f"also {path}[{seen[k]}]"
            raise ConfigError(f"{path}[{i}].{attr}", f"duplicate {what} {k!r} ({also})")
        seen[k] = i


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value.to_dict() if isinstance(value, _Plain) else value


class _Plain:
    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON- and TOML-shaped: no None) that ``from_dict`` reads back."""
        items = ((n, getattr(self, n)) for n, _ in _fields(self))
        return {n: _plain(v) for n, v in items if v is not None}


@dataclass(frozen=True)
class ContextRule(_Plain):
    """Sends requests whose context matches every ``match`` entry (any-of values) to ``model``.

    ``match`` may also be given as a mapping whose values are a string or a list of them.
    """

    name: str
    model: str
    match: tuple[tuple[str, tuple[str, ...]], ...]

    def __post_init__(self) -> None:
        _label(self.name, "name", "rule name")
        _model(self.model)
        with _at("match"):
            raw = _table(self.match).items() if not isinstance(self.match, tuple) else self.match
        match = tuple(
            (k, (v,) if isinstance(v, str) else tuple(v) if isinstance(v, list | tuple) else (v,))
            for k, v in raw
        )
        if not match:
            raise ConfigError("match", "must list at least one attribute")
        for i, (key, values) in enumerate(match):
            _label(key, "match", "attribute")
            if key in (k for k, _ in match[:i]):
                raise ConfigError(f"match.{key}", "listed twice")
            if not values or not all(isinstance(v, str) and v for v in values):
                raise ConfigError(f"match.{key}", "must be a non-empty string or list of them")
        object.__setattr__(self, "match", match)

    def matches(self, ctx: Attributes) -> bool:
        for key, values in self.match:  # (a loop: cheaper than all() over a generator)
            if ctx.get(key) not in values:
                break
        else:
            return True
        return False

    def to_dict(self) -> dict[str, Any]:
        match = {k: vs[0] if len(vs) == 1 else list(vs) for k, vs in self.match}
        return {"name": self.name, "model": self.model, "match": match}


@dataclass(frozen=True)
class ExperimentCell(_Plain):
    name: str
    model: str
    percent: float

    def __post_init__(self) -> None:
        _label(self.name, "name", "cell name")
        _model(self.model)
        object.__setattr__(self, "percent", _percent(self.percent))


@dataclass(frozen=True)
class Experiment(_Plain):
    """An A/B test: ``percent`` of users enrol; enrolled users split over ``cells``."""

    id: str
    cells: tuple[ExperimentCell, ...]
    percent: float = 100.0
    _bounds: tuple[int, ...] = field(init=False, repr=False, compare=False, hash=False)
    # Derived, for shardline.router.rules: the buckets (out of BUCKETS) that enrol.
    enrolled_buckets: int = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        _label(self.id, "id", "experiment id")
        object.__setattr__(self, "percent", _percent(self.percent))
        cells = tuple(self.cells)
        if not cells:
            raise ConfigError("cells", "must list at least one cell")
        _unique(cells, "cells", "name", "cell name")
        total = sum(c.percent for c in cells)
        if abs(total - 100.0) > 1e-6:
            raise ConfigError("cells", f"percents must add to 100, they add to {total:g}")
        bounds = [min(_threshold(cum), BUCKETS) for cum in accumulate(c.percent for c in cells)]
        bounds[-1] = BUCKETS  # float sums may fall a hair short of 100
        object.__setattr__(self, "cells", cells)
        object.__setattr__(self, "_bounds", tuple(bounds))
        object.__setattr__(self, "enrolled_buckets", _threshold(self.percent))

    def cell_for(self, bucket: int) -> ExperimentCell:
        """The cell owning ``bucket`` (0..9999) over the cumulative cell percents."""
        for cell, bound in zip(self.cells, self._bounds, strict=True):
            if bucket < bound:
                return cell
        return self.cells[-1]


@dataclass(frozen=True)
class _Split(_Plain):
    model: str
    percent: float
    # Derived, for shardline.router.rules: the buckets (out of BUCKETS) that ``percent`` covers.
    buckets: int = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        _model(self.model)
        object.__setattr__(self, "percent", _percent(self.percent))
        object.__setattr__(self, "buckets", _threshold(self.percent))


@dataclass(frozen=True)
class Canary(_Split):
    """Sends ``percent`` of the users no rule or experiment took to ``model``."""


@dataclass(frozen=True)
class ShadowTarget(_Split):
    """A model that also gets a copy of ``percent`` of users' requests; never answers."""

    percent: float = 100.0


@dataclass(frozen=True)
class Limits(_Plain):
    """Cluster-wide admission limits of an objective; each node enforces its share
    (divided across the active nodes). A surge beyond them is shed for this objective only."""

    max_concurrency: int | None = None
    rate_per_s: float | None = None
    burst: float | None = None

    def __post_init__(self) -> None:
        c = self.max_concurrency
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 1):
            raise ConfigError("max_concurrency", f"must be an integer >= 1, got {c!r}")
        for name in ("rate_per_s", "burst"):
            v = getattr(self, name)
            if v is not None and (
                isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)
                or v <= 0
            ):  # fmt: skip
                raise ConfigError(name, f"must be a number > 0, got {v!r}")
            if v is not None:
                object.__setattr__(self, name, float(v))
        if self.burst is not None and self.rate_per_s is None:
            raise ConfigError("burst", "needs rate_per_s")


def _experiment(raw: object) -> Experiment:
    cells = _items(_table(raw), "cells", lambda c: _build(ExperimentCell, c))
    return _build(Experiment, raw, cells=cells)


@dataclass(frozen=True)
class ObjectiveConfig(_Plain):
    """One objective's routing: default model, rules, experiments, canary and shadows."""

    name: str
    default: str
    description: str = ""
    allow_override: bool = False
    rules: tuple[ContextRule, ...] = ()
    experiments: tuple[Experiment, ...] = ()
    canary: Canary | None = None
    shadows: tuple[ShadowTarget, ...] = ()
    limits: Limits | None = None
    prediction_log_rate: float | None = None  # share of requests logged (node default if unset)
    warm: bool = False
    """Pin the models it answers with (default, rules, cells, canary; not shadows) resident on
    all their owners: never loaded lazily, never evicted (a high-traffic objective)."""
    _keys: frozenset[str] = field(init=False, repr=False, compare=False, hash=False)
    # The decision for every user that falls through to the default when there are no
    # shadows (nothing in it then depends on the user): built once, shared (it is frozen).
    default_decision: Decision | None = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not OBJECTIVE_NAME_RE.match(self.name):
            raise ConfigError("name", f"objective name {self.name!r} must match [a-z0-9_]+")
        _model(self.default, "default")
        if not isinstance(self.description, str):
            raise ConfigError("description", "must be a string")
        if not isinstance(self.allow_override, bool):
            raise ConfigError("allow_override", "must be true or false")
        if not isinstance(self.warm, bool):
            raise ConfigError("warm", "must be true or false")
        rate = self.prediction_log_rate
        if rate is not None:
            if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
                raise ConfigError("prediction_log_rate", f"must be between 0 and 1, got {rate!r}")
            object.__setattr__(self, "prediction_log_rate", float(rate))
        for attr in ("rules", "experiments", "shadows"):
            object.__setattr__(self, attr, tuple(getattr(self, attr)))
        _unique(self.rules, "rules", "name", "rule name")
        _unique(self.experiments, "experiments", "id", "experiment id")
        _unique(self.shadows, "shadows", "model", "shadow model")
        keys = {self.default, *(r.model for r in self.rules), *(s.model for s in self.shadows)}
        keys.update(c.model for e in self.experiments for c in e.cells)
        if self.canary is not None:
            keys.add(self.canary.model)
        object.__setattr__(self, "_keys", frozenset(keys))
        default = None
        if not self.shadows:
            default = new_decision(self.name, self.default, "default", (), DEFAULT_REASON)
        object.__setattr__(self, "default_decision", default)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ObjectiveConfig:
        d = _table(d)
        canary = None
        if "canary" in d:
            with _at("canary"):
                canary = _build(Canary, d["canary"])
        limits = None
        if "limits" in d:
            with _at("limits"):
                limits = _build(Limits, d["limits"])
        rules = _items(d, "rules", lambda r: _build(ContextRule, r))
        experiments = _items(d, "experiments", _experiment)
        shadows = _items(d, "shadows", lambda s: _build(ShadowTarget, s))
        return _build(
            cls, d, rules=rules, experiments=experiments, canary=canary, shadows=shadows,
            limits=limits,
        )  # fmt: skip

    @classmethod
    def from_toml(cls, text: str) -> ObjectiveConfig:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError("", f"invalid TOML: {e}") from e
        return cls.from_dict(data)

    def model_keys(self) -> frozenset[str]:
        """Every model key referenced: default, rules, cells, canary and shadows."""
        return self._keys

    def pinned_keys(self) -> frozenset[str]:
        """The model keys a ``warm`` objective pins (its answers' models, not shadows)."""
        if not self.warm:
            return frozenset()
        return self._keys - {s.model for s in self.shadows}


def load_objective_file(path: Path) -> ObjectiveConfig:
    """Load one ``.toml`` or ``.json`` objective config; a ConfigError names the file."""
    path, suffix = Path(path), Path(path).suffix.lower()
    try:
        if suffix not in (".toml", ".json"):
            raise ConfigError("", f"unsupported file type {suffix!r} (expected .toml or .json)")
        text = path.read_text(encoding="utf-8")
        if suffix == ".toml":
            return ObjectiveConfig.from_toml(text)
        try:
            return ObjectiveConfig.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise ConfigError("", f"invalid JSON: {e}") from e
    except ConfigError as e:
        raise ConfigError(e.path, e.problem, source=str(path)) from None


def load_objectives_dir(path: Path) -> dict[str, ObjectiveConfig]:
    """Load every ``*.toml``/``*.json`` in ``path`` (not recursive), keyed by objective name."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError("", "not a directory", source=str(path))
    found: dict[str, ObjectiveConfig] = {}
    files: dict[str, Path] = {}
    for file in sorted(p for p in path.iterdir() if p.suffix.lower() in (".toml", ".json")):
        config = load_objective_file(file)
        if config.name in found:
            problem = f"objective {config.name!r} is also defined in {files[config.name]}"
            raise ConfigError("name", problem, source=str(file))
        found[config.name], files[config.name] = config, file
    return found
