"""What a run measured: every request's outcome, detection times, ring churn, the trace hash.

Outcomes go into flat columns (end time, start time, status, objective, serving node): one
plain list takes the five values of each request (one ``list.extend``, the cheapest way
Python has), moved into numpy columns every ``FLUSH_VALUES`` values, so a million requests
cost a few tens of MB; percentiles and per-second series are computed with numpy at the
end. The trace hash is a blake2b over every request outcome and every membership change
seen by every node, in event order: one seed gives one hash.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shardline.router.ring import Ring, moved_keys
from shardline.sim.request import STATUS_CODE, STATUSES, Host, Request

#: numpy types of the outcome columns (end time, start time, status, objective, server).
COLUMN_TYPES = (np.float64, np.float64, np.int8, np.int8, np.int16)
FLUSH_VALUES = len(COLUMN_TYPES) << 12  # (rows of five values; few enough to stay in cache)


@dataclass
class Detection:
    """One crash: when it happened and when each observer's gossip declared it dead."""

    node_id: str
    crashed_at: float
    observers: tuple[str, ...]  # the nodes running when it crashed
    seen: dict[str, float] = field(default_factory=dict)
    restarted_at: float = math.inf

    def first_s(self) -> float | None:
        return min(self.seen.values()) - self.crashed_at if self.seen else None

    def all_s(self) -> float | None:
        if not self.observers or any(o not in self.seen for o in self.observers):
            return None
        return max(self.seen[o] for o in self.observers) - self.crashed_at


