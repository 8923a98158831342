"""Objective rules: resolve a request to a model key and a cell (pure, synchronous).

`evaluate` is step 2 of the request path: it reads an `ObjectiveConfig`
(`shardline.router.objectives`) and a `RequestContext` and returns a `Decision`
(`shardline.router.decision`): client override (if allowed) -> context rules (first match) ->
experiments (stable hash of experiment id and user id) -> canary (stable hash) -> default; the
shadow targets come back too. Nothing here reads a clock, global random state, a file or the
network: the same user and the same config get the same decision on every machine, and the simulator
runs this code.

`stable_bucket` hashes with blake2b (never ``hash()``), so buckets agree across
processes. Percents resolve to 1/100 % (10 000 buckets). An empty ``user_id`` is
allowed, but experiments, canary and shadows then hash the empty string: every
anonymous request lands in the same bucket, hence the same cell.

Imports: the standard library, `shardline.router.objectives` (the configs it reads) and
`shardline.router.decision` (what it returns).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from shardline.router.decision import DEFAULT_REASON, Decision, new_decision
from shardline.router.objectives import BUCKETS, ObjectiveConfig

_BUILTIN_ATTRS = ("country", "device", "surface")
_NO_ATTRIBUTES: Mapping[str, str] = MappingProxyType({})  # (read-only: shared)


class OverrideNotAllowed(ValueError):
    """A client asked for a model key the objective does not let it choose."""


@dataclass(frozen=True)
class RequestContext:
    """What rules match on. ``get`` reads country/device/surface, then ``attributes``."""

    user_id: str
    country: str = ""
    device: str = ""
    surface: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __init__(
        self,
        user_id: str,
        country: str = "",
        device: str = "",
        surface: str = "",
        attributes: Mapping[str, str] = _NO_ATTRIBUTES,
    ) -> None:
        # Written out: the generated frozen ``__init__`` sets each field with
        # ``object.__setattr__``, which costs several times this (the fields end the same).
        fields = self.__dict__
        fields["user_id"] = user_id
        fields["country"] = country
        fields["device"] = device
        fields["surface"] = surface
        fields["attributes"] = (
            attributes if attributes is _NO_ATTRIBUTES else MappingProxyType(dict(attributes))
        )

    def get(self, key: str) -> str | None:
        """The attribute ``key``; None when missing (an empty built-in field is missing)."""
        if key in _BUILTIN_ATTRS and (value := getattr(self, key)):
            return str(value)
        return self.attributes.get(key)


_from_bytes = int.from_bytes
_BLAKE2B_8 = hashlib.blake2b(digest_size=8)  # copied per hash: cheaper than a constructor


@functools.lru_cache(maxsize=1 << 12)
def stable_bucket(*parts: str, buckets: int = BUCKETS) -> int:
    """A bucket in ``[0, buckets)`` from blake2b of ``parts`` joined with ``"\\x1f"``.

    Pure, so recent ones are cached (the same user's next request, or a second evaluation
    of the same config, finds its buckets without hashing again)."""
    if buckets < 1:
        raise ValueError("buckets must be at least 1")
    h = _BLAKE2B_8.copy()
    h.update("\x1f".join(parts).encode("utf-8", "surrogatepass"))
    return _from_bytes(h.digest(), "big") % buckets


def _decide(config: ObjectiveConfig, user: str, model: str, cell: str, reason: str) -> Decision:
    shadows = (
        tuple(
            s.model
            for s in config.shadows
            if s.model != model and stable_bucket("shadow", config.name, s.model, user) < s.buckets
        )
        if config.shadows
        else ()
    )
    return new_decision(config.name, model, cell, shadows, reason)


def evaluate(config: ObjectiveConfig, ctx: RequestContext, override: str | None = None) -> Decision:
    """Choose the model for ``ctx``: override -> rules -> experiments -> canary -> default.

    ``override`` None or "" (the proto3 default) means no override; any other value
    raises OverrideNotAllowed unless ``allow_override`` and it is one of model_keys().
    """
    user = ctx.user_id
    if override:
        if not config.allow_override:
            raise OverrideNotAllowed(f"objective {config.name!r} does not allow overrides")
        if override not in (keys := config.model_keys()):
            known = f"{config.name!r} (one of: {', '.join(sorted(keys))})"
            raise OverrideNotAllowed(f"{override!r} is not a model of objective {known}")
        return _decide(config, user, override, "override", f"client override to {override}")
    for rule in config.rules:
        if rule.matches(ctx):
            on = ", ".join(f"{k}={ctx.get(k)}" for k, _ in rule.match)
            reason = f"context rule {rule.name!r} ({on})"
            return _decide(config, user, rule.model, f"rule:{rule.name}", reason)
    for exp in config.experiments:
        enrol = stable_bucket("enrol", exp.id, user)
        if enrol < exp.enrolled_buckets:
            bucket = stable_bucket("cell", exp.id, user)
            cell = exp.cell_for(bucket)
            reason = f"experiment {exp.id!r} (enrol bucket {enrol}, cell bucket {bucket})"
            return _decide(config, user, cell.model, f"{exp.id}:{cell.name}", reason)
    if config.canary is not None:
        bucket = stable_bucket("canary", config.name, user)
        limit = config.canary.buckets
        if bucket < limit:
            reason = f"canary (bucket {bucket} < {limit})"
            return _decide(config, user, config.canary.model, "canary", reason)
    if config.default_decision is not None:
        return config.default_decision
    return _decide(config, user, config.default, "default", DEFAULT_REASON)
