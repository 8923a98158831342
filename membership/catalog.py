"""The desired-state catalog in etcd: workflow manifests and objective configs with history.

Keys (under ``/shardline/<cluster>/``)::

    workflows/<name>/<version>                  manifest document (JSON object)
    objectives/<name>                           {"revision", "config", "updated_at", "author"}
    objective_history/<name>/<0000000007>       every stored revision of that document

Every write validates first (the validators are injected by the caller, so this package
knows nothing of manifests or rules; a validator that raises turns into :class:`CatalogError`
and nothing is written). An objective write is one etcd transaction that puts the current
document and its history entry together, guarded by the current key's ``mod_revision`` and
by "this history entry does not exist yet": two concurrent writers can never both get
revision n, and neither update is lost (each gets its own revision in the history). History
is append-only: a rollback stores a NEW revision whose config equals the old one, and
records which revision it restores (``"restores"``), so that a rollback with no target
walks back through the history: from a revision that restores revision k it goes to k-1,
not forth to the revision the first rollback undid.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any, NamedTuple

import aetcd
from aetcd.utils import prefix_range_end

from shardline.membership.etcd import (
    endpoint_label,
    objective_history_key,
    objective_history_prefix,
    objective_key,
    unavailable_guard,
    workflow_key,
)

Validator = Callable[[dict[str, Any]], None]

WORKFLOW = "workflow"
"""Key of the validator that checks workflow documents."""
OBJECTIVE = "objective"
"""Key of the validator that checks objective configs."""


class CatalogError(ValueError):
    """A catalog write was refused (invalid document, unknown revision, ...): nothing written."""


class CatalogConflict(CatalogError):
    """Someone else changed the objective first (``expected_revision`` no longer current)."""


class NothingToRollBack(CatalogError):
    """A rollback with no target reached the start of the objective's history."""