class Metrics:
    def __init__(self, keys: Mapping[str, int]) -> None:
        # The rows not yet flushed, flat: end time, start time, status code, objective and
        # server index of each (extended in place, never replaced).
        self.rows: list[float] = []
        self._chunks: list[list[np.ndarray]] = [[] for _ in COLUMN_TYPES]
        self._trace = hashlib.blake2b(digest_size=16)
        self._pending: list[tuple[Any, ...]] = []
        self.keys = dict(keys)
        self.faults: list[tuple[float, str]] = []
        self.detections: dict[str, Detection] = {}
        self.keys_moved = 0
        self.ring_changes = 0
        self._ring: Ring | None = None
        self.ownership: list[tuple[float, dict[str, int]]] = []
        self.samples: list[dict[str, float]] = []
        self.member_events = 0
        self.false_dead = 0  # "dead" declarations about a node whose process was running

    # ------------------------------------------------------------------ requests

    def record(self, req: Request, status: str, at: float, server: Host | None) -> None:
        rows = self.rows
        rows.extend(
            (at, req.t0, STATUS_CODE[status], req.obj, -1 if server is None else server.index)
        )
        if len(rows) >= FLUSH_VALUES:
            self.flush_rows()

    def flush_rows(self) -> None:
        """Move the rows recorded so far into numpy columns (exact: the codes, objectives
        and server indexes are small integers)."""
        if not self.rows:
            return
        rows = self.rows
        packed = struct.pack(f"{len(rows)}d", *rows)  # (the cheapest conversion there is)
        table = np.frombuffer(packed, dtype=np.float64).reshape(-1, len(COLUMN_TYPES))
        self.rows.clear()
        for i, (chunks, dtype) in enumerate(zip(self._chunks, COLUMN_TYPES, strict=True)):
            chunks.append(table[:, i].astype(dtype))

    def columns(self) -> tuple[np.ndarray, ...]:
        """(end time, start time, status code, objective, serving node) of every request
        in finishing order."""
        self.flush_rows()
        out = []
        for chunks, dtype in zip(self._chunks, COLUMN_TYPES, strict=True):
            if len(chunks) != 1:
                whole = np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtype)
                chunks[:] = [whole]
            out.append(chunks[0])
        return tuple(out)

    def record_unrouted(self, rid: int, obj: int, t0: float, at: float) -> None:
        """A client with no node to send to: UNAVAILABLE at once."""
        req = Request.__new__(Request)
        req.rid, req.obj, req.t0 = rid, obj, t0
        self.record(req, "UNAVAILABLE", at, None)

    def _flush(self) -> None:
        if self._pending:
            self._trace.update(repr(self._pending).encode())
            self._pending = []

    def trace(self, *event: Any) -> None:
        """Mix a non-request event (membership change, fault) into the trace hash."""
        pending = self._pending
        pending.append(event)
        if len(pending) >= 4096:
            self._flush()

    def trace_hash(self) -> str:
        """blake2b of every cluster event, then of every request outcome in finishing order
        (end time, start time, status, objective, serving node)."""
        self._flush()
        digest = self._trace.copy()
        for column in self.columns():
            digest.update(column.tobytes())
        return digest.hexdigest()

    # ------------------------------------------------------------------ cluster events

    def fault(self, at: float, label: str) -> None:
        self.faults.append((at, label))
        self.trace("fault", round(at * 1e6), label)

    def crashed(self, node_id: str, at: float, observers: tuple[str, ...]) -> None:
        self.detections[f"{node_id}@{at:.3f}"] = Detection(node_id, at, observers)

    def declared_dead(self, observer: str, subject: str, at: float) -> None:
        for detection in self.detections.values():
            if (
                detection.node_id == subject
                and detection.crashed_at <= at < detection.restarted_at
                and observer not in detection.seen
            ):
                detection.seen[observer] = at

    def restarted(self, node_id: str, at: float) -> None:
        for detection in self.detections.values():
            if detection.node_id == node_id and detection.restarted_at == math.inf:
                detection.restarted_at = at
                detection.observers = tuple(o for o in detection.observers if o in detection.seen)

    def reference_ring(self, at: float, ring: Ring) -> None:
        """The ring the cluster should have now (roster actives that run): count moves."""
        if self._ring is not None and ring != self._ring:
            before = self._ring.assignment(self.keys, self.keys)
            after = ring.assignment(self.keys, self.keys)
            self.keys_moved += moved_keys(before, after)
            self.ring_changes += 1
        self._ring = ring
        owned: dict[str, int] = dict.fromkeys(ring.node_ids, 0)
        for owners in ring.assignment(self.keys, self.keys).values():
            for owner in owners:
                owned[owner] = owned.get(owner, 0) + 1
        self.ownership.append((at, owned))

    # ------------------------------------------------------------------ summaries

    def arrays(self) -> dict[str, np.ndarray]:
        t_end, t0, code, _, server = self.columns()
        return {"t_end": t_end, "latency": t_end - t0, "code": code, "server": server}

    def status_counts(self) -> dict[str, int]:
        counts = np.bincount(self.columns()[2], minlength=len(STATUSES))
        return {name: int(counts[i]) for i, name in enumerate(STATUSES) if counts[i]}

    def latency_ms(self, ok_only: bool = True) -> dict[str, float]:
        a = self.arrays()
        lat = a["latency"][a["code"] == 0] if ok_only else a["latency"]
        if lat.size == 0:
            return {}
        pct = np.percentile(lat, [50, 90, 99, 99.9]) * 1000.0
        return {
            "p50": float(pct[0]),
            "p90": float(pct[1]),
            "p99": float(pct[2]),
            "p999": float(pct[3]),
        }

    def series(self, end_s: float, bin_s: float = 1.0) -> dict[str, list[float]]:
        """Per-bin throughput (ok/s), errors/s and p99 latency (ms) of the answers."""
        a = self.arrays()
        bins = max(1, math.ceil(end_s / bin_s))
        idx = np.minimum((a["t_end"] / bin_s).astype(np.int64), bins - 1)
        ok = a["code"] == 0
        ok_n = np.bincount(idx[ok], minlength=bins)
        err_n = np.bincount(idx[~ok], minlength=bins)
        p99 = np.full(bins, np.nan)
        if ok.any():
            order = np.argsort(idx[ok], kind="stable")
            lat_sorted, idx_sorted = a["latency"][ok][order], idx[ok][order]
            bounds = np.searchsorted(idx_sorted, np.arange(bins + 1))
            for b in range(bins):
                lo, hi = bounds[b], bounds[b + 1]
                if hi > lo:
                    p99[b] = float(np.percentile(lat_sorted[lo:hi], 99)) * 1000.0
        return {
            "t": [b * bin_s for b in range(bins)],
            "ok_per_s": (ok_n / bin_s).tolist(),
            "errors_per_s": (err_n / bin_s).tolist(),
            "p99_ms": [None if math.isnan(v) else v for v in p99.tolist()],
        }

    def detection_summary(self) -> dict[str, Any]:
        firsts = [d.first_s() for d in self.detections.values()]
        alls = [d.all_s() for d in self.detections.values()]
        first = [v for v in firsts if v is not None]
        every = [v for v in alls if v is not None]
        return {
            "crashes": len(self.detections),
            "detected": len(first),
            "first_median_s": float(np.median(first)) if first else None,
            "first_max_s": max(first) if first else None,
            "all_median_s": float(np.median(every)) if every else None,
            "all_max_s": max(every) if every else None,
        }

    def view_detection(self, live: set[str]) -> dict[str, Any]:
        """Per (live observer, crashed node) pair: the time from the crash until the
        observer's gossip declared the node dead (a node that came back meanwhile is left
        out); p50 / p99 / max, and how many pairs never saw it."""
        times: list[float] = []
        missing = 0
        for d in self.detections.values():
            if d.restarted_at != math.inf:
                continue
            for observer in d.observers:
                if observer not in live:
                    continue
                seen = d.seen.get(observer)
                if seen is None:
                    missing += 1
                else:
                    times.append(seen - d.crashed_at)
        if not times:
            return {"pairs": 0, "missing": missing, "p50_s": None, "p99_s": None, "max_s": None}
        arr = np.asarray(times)
        return {
            "pairs": len(times),
            "missing": missing,
            "p50_s": float(np.percentile(arr, 50)),
            "p99_s": float(np.percentile(arr, 99)),
            "max_s": float(arr.max()),
        }

    def imbalance(self) -> dict[str, float | None]:
        """max/mean of requests served per node, and of owner slots per node (last ring)."""
        served = np.bincount(self.arrays()["server"][self.arrays()["server"] >= 0])
        served = served[served > 0]
        owned = list(self.ownership[-1][1].values()) if self.ownership else []
        return {
            "served_max_over_mean": float(served.max() / served.mean()) if served.size else None,
            "owned_max_over_mean": float(max(owned) / (sum(owned) / len(owned))) if owned else None,
        }
