"""Placement on one node: load the workflows this node owns, unload the ones it no longer owns.

Reconciliation runs on every view or catalog change, one pass at a time. What this node
should hold comes from the ring (``node.routing.ring_of``): while the node is
``joining`` it computes the ring it *will* be part of, so it loads and warms its share
before it turns ``active`` (make before break). A model it no longer owns is unloaded
only once every current owner reports it warm, then its queued requests finish first.
A load that fails is recorded (shown by ``shardline status``) and retried with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from membership.registry import NodeState
from membership.snapshot import ClusterSnapshot
from membership.view import MembershipView
from node.routing import DEFAULT_REPLICAS, replicas_of, ring_of
from node.runtime import NodeRuntime

log = logging.getLogger("shardline.placement")


def artifact_path(doc: dict[str, object] | object) -> Path:
    """The local directory of a workflow document's ``artifact_uri`` (file:// or a path)."""
    uri = doc.get("artifact_uri") if isinstance(doc, dict) else None
    if not isinstance(uri, str) or not uri:
        raise ValueError("workflow document has no artifact_uri")
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path if parsed.scheme else uri))
    raise ValueError(f"unsupported artifact store {parsed.scheme!r} in {uri!r}")


def desired_models(node_id: str, view: MembershipView, snapshot: ClusterSnapshot) -> set[str]:
    """The model keys ``node_id`` should hold in this view (pure)."""
    me = view.members.get(node_id)
    if me is None or me.state is NodeState.DRAINING:
        return set()
    extra = (node_id,) if me.state is NodeState.JOINING else ()
    ring = ring_of(view, extra)
    replicas = replicas_of(snapshot)
    return {
        key
        for key in snapshot.workflows
        if node_id in ring.owners(key, replicas.get(key, DEFAULT_REPLICAS))
    }


@dataclass
class LoadFailure:
    message: str
    attempts: int = 1
    retry_at: float = 0.0


@dataclass
class Placement:
    runtime: NodeRuntime
    node_id: str
    base_backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    failures: dict[str, LoadFailure] = field(default_factory=dict)
    view: MembershipView = field(default_factory=MembershipView)
    snapshot: ClusterSnapshot = field(default_factory=ClusterSnapshot)
    _dirty: asyncio.Event = field(default_factory=asyncio.Event)
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

    async def _loop(self) -> None:
        while True:
            retry = min((f.retry_at for f in self.failures.values()), default=None)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(retry):  # None: no retry pending, wait for a change
                    await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.reconcile()
            except Exception:
                log.exception("placement pass failed")

    async def reconcile(self) -> None:
        """One pass: load what is missing (warm), unload what moved away once covered."""
        view, snapshot = self.view, self.snapshot
        desired = desired_models(self.node_id, view, snapshot)
        loop = asyncio.get_running_loop()
        for key in sorted(desired - set(self.runtime.models)):
            failure = self.failures.get(key)
            if failure is not None and failure.retry_at > loop.time():
                continue
            doc = snapshot.workflows.get(key)
            try:
                path = artifact_path(dict(doc) if doc is not None else None)
                started = loop.time()
                await self.runtime.load_workflow(path, expect_key=key, warm=True)
                log.info("%s: loaded and warmed %s in %.2fs", self.node_id, key,
                         loop.time() - started)  # fmt: skip
                self.failures.pop(key, None)
            except Exception as exc:
                attempts = failure.attempts + 1 if failure else 1
                delay = min(self.max_backoff_s, self.base_backoff_s * 2 ** (attempts - 1))
                self.failures[key] = LoadFailure(str(exc), attempts, loop.time() + delay)
                log.warning("%s: loading %s failed (attempt %d, retry in %.0fs): %s",
                            self.node_id, key, attempts, delay, exc)  # fmt: skip
        for key in sorted(set(self.runtime.models) - desired):
            if key not in snapshot.workflows or self._covered(key):
                await self.runtime.unload_workflow(key)
        for key in list(self.failures):
            if key not in desired:
                del self.failures[key]

    def _covered(self, key: str) -> bool:
        """Every other current owner of ``key`` reports it warm (safe to let go)."""
        ring = ring_of(self.view)
        owners = ring.owners(key, replicas_of(self.snapshot).get(key, DEFAULT_REPLICAS))
        others = [o for o in owners if o != self.node_id]
        return bool(others) and all(
            o in self.view.members and key in self.view.members[o].models for o in others
        )
