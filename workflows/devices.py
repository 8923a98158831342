"""Per-device worker threads for torch work.

Every device (``cpu``, ``cuda:0``, ``cuda:1`` …) gets exactly one worker thread, so
work on one GPU is serialized and the event loop never runs torch. Jobs run under
``torch.inference_mode()``. The CPU worker's intra-op thread count is set once, so a
node sized for N cores does not oversubscribe them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")


class DeviceExecutors:
    """One single-thread executor per torch device, created on first use."""

    def __init__(self, cpu_threads: int | None = None) -> None:
        self._executors: dict[str, ThreadPoolExecutor] = {}
        self._lock = threading.Lock()
        self._cpu_threads = cpu_threads
        self._closed = False

    def _executor(self, device: torch.device) -> ThreadPoolExecutor:
        key = str(device)
        with self._lock:
            if self._closed:
                raise RuntimeError("device executors are shut down")
            pool = self._executors.get(key)
            if pool is None:
                pool = ThreadPoolExecutor(
                    max_workers=1,
                    thread_name_prefix=f"torch-{key}",
                    initializer=self._init_worker,
                    initargs=(device,),
                )
                self._executors[key] = pool
            return pool

    def _init_worker(self, device: torch.device) -> None:
        if device.type == "cpu" and self._cpu_threads is not None:
            torch.set_num_threads(self._cpu_threads)
        if device.type == "cuda":
            torch.cuda.set_device(device)

    @staticmethod
    def _call(fn: Callable[[], T]) -> T:
        with torch.inference_mode():
            return fn()

    async def run(self, device: torch.device, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the device's worker thread under ``inference_mode``."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor(device), self._call, fn)

    def devices(self) -> list[str]:
        with self._lock:
            return sorted(self._executors)

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            pools = list(self._executors.values())
            self._executors.clear()
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)
