"""Placement on one node: the I/O side of the handoff state machine (``shardline.router.handoff``).

On every view or catalog change (one pass at a time) the node asks ``handoff.step`` what
to do and does it: load and warm the workflows it owns (while ``joining``: its share of
the ring it will be part of), unload those it lost once their other owners have them
warm, and report its phase. Owning is not holding: of the models it owns, a pass loads
(through ``shardline.node.cluster.residence``) the pinned ones (evicting others if it
must), the ones a node that loses them holds warm (their warmth moves with them), and
any others only while they fit in free room; the rest stay *lazy*, loaded by their first
request. The phase — ``ready`` (a joiner may turn active) or ``drained`` (a
draining node may leave). A load that fails is recorded with its reason and what to do
(``shardline status`` and ``deploy`` show it), logged, and retried with exponential backoff
at most ``max_attempts`` times; then the node gives up on it until its catalog entry
changes (a redeploy) or the node restarts. A failed load does not hold up a join.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from shardline.membership.registry import NodeState
from shardline.membership.snapshot import ClusterSnapshot
from shardline.membership.view import MembershipView
from shardline.node.cluster.catalog_ops import WORKFLOW_METHODS, footprint_of
from shardline.node.cluster.residence import Residence
from shardline.node.serving.executor import Executor
from shardline.router import handoff
from shardline.router.handoff import Phase
from shardline.router.objectives import ObjectiveConfig
from shardline.router.placement_policy import ModelNeed

log = logging.getLogger("shardline.placement")
DEFAULT_REPLICAS = handoff.DEFAULT_REPLICAS


_REPLICAS: list[tuple[Any, dict[str, int]]] = []


def replicas_of(snapshot: ClusterSnapshot) -> dict[str, int]:
    """Model key -> R from the catalog's workflow manifests (default 2). Cached for the
    catalog section it was computed from (most snapshots change only a loaded set)."""
    workflows = snapshot.workflows
    for seen, replicas in _REPLICAS:
        if seen is workflows:
            return replicas
    out = _replicas_of(snapshot)
    _REPLICAS[:] = [(workflows, out), *_REPLICAS[:3]]  # a few: nodes share a process in tests
    return out


_NEEDS: list[tuple[tuple[Any, Any], Mapping[str, ModelNeed]]] = []


def needs_of(snapshot: ClusterSnapshot) -> Mapping[str, ModelNeed]:
    """Model key -> what placement needs of it: its declared footprint (``footprint_bytes``
    of its catalog entry), R and its hot copies (``hot/<key>``). One mapping per catalog
    and hot section, so placements computed
    from it are cached (``shardline.router.handoff.ring_of``)."""
    workflows, hot = snapshot.workflows, snapshot.hot
    for seen, needs in _NEEDS:
        if seen[0] is workflows and seen[1] is hot:
            return needs
    replicas = replicas_of(snapshot)
    out = MappingProxyType(
        {
            key: ModelNeed(key, footprint_of(doc), replicas[key], hot.get(key, 0))
            for key, doc in workflows.items()
        }
    )
    _NEEDS[:] = [((workflows, hot), out), *_NEEDS[:3]]
    return out


def _replicas_of(snapshot: ClusterSnapshot) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, doc in snapshot.workflows.items():
        manifest = doc.get("manifest")
        r = manifest.get("replicas", DEFAULT_REPLICAS) if isinstance(manifest, dict) else None
        valid = isinstance(r, int) and not isinstance(r, bool) and r >= 1
        out[key] = r if valid and isinstance(r, int) else DEFAULT_REPLICAS
    return out


def desired_models(node_id: str, view: MembershipView, snapshot: ClusterSnapshot) -> set[str]:
    """The model keys ``node_id`` should hold in this view (pure)."""
    return handoff.desired(node_id, view, replicas_of(snapshot), needs_of(snapshot))


def describe_load_error(exc: BaseException) -> str:
    """The reason a load failed, never empty: an abstract method the workflow leaves out is
    named, and an exception without a message is described by its type and origin."""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    origin = frames[-1] if frames else None
    if (
        isinstance(exc, NotImplementedError)
        and origin is not None
        and origin.name in WORKFLOW_METHODS
    ):
        why = (
            "a node warms every model up with one request from example_request() "
            "before it serves it"
            if origin.name == "example_request"
            else "every request runs through it"
        )
        return (
            f"the workflow does not implement {origin.name}() (abstract in "
            f"shardline.workflows.sdk.Workflow; {why}): add it to the package's workflow class"
        )
    text = str(exc).strip()
    if text:  # builtin exceptions say little without their type ("'x'" for a KeyError)
        return f"{type(exc).__name__}: {text}" if type(exc).__module__ == "builtins" else text
    where = f" in {origin.name}() at {origin.filename}:{origin.lineno}" if origin else ""
    return f"{type(exc).__name__} with no message, raised{where}"


@dataclass
class LoadFailure:
    """A model key this node failed to load or warm: why, how often, and what is next."""

    key: str
    reason: str
    attempts: int
    max_attempts: int
    retry_at: float | None
    """Loop time of the next attempt; None once the node gave up."""
    retry_in_s: float = 0.0
    doc: str = ""
    """The catalog entry that failed (a changed entry, a redeploy, is tried afresh)."""

    @property
    def message(self) -> str:
        """The reason, the retry state, and what to do (``shardline status``, ``deploy``)."""
        if self.retry_at is None:
            state = f"gave up after {self.attempts} attempts"
        else:
            state = (
                f"attempt {self.attempts} of {self.max_attempts}, "
                f"retrying in {self.retry_in_s:.0f} s"
            )
        return (
            f"{self.reason} ({state}); fix the package and deploy it as a new version, "
            f"or remove it: shardline undeploy {self.key}"
        )


def _doc_id(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, default=str)


@dataclass
class Placement:
    executor: Executor
    node_id: str
    residence: Residence
    base_backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    max_attempts: int = 4
    """Loads of one catalog entry before giving up (1 + 2 + 4 s of backoff by default)."""
    failures: dict[str, LoadFailure] = field(default_factory=dict)
    view: MembershipView = field(default_factory=MembershipView)
    snapshot: ClusterSnapshot = field(default_factory=ClusterSnapshot)
    phase: Phase = Phase.GONE
    load_seconds: dict[str, float] = field(default_factory=dict)
    lazy: frozenset[str] = frozenset()
    """Models placed here that are not resident and load on their first request."""
    _may_evict: frozenset[str] = frozenset()
    _catalog_seen: frozenset[str] | None = None
    _pinned: tuple[ClusterSnapshot | None, frozenset[str]] = (None, frozenset())
    _dirty: asyncio.Event = field(default_factory=asyncio.Event)
    _phase_changed: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def on_view(self, view: MembershipView, snapshot: ClusterSnapshot) -> None:
        self.view, self.snapshot = view, snapshot
        self._dirty.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"placement-{self.node_id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait_phase(self, *phases: Phase) -> Phase:
        """Wait (on phase changes, no polling) until the phase is one of ``phases``."""
        while self.phase not in phases:
            event = self._phase_changed
            await event.wait()
        return self.phase

    async def _loop(self) -> None:
        while True:
            retry = min(
                (f.retry_at for f in self.failures.values() if f.retry_at is not None),
                default=None,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(retry):  # None: wait for the next change
                    await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.reconcile()
            except Exception:
                log.exception("placement pass failed")

    def _set_phase(self, phase: Phase) -> None:
        if phase is not self.phase:
            log.info("%s: placement phase %s -> %s", self.node_id, self.phase, phase)
            self.phase = phase
            event, self._phase_changed = self._phase_changed, asyncio.Event()
            event.set()

    async def reconcile(self) -> Phase:
        """Passes until nothing is left to do now; returns the phase reached."""
        while True:
            replicas = replicas_of(self.snapshot)
            s = handoff.step(
                self.node_id,
                self.view,
                replicas,
                set(self.executor.models),
                self.executor.in_flight,
                needs_of(self.snapshot),
                lazy=True,
            )
            eager, self.lazy = self._eager(s.load)
            loaded = await self._load(eager)
            for key in sorted(s.unload):
                await self.residence.unload(key)
            for key in list(self.failures):
                if key not in s.load:
                    del self.failures[key]
            phase = s.phase
            waiting = s.load - loaded - self.lazy
            if phase is Phase.JOINING and all(k in self.failures for k in waiting):
                # What failed is retried later and lazy models load on first use: neither
                # blocks the join.
                phase = Phase.READY
            if not (loaded or s.unload):
                self._set_phase(phase)
                self._settle(not (waiting - set(self.failures)))
                return phase

    def _settle(self, settled: bool) -> None:
        """Publish whether anything placed here is still to be loaded at once."""
        if self.executor.settled != settled:
            self.executor.settled = settled
            self.executor.changed()

    def pinned(self) -> frozenset[str]:
        """Model keys pinned resident: ``pinned = true`` manifests and ``warm`` objectives."""
        snapshot = self.snapshot
        if self._pinned[0] is snapshot:
            return self._pinned[1]
        keys: set[str] = set()
        for key, doc in snapshot.workflows.items():
            manifest = doc.get("manifest")
            if isinstance(manifest, dict) and manifest.get("pinned") is True:
                keys.add(key)
        for name, doc in snapshot.objectives.items():
            config = doc.get("config")
            if isinstance(config, dict) and config.get("warm") is True:
                try:
                    keys |= ObjectiveConfig.from_dict(config).pinned_keys()
                except Exception:  # an invalid objective is logged where it is applied
                    log.debug("objective %s: config not readable for pins", name)
        self._pinned = (snapshot, frozenset(keys))
        return self._pinned[1]

    def _eager(self, keys: frozenset[str]) -> tuple[list[str], frozenset[str]]:
        """Which of the models to load now, in order, and which stay lazy.

        Pinned ones first, then the ones a node that loses them holds warm (only the owner
        that gained the key takes it over: one warm copy moves, the holder then lets it go)
        and hot copies placed here (all may evict); then, while they fit in free room, the
        rest — only while this node joins (its share, warm before it serves), for models
        newly in the catalog (a deploy) and for failed loads being retried. Room freed
        later is not refilled with models nobody asked for: on a join or a drain only the
        keys placement moves are loaded or dropped."""
        catalog = frozenset(self.snapshot.workflows)
        new = catalog - self._catalog_seen if self._catalog_seen is not None else catalog
        self._catalog_seen = catalog
        if not keys:
            return [], frozenset()
        pinned = self.pinned()
        view = self.view
        needs = needs_of(self.snapshot)
        me = view.members.get(self.node_id)
        joining = me is None or me.state is NodeState.JOINING
        extra = (self.node_id,) if me is not None and me.state is NodeState.JOINING else ()
        future = handoff.ring_of(view, extra, needs)
        replicas = replicas_of(self.snapshot)
        handed: set[str] = set()
        for node_id, member in view.members.items():
            if node_id == self.node_id or member.state is NodeState.JOINING:
                continue  # (a joiner's copies are not being handed over)
            held = keys & member.models
            if not held:
                continue
            # The owners before this node lost the key: with it (a drain took it off the
            # ring) and without this joiner.
            active = member.state is NodeState.ACTIVE
            before = handoff.ring_of(view, () if active else (node_id,), needs)
            for key in held:
                r = replicas.get(key, DEFAULT_REPLICAS)
                owners = future.owners(key, r)
                if node_id in owners or any(self._warm_on(o, key) for o in owners):
                    continue
                gained = [o for o in owners if o not in before.owners(key, r)]
                receiver = gained[0] if gained else owners[0] if owners else None
                if receiver == self.node_id:
                    handed.add(key)
        for key in keys:  # a hot copy is placed here to take load now: load it now
            need = needs.get(key)
            if need is not None and need.copies:
                slots = future.owners(key, need.replicas)
                if self.node_id in slots[need.replicas :]:
                    handed.add(key)
        first = sorted(keys & pinned) + sorted(handed - pinned)
        self._may_evict = frozenset(first)
        rest = sorted(keys - pinned - handed)
        if not joining:
            rest = [k for k in rest if k in new or k in self.failures]
        eager = first + [k for k in rest if self.residence.fits_free(k)]
        return eager, frozenset(keys) - frozenset(eager)

    def _warm_on(self, node_id: str, key: str) -> bool:
        if node_id == self.node_id:
            return key in self.executor.models
        member = self.view.members.get(node_id)
        return member is not None and key in member.models

    async def _load(self, keys: list[str]) -> set[str]:
        loop = asyncio.get_running_loop()
        done: set[str] = set()
        for key in keys:
            doc = dict(self.snapshot.workflows.get(key) or {})
            failure = self.failures.get(key)
            if failure is not None and failure.doc != _doc_id(doc):
                log.info("%s: the catalog entry of %s changed; loading it afresh",
                         self.node_id, key)  # fmt: skip
                failure = None
            if failure is not None and (failure.retry_at is None or failure.retry_at > loop.time()):
                continue
            if key not in self._may_evict and not self.residence.fits_free(key):
                self.lazy |= {key}  # the free room went to an earlier one: lazy after all
                continue
            try:
                started = loop.time()
                await self.residence.load(key)
                self.load_seconds[key] = loop.time() - started
                log.info("%s: loaded and warmed %s in %.2fs", self.node_id, key,
                         self.load_seconds[key])  # fmt: skip
                self.failures.pop(key, None)
                done.add(key)
            except Exception as exc:
                attempts = failure.attempts + 1 if failure else 1
                delay = min(self.max_backoff_s, self.base_backoff_s * 2 ** (attempts - 1))
                give_up = attempts >= self.max_attempts
                self.failures[key] = LoadFailure(
                    key=key,
                    reason=describe_load_error(exc.__cause__ or exc),
                    attempts=attempts,
                    max_attempts=self.max_attempts,
                    retry_at=None if give_up else loop.time() + delay,
                    retry_in_s=delay,
                    doc=_doc_id(doc),
                )
                if give_up:
                    log.error("%s: loading %s failed: %s", self.node_id, key,
                              self.failures[key].message)  # fmt: skip
                else:
                    log.warning("%s: loading %s failed: %s", self.node_id, key,
                                self.failures[key].message)  # fmt: skip
        return done
