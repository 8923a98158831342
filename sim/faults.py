"""The fault and operations schedule of a scenario: what happens to the cluster, and when.

Each ``[[faults]]`` entry is ``at_s`` + ``op`` + the op's parameters. Node parameters name a
node (``"n03"``), a list of them, or ``"random"`` (a running node drawn from the run's
seed when the fault fires). Ops with a ``duration_s`` undo themselves; ``partition``
without one lasts until a ``heal``.

| op | parameters |
|---|---|
| crash | node, count (for "random"); or zone (every running node of that zone) |
| restart | node (a crashed or departed node comes back with a fresh process) |
| pause | node, duration_s (GC pause / frozen VM: nothing runs, inbound traffic waits) |
| slow | node, factor, duration_s (compute x factor, gossip handled late) |
| partition | groups = [[a, b], [c, ...]] or isolate = [a] (vs the rest); asymmetric; duration_s |
| heal | (removes every partition) |
| loss_burst | loss, duration_s (extra datagram loss on every link) |
| etcd_outage | duration_s, nodes (only these lose etcd; default all) |
| join | node (a new id), capacity |
| drain | node |
| rolling_restart | interval_s, restart_delay_s, mode = "drain" or "crash" |
| objective_change | objective, config (a whole new objective config) |
| churn | until_s, crash_every_s, join_every_s, drain_every_s, restart_after_s |
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class FaultSpecError(ValueError):
    """A bad ``[[faults]]`` entry; the message names the field."""


_NUM = (int, float)
FAULT_OPS: dict[str, dict[str, tuple[type, ...]]] = {
    "crash": {"node": (str, list), "count": (int,), "zone": (str,)},
    "restart": {"node": (str, list)},
    "pause": {"node": (str, list), "duration_s": _NUM},
    "slow": {"node": (str, list), "factor": _NUM, "duration_s": _NUM},
    "partition": {"groups": (list,), "isolate": (list,), "asymmetric": (bool,), "duration_s": _NUM},
    "heal": {},
    "loss_burst": {"loss": _NUM, "duration_s": _NUM},
    "etcd_outage": {"duration_s": _NUM, "nodes": (list,)},
    "join": {"node": (str,), "capacity": _NUM},
    "drain": {"node": (str, list)},
    "rolling_restart": {"interval_s": _NUM, "restart_delay_s": _NUM, "mode": (str,)},
    "objective_change": {"objective": (str,), "config": (dict,)},
    "churn": {
        "until_s": _NUM,
        "crash_every_s": _NUM,
        "join_every_s": _NUM,
        "drain_every_s": _NUM,
        "restart_after_s": _NUM,
    },
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    "restart": ("node",),
    "pause": ("node", "duration_s"),
    "slow": ("node", "factor", "duration_s"),
    "loss_burst": ("loss", "duration_s"),
    "etcd_outage": ("duration_s",),
    "join": ("node",),
    "drain": ("node",),
    "rolling_restart": ("interval_s",),
    "objective_change": ("objective", "config"),
    "churn": ("until_s",),
}


@dataclass(frozen=True)
class FaultSpec:
    at_s: float
    op: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def ends_at_s(self) -> float:
        """When the fault is over, as far as the schedule says (dynamic ops may run longer)."""
        if self.op == "churn":
            return float(self.params["until_s"])
        return self.at_s + float(self.params.get("duration_s", 0.0))

    def label(self) -> str:
        node = self.params.get("node") or (
            f"zone {self.params['zone']}" if "zone" in self.params else None
        )
        what = f" {node}" if isinstance(node, str) else f" {','.join(node)}" if node else ""
        return f"{self.op}{what}"

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: str) -> FaultSpec:
        op = raw.get("op")
        if op not in FAULT_OPS:
            raise FaultSpecError(f"{where}.op: must be one of {sorted(FAULT_OPS)}, got {op!r}")
        at = raw.get("at_s")
        if isinstance(at, bool) or not isinstance(at, _NUM) or not math.isfinite(at) or at < 0:
            raise FaultSpecError(f"{where}.at_s: must be a number >= 0, got {at!r}")
        allowed = FAULT_OPS[op]
        params = {k: v for k, v in raw.items() if k not in ("op", "at_s")}
        for key, value in params.items():
            if key not in allowed:
                raise FaultSpecError(
                    f"{where}.{key}: not a parameter of {op} (allowed: {sorted(allowed)})"
                )
            types = allowed[key]
            if isinstance(value, bool) and bool not in types:
                raise FaultSpecError(f"{where}.{key}: must not be a boolean")
            if not isinstance(value, types):
                raise FaultSpecError(f"{where}.{key}: wrong type {type(value).__name__}")
            if isinstance(value, int | float) and (not math.isfinite(value) or value < 0):
                raise FaultSpecError(f"{where}.{key}: must be a finite number >= 0")
        for key in _REQUIRED.get(op, ()):
            if key not in params:
                raise FaultSpecError(f"{where}.{key}: required by {op}")
        if op == "crash" and ("node" in params) == ("zone" in params):
            raise FaultSpecError(f"{where}: crash needs exactly one of node, zone")
        if op == "partition" and ("groups" in params) == ("isolate" in params):
            raise FaultSpecError(f"{where}: partition needs exactly one of groups, isolate")
        if op == "partition" and "groups" in params:
            groups = params["groups"]
            if len(groups) < 2 or not all(isinstance(g, list) and g for g in groups):
                raise FaultSpecError(f"{where}.groups: needs two or more non-empty lists")
        if op == "loss_burst" and not params["loss"] <= 1.0:
            raise FaultSpecError(f"{where}.loss: must be <= 1")
        if op == "rolling_restart" and params.get("mode", "drain") not in ("drain", "crash"):
            raise FaultSpecError(f"{where}.mode: must be 'drain' or 'crash'")
        if op == "churn" and params["until_s"] < at:
            raise FaultSpecError(f"{where}.until_s: must be >= at_s")
        return cls(float(at), op, params)
