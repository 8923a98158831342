"""When a model actor closes a batch: the pure batch-closing policy.

A batch closes as soon as it holds ``max_batch_size`` requests, or ``max_delay_ms``
after its *first* request was enqueued, whichever comes first. Because the clock
starts at enqueue time, a request that already waited while the previous batch ran
does not wait again: under load batches close at once and fill from the backlog;
when idle a lone request waits at most ``max_delay_ms``. Time is an argument here
(seconds on any monotonic clock), never read.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int
    max_delay_ms: float

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch_size <= 4096:
            raise ValueError(f"max_batch_size must be in 1..4096, got {self.max_batch_size}")
        if not 0.0 <= self.max_delay_ms <= 1000.0:
            raise ValueError(f"max_delay_ms must be in 0..1000, got {self.max_delay_ms}")

    def close_at_s(self, first_enqueued_s: float) -> float:
        """The latest time a batch whose first request arrived at ``first_enqueued_s`` closes."""
        return first_enqueued_s + self.max_delay_ms / 1000.0

    def should_close(self, size: int, first_enqueued_s: float, now_s: float) -> bool:
        return size >= self.max_batch_size or now_s >= self.close_at_s(first_enqueued_s)

    def wait_s(self, size: int, first_enqueued_s: float, now_s: float) -> float:
        """How long to wait for more requests before closing (0 means close now)."""
        if self.should_close(size, first_enqueued_s, now_s):
            return 0.0
        return self.close_at_s(first_enqueued_s) - now_s
