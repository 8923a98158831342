"""Which of the models placed on this node are resident: lazy loads and an LRU under a budget.

A node owns (by placement) more models than it may hold in memory. ``Residence`` keeps the
resident ones in an LRU (``shardline.router.residency.Residency``) under the node's memory
budget (``--memory-budget``) and model count (``--max-resident-models``):

- ``ensure(key)`` is the request path's cold start: a request for a model placed here but
  not resident waits for its load, bounded by its deadline; concurrent requests share one
  load (a request that gives up does not cancel it: the next one finds the model warm);
- ``load(key)`` evicts the least recently used models first when room is needed — never a
  pinned one (``pinned = true`` in its manifest, or routed to by an objective with
  ``warm = true``), never one with requests in flight or loading — and refuses with the
  numbers (``NoRoom``) when even that cannot make room;
- placement (``shardline.node.cluster.placement``) calls ``load`` for the models it wants
  warm (pinned ones, ones a leaving node holds warm, and any while there is free room) and
  ``unload`` for the ones this node no longer owns.

On a node with GPUs each device has a budget of its own (``--device-memory-budget``,
default 90 % of its memory) and an LRU of its own: a model that runs on CUDA (manifest
``device`` ``auto`` or ``cuda``) needs its ``[memory] device_bytes`` (else its host
footprint) on one device; ``router.residency.choose_device`` picks the device where it fits
without evicting, the emptiest, and evicts the least recently used models of one device
only when every device is full. A model is resident on the host and on its device at once:
evicting or unloading it frees both.

Every load, eviction and unload changes the executor's loaded set, which the node
publishes (gossip summary, etcd record) and counts in metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Set
from pathlib import Path

from shardline.node.cluster.catalog_ops import footprint_of
from shardline.node.sdk.errors import DeadlineExceeded, Unavailable
from shardline.node.serving.executor import Executor
from shardline.router.residency import NoRoom, Plan, Residency, choose_device

log = logging.getLogger("shardline.residence")


class Residence:
    """The resident models of one node (see the module docstring)."""

    def __init__(
        self,
        executor: Executor,
        budget_bytes: int,
        max_models: int,
        *,
        path_of: Callable[[str], Path],
        doc_of: Callable[[str], Mapping[str, object] | None],
        pinned: Callable[[], Set[str]],
        device_budgets: Mapping[str, int] | None = None,
    ) -> None:
        self.executor = executor
        self.lru = Residency(budget_bytes, max_models=max_models)
        self.devices = {
            name: Residency(budget, max_models=max_models)
            for name, budget in (device_budgets or {}).items()
        }
        """GPU name (``cuda:0``...) -> the models resident there, under its own budget."""
        self.device_of: dict[str, str] = {}
        """Resident key -> the GPU it runs on (models on the CPU are not in it)."""
        self._loading_on: dict[str, tuple[str, int]] = {}  # key -> (GPU, bytes) while loading
        self._unloading: dict[str, asyncio.Future[None]] = {}  # evictions still unloading
        self._path_of = path_of
        self._doc_of = doc_of
        self._pinned = pinned
        self._loads: dict[str, asyncio.Task[None]] = {}
        self.failed: dict[str, tuple[float, str]] = {}
        """Key -> (until when, why): a load that failed is not retried for a request before
        then (placement retries it with its own backoff); requests fail fast with the reason."""
        self.retry_after_s = 5.0
        self.metrics = executor.metrics
        self.metrics.memory_budget_bytes.set(budget_bytes)
        for name, lru in self.devices.items():
            self.metrics.device_budget_bytes.labels(name).set(lru.budget_bytes)

    @property
    def budget_bytes(self) -> int:
        return self.lru.budget_bytes

    def declared_bytes(self, key: str) -> int:
        """What a load of ``key`` is expected to take (its catalog entry's footprint)."""
        doc = self._doc_of(key)
        return footprint_of(doc) if doc is not None else 0

    def device_bytes(self, key: str) -> int | None:
        """The device memory a load of ``key`` needs, or None when it runs on the CPU here:
        this node has no GPU, or the manifest pins ``device = "cpu"``."""
        if not self.devices:
            return None
        doc = self._doc_of(key)
        manifest = doc.get("manifest") if doc is not None else None
        if not isinstance(manifest, Mapping):
            manifest = {}
        if manifest.get("device", "auto") == "cpu":
            return None
        memory = manifest.get("memory")
        declared = memory.get("device_bytes", 0) if isinstance(memory, Mapping) else 0
        if isinstance(declared, int) and not isinstance(declared, bool) and declared > 0:
            return declared
        return self.declared_bytes(key)

    def touch(self, key: str) -> None:
        now = time.monotonic()
        self.lru.touch(key, now)
        device = self.device_of.get(key)
        if device is not None:
            self.devices[device].touch(key, now)

    def fits_free(self, key: str) -> bool:
        """Would ``key`` fit without evicting anything?"""
        try:
            plan = self.plan(key)
        except NoRoom:
            return False
        return not plan.evict

    def plan(self, key: str) -> Plan:
        """What to evict so ``key`` fits: host memory, and the device it would load on."""
        return self._plan(key)[0]

    def _plan(self, key: str) -> tuple[Plan, str | None]:
        """``plan(key)`` and the GPU it would load on (None: it runs on the CPU); raises
        NoRoom when the host or every GPU cannot make room."""
        loading = {k: self.declared_bytes(k) for k in self._loads if k != key}
        pinned, busy = self._pinned(), set(self.executor.busy)
        plan = self.lru.plan(
            key, self.declared_bytes(key), pinned=pinned, busy=busy, loading=loading
        )
        size = self.device_bytes(key)
        if size is None:
            return plan, None
        on: dict[str, dict[str, int]] = {}
        for k, (gpu, b) in self._loading_on.items():
            if k != key:
                on.setdefault(gpu, {})[k] = b
        device, there = choose_device(key, size, self.devices, pinned=pinned, busy=busy, loading=on)
        extra = tuple(k for k in there.evict if k not in plan.evict)
        return Plan(plan.evict + extra, plan.bytes_after), device

    def loading(self, key: str) -> bool:
        return key in self._loads

    async def ensure(self, key: str, timeout_s: float) -> None:
        """Make ``key`` resident for a request (which waits at most ``timeout_s``)."""
        if key in self.executor.models:
            self.touch(key)
            return
        failed = self.failed.get(key)
        if failed is not None and time.monotonic() < failed[0]:
            raise Unavailable(failed[1])
        started = time.perf_counter()
        outcome = "ok"
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self._load_task(key))
        except TimeoutError:
            outcome = "deadline"
            raise DeadlineExceeded(
                f"{key} is loading on {self.executor.config.node_id} (a cold start) and did "
                f"not finish within the {timeout_s * 1000:.0f} ms left"
            ) from None
        except NoRoom as exc:
            outcome = "no_room"
            node = self.executor.config.node_id
            raise Unavailable(f"{key} cannot be loaded on {node}: {exc}") from None
        except Unavailable:
            outcome = "error"
            raise
        finally:
            self.metrics.cold_loads.labels(outcome).inc()
            self.metrics.cold_wait_seconds.labels(outcome).observe(time.perf_counter() - started)
        self.touch(key)

    async def load(self, key: str) -> None:
        """Load ``key`` (evicting the least recently used first if needed); NoRoom or the
        load's error propagate."""
        if key not in self.executor.models:
            await self._load_task(key)

    def _load_task(self, key: str) -> asyncio.Task[None]:
        task = self._loads.get(key)
        if task is None:
            task = asyncio.create_task(self._load(key), name=f"load {key}")
            self._loads[key] = task
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # never unretrieved
        return task

    async def _load(self, key: str) -> None:
        executor = self.executor
        try:
            plan, device = self._plan(key)  # raises NoRoom with the numbers
            if device is not None:  # (counted there at once: a concurrent load plans too)
                self._loading_on[key] = (device, self.device_bytes(key) or 0)
            for victim in plan.evict:
                await self.evict(victim)
            executor.loading.add(key)
            executor.changed()
            try:
                path = self._path_of(key)
                await executor.load_workflow(path, expect_key=key, warm=True, device=device)
            except Exception as exc:
                reason = f"{key} failed to load on {executor.config.node_id}: {exc}"
                self.failed[key] = (time.monotonic() + self.retry_after_s, reason)
                raise Unavailable(reason) from exc
            finally:
                executor.loading.discard(key)
                executor.changed()
            self.failed.pop(key, None)
            now = time.monotonic()
            self.lru.add(key, executor.footprint(key) or self.declared_bytes(key), now)
            if device is not None:  # (declared, else measured: tensors on the device)
                size = self.device_bytes(key) or executor.footprint(key)
                self.devices[device].add(key, size, now)
                self.device_of[key] = device
            self._gauges()
        finally:
            del self._loads[key]
            self._loading_on.pop(key, None)

    async def evict(self, key: str) -> None:
        """Unload a resident model to make room (counted as an eviction); returns once its
        memory is free (a concurrent load's plan that named the same victim waits too)."""
        if key not in self.lru:
            unloading = self._unloading.get(key)
            if unloading is not None:  # a concurrent load's plan is evicting it: wait
                await asyncio.shield(unloading)
            return
        log.info("%s: evicting %s (least recently used) to make room",
                 self.executor.config.node_id, key)  # fmt: skip
        self.lru.remove(key, eviction=True)
        self._forget_device(key, eviction=True)
        self.executor.evictions_total += 1
        self.metrics.evictions.inc()
        task = asyncio.ensure_future(self.executor.unload_workflow(key))
        self._unloading[key] = task
        task.add_done_callback(
            lambda t: self._unloading.pop(key) if self._unloading.get(key) is t else None
        )
        await asyncio.shield(task)
        self._gauges()

    async def unload(self, key: str) -> None:
        """Unload a model this node no longer owns (not an eviction)."""
        self.lru.remove(key, eviction=False)
        self._forget_device(key, eviction=False)
        await self.executor.unload_workflow(key)
        self._gauges()

    def _forget_device(self, key: str, *, eviction: bool) -> None:
        device = self.device_of.pop(key, None)
        if device is not None:
            self.devices[device].remove(key, eviction=eviction)

    def adopt(self, key: str) -> None:
        """A model loaded outside ``load`` (e.g. a standalone preload) counts as resident."""
        if key in self.executor.models and key not in self.lru:
            now = time.monotonic()
            self.lru.add(key, self.executor.footprint(key), now)
            device = str(self.executor.models[key].loaded.device)
            if device in self.devices:
                size = self.device_bytes(key) or self.executor.footprint(key)
                self.devices[device].add(key, size, now)
                self.device_of[key] = device
            self._gauges()

    def _gauges(self) -> None:
        self.metrics.resident_bytes.set(self.lru.resident_bytes)
        self.metrics.resident_models.set(len(self.lru))
        for name, lru in self.devices.items():
            self.metrics.device_resident_bytes.labels(name).set(lru.resident_bytes)


__all__ = ["NoRoom", "Residence"]