class ObjectiveRevision(NamedTuple):
    revision: int
    config: dict[str, Any]
    updated_at: str
    author: str
    restores: int = 0
    """A rollback: the revision whose config it made current again (0: a plain set)."""

    @property
    def position(self) -> int:
        """Where this revision stands in the history: what it restores, or itself."""
        return self.restores or self.revision

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "revision": self.revision,
            "config": self.config,
            "updated_at": self.updated_at,
            "author": self.author,
        }
        if self.restores:
            doc["restores"] = self.restores
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> ObjectiveRevision:
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
                raise ValueError("not an objective document")
            restores = doc.get("restores", 0)
            if isinstance(restores, bool) or not isinstance(restores, int) or restores < 0:
                raise ValueError(f"restores must be a revision number, not {restores!r}")
            return cls(
                int(doc["revision"]),
                doc["config"],
                str(doc["updated_at"]),
                doc["author"],
                restores,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CatalogError(f"corrupt objective document at {where}: {exc}") from exc


def _json_copy(what: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    """A deep, JSON-round-tripped copy: exactly what will be stored (and validated)."""
    if not isinstance(doc, Mapping):
        raise CatalogError(f"{what} must be a JSON object (a dict), not {type(doc).__name__}")
    try:
        copied: dict[str, Any] = json.loads(json.dumps(doc, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise CatalogError(f"{what} is not JSON-serializable: {exc}") from exc
    return copied


class Catalog:
    """Reads and validated writes of workflows and objectives for one cluster."""

    def __init__(
        self,
        client: aetcd.Client,
        cluster: str,
        validators: Mapping[str, Validator] | None = None,
        *,
        timeout_s: float = 5.0,
        max_attempts: int = 16,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        unknown = set(validators or {}) - {WORKFLOW, OBJECTIVE}
        if unknown:
            raise ValueError(
                f"unknown validator kinds {sorted(unknown)}; use {WORKFLOW!r}, {OBJECTIVE!r}"
            )
        if not timeout_s > 0 or max_attempts < 1:
            raise ValueError("Catalog: need timeout_s > 0 and max_attempts >= 1")
        self._client = client
        self._cluster = cluster
        objective_key(cluster, "probe")  # validates the cluster name now, not on first write
        self._validators = dict(validators or {})
        self._timeout_s = timeout_s
        self._max_attempts = max_attempts
        self._clock = clock or (lambda: datetime.now(UTC))
        self._address = endpoint_label(client)

    def _guard(self) -> AbstractAsyncContextManager[None]:
        return unavailable_guard(self._address, self._timeout_s)

    def _validate(self, kind: str, what: str, doc: Mapping[str, Any]) -> dict[str, Any]:
        copied = _json_copy(what, doc)
        validator = self._validators.get(kind)
        if validator is not None:
            try:
                validator(copy.deepcopy(copied))
            except Exception as exc:
                raise CatalogError(f"{what} is invalid: {exc}") from exc
        return copied

    # ------------------------------------------------------------------ workflows

    async def put_workflow(self, name: str, version: str, doc: Mapping[str, Any]) -> int:
        """Validate and store a workflow manifest document; returns the etcd revision."""
        key = self._key(workflow_key, name, version)
        stored = self._validate(WORKFLOW, f"workflow {name}@{version}", doc)
        async with self._guard():
            result = await self._client.put(key, json.dumps(stored, sort_keys=True).encode())
        return int(result.header.revision)

    async def get_workflow(self, name: str, version: str) -> dict[str, Any] | None:
        key = self._key(workflow_key, name, version)
        async with self._guard():
            got = await self._client.get(key)
        if got is None:
            return None
        doc: dict[str, Any] = json.loads(got.value)
        return doc

    async def delete_workflow(self, name: str, version: str) -> bool:
        """Remove a workflow version; False if it was not there."""
        key = self._key(workflow_key, name, version)
        async with self._guard():
            deleted = await self._client.delete(key)
        return deleted is not None and bool(deleted.deleted)

    # ------------------------------------------------------------------ objectives

    async def get_objective(self, name: str) -> ObjectiveRevision | None:
        async with self._guard():
            current, _ = await self._current(name)
        return current

    async def objective_history(self, name: str) -> list[ObjectiveRevision]:
        """Every stored revision of the objective, oldest first."""
        prefix = self._key(objective_history_prefix, name)
        async with self._guard():
            result = await self._client.get_prefix(prefix, sort_order="ascend", sort_target="key")
        return [ObjectiveRevision.from_json(bytes(kv.value), kv.key.decode()) for kv in result.kvs]

    async def set_objective(
        self,
        name: str,
        config: Mapping[str, Any],
        author: str = "",
        *,
        expected_revision: int | None = None,
    ) -> int:
        """Validate and store a new revision of the objective's config; returns its number.

        With ``expected_revision`` (0: "must not exist"), refuse with CatalogConflict if the
        current revision is another one; without it, a concurrent writer just makes this one
        retry on top of theirs (both land in the history, this one current).
        """
        stored = self._validate(OBJECTIVE, f"objective {name!r} config", config)
        async with self._guard():
            return await self._store(name, stored, author, expected_revision)

    async def rollback_objective(
        self,
        name: str,
        to_revision: int | None = None,
        author: str = "",
        *,
        check: Callable[[dict[str, Any]], None] | None = None,
    ) -> int:
        """Make an earlier revision's config current again, as a NEW revision; returns it.

        ``to_revision`` None walks back one step through the history: to the revision before
        the one the current revision stands for (itself, or for a rollback the revision it
        restored), so repeated rollbacks keep going back (NothingToRollBack at the start).
        The old config is validated again (what it refers to may be gone), then passed to
        ``check`` (the caller's own refusal, e.g. "its models are not deployed"), before
        anything is written. If the objective changed while the rollback was being prepared,
        it fails with CatalogConflict instead of rolling back something the caller did not see.
        """
        async with self._guard():
            current, _ = await self._current(name)
            current_revision = current.revision if current is not None else 0
            if to_revision is None:
                if current is None:
                    raise NothingToRollBack(f"objective {name!r} has no current revision")
                to_revision = current.position - 1
                if to_revision < 1:
                    where = (
                        f"revision {current_revision} restores revision {current.restores}"
                        if current.restores
                        else f"revision {current_revision} is its first"
                    )
                    raise NothingToRollBack(
                        f"objective {name!r} has nothing earlier to roll back to ({where}); "
                        "set the config you want with `shardline objective set`"
                    )
            if to_revision < 1 or (current is not None and to_revision >= current_revision):
                raise CatalogError(
                    f"objective {name!r}: can only roll back to an earlier revision "
                    f"(1..{current_revision - 1}), not {to_revision}"
                )
            hist_key = self._key(objective_history_key, name, to_revision)
            got = await self._client.get(hist_key)
            if got is None:
                raise CatalogError(f"objective {name!r} has no stored revision {to_revision}")
            old = ObjectiveRevision.from_json(bytes(got.value), hist_key.decode())
            stored = self._validate(
                OBJECTIVE, f"objective {name!r} revision {to_revision} (rollback)", old.config
            )
            if check is not None:
                check(copy.deepcopy(stored))
            return await self._store(name, stored, author, current_revision, restores=to_revision)

    async def delete_objective(self, name: str, *, purge_history: bool = False) -> bool:
        """Remove the objective's current config (history kept unless ``purge_history``, so a
        later write continues the numbering and a rollback can restore it). False if absent."""
        key = self._key(objective_key, name)
        tx = self._client.transactions
        ops = [tx.delete(key)]
        if purge_history:
            prefix = self._key(objective_history_prefix, name)
            ops.append(tx.delete(prefix, range_end=prefix_range_end(prefix)))
        async with self._guard():
            _, responses = await self._client.transaction(compare=[], success=ops, failure=[])
        return bool(responses and responses[0].response_delete_range.deleted)

    # ------------------------------------------------------------------ internals

    def _key(self, make: Callable[..., bytes], *parts: Any) -> bytes:
        try:
            return make(self._cluster, *parts)
        except ValueError as exc:
            raise CatalogError(str(exc)) from exc

    async def _current(self, name: str) -> tuple[ObjectiveRevision | None, int]:
        """(current document or None, its mod_revision or 0)."""
        key = self._key(objective_key, name)
        got = await self._client.get(key)
        if got is None:
            return None, 0
        return ObjectiveRevision.from_json(bytes(got.value), key.decode()), int(got.mod_revision)

    async def _last_history_revision(self, name: str) -> int:
        prefix = self._key(objective_history_prefix, name)
        result = await self._client.get_prefix(
            prefix, sort_order="descend", sort_target="key", keys_only=True
        )
        for kv in result.kvs:
            tail = bytes(kv.key)[len(prefix) :]
            if tail.isdigit():
                return int(tail)
        return 0

    async def _store(
        self,
        name: str,
        config: dict[str, Any],
        author: str,
        expected_revision: int | None,
        *,
        restores: int = 0,
    ) -> int:
        key = self._key(objective_key, name)
        tx = self._client.transactions
        for _ in range(self._max_attempts):
            current, mod_revision = await self._current(name)
            current_revision = current.revision if current is not None else 0
            if expected_revision is not None and current_revision != expected_revision:
                raise CatalogConflict(
                    f"objective {name!r} is at revision {current_revision}, not "
                    f"{expected_revision}: someone changed it first; re-read and retry"
                )
            # After a delete the history remains, so numbering continues after its last entry.
            last = current_revision if current else await self._last_history_revision(name)
            doc = ObjectiveRevision(
                last + 1, config, self._clock().isoformat(), str(author), restores
            )
            hist_key = self._key(objective_history_key, name, doc.revision)
            value = doc.to_json()
            ok, _ = await self._client.transaction(
                compare=[tx.mod(key) == mod_revision, tx.version(hist_key) == 0],
                success=[tx.put(key, value), tx.put(hist_key, value)],
                failure=[],
            )
            if ok:
                return doc.revision
        raise CatalogConflict(
            f"objective {name!r}: gave up after {self._max_attempts} concurrent updates"
        )


__all__ = [
    "OBJECTIVE",
    "WORKFLOW",
    "Catalog",
    "CatalogConflict",
    "CatalogError",
    "NothingToRollBack",
    "ObjectiveRevision",
    "Validator",
]
