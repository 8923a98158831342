"""Scenario files: what a simulated run looks like (cluster, network, workload, faults, checks).

A scenario is a TOML file in ``sim/scenarios/`` (or anywhere, by path). Every table is
optional except ``name``; defaults give a healthy 6-node cluster serving two objectives.
Parsing validates everything and names the offending field (``faults[3].node``). Objective
configs are validated with the real ``shardline.router.objectives.ObjectiveConfig``.
``with_overrides`` shortens a run (tests) or scales its load without editing the file.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from shardline.membership.swim_state import SwimConfig
from shardline.router.hot_copies import HotPolicy
from shardline.router.objectives import ConfigError, ObjectiveConfig
from shardline.router.residency import DEFAULT_MAX_MODELS
from shardline.sim import defaults
from shardline.sim.core import derive_np
from shardline.sim.faults import FAULT_OPS, FaultSpec, FaultSpecError

SCENARIO_DIR = Path(__file__).parent / "scenarios"


class ScenarioError(ValueError):
    """A bad scenario file; the message names the field."""


@dataclass(frozen=True)
class ClusterSpec:
    nodes: int = 6
    capacities: tuple[float, ...] = ()  # per initial node; missing ones are 1.0
    lease_ttl_s: float = 10.0
    watch_delay_ms: tuple[float, float] = (2.0, 30.0)
    load_report_interval_s: float = 0.2
    client_refresh_s: float = 2.0
    swim: Mapping[str, Any] = field(default_factory=dict)  # SwimConfig overrides
    # Model memory per node (0: unlimited, every owner holds every model it owns, eagerly;
    # > 0: ``shardline.router.residency.Residency`` under this budget, lazy loads, LRU).
    memory_budget_bytes: int = 0
    max_resident_models: int = DEFAULT_MAX_MODELS
    zones: int = 0  # > 0: node i is in zone ``z{i % zones}`` (a fault may crash a zone)
    hot: Mapping[str, Any] = field(default_factory=dict)  # HotPolicy overrides (budget > 0)
    hot_interval_s: float = 1.0  # how often a primary owner observes its hot models
    # Scale: at most one watch delivery pending per node (it carries every revision
    # committed before it fires), as an etcd watch batches events per response. Off: one
    # delivery per revision per node (the default; the traces of the small scenarios).
    watch_batching: bool = False
    # Start the initial nodes' gossip converged (each holds every initial member alive), as
    # a running fleet's is; off: they start knowing nobody and join through the roster (a
    # cold start of them all at once, O(nodes^2) full-state push-pulls at 1 000 nodes).
    gossip_settled: bool = False

    def swim_config(self) -> SwimConfig:
        return SwimConfig(cluster="sim", **dict(self.swim))

    def hot_policy(self) -> HotPolicy:
        return HotPolicy(**dict(self.hot))

    def zone_of(self, index: int) -> str:
        """The zone of the ``index``-th initial node ("" without zones)."""
        return f"z{index % self.zones}" if self.zones else ""


@dataclass(frozen=True)
class NetworkSpec:
    latency_ms: float = 0.25
    jitter_ms: float = 0.25
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_ms: float = 5.0
    retransmit_ms: float = 200.0  # what a lost TCP segment costs an RPC
    etcd_timeout_ms: float = 1000.0
    client_latency_ms: float = 0.5


@dataclass(frozen=True)
class WorkflowSpec:
    key: str
    replicas: int = 2
    base_ms: float = 4.0
    per_item_ms: float = 0.4
    jitter: float = 0.1  # lognormal sigma of each batch's service time
    max_batch: int = 32
    max_delay_ms: float = 2.0
    queue_capacity: int = 256
    load_s: float = 1.5
    bytes: int = 0  # memory a resident copy takes (the loaded sets in etcd report it)
    pinned: bool = False  # kept resident on its owners (never evicted), with a budget


@dataclass(frozen=True)
class CatalogSpec:
    """A generated catalog: ``models`` keys ``m000000@1``... with heavy-tailed sizes
    (lognormal: median ``size_median_mb``, sigma ``size_sigma``), load times of
    ``load_base_s + bytes / load_gb_per_s``, and Zipf(``zipf_s``) traffic of ``rate_per_s``
    over them (model 0 the most popular) through one objective ``catalog`` that names the
    model directly. The ``pinned`` most popular models are pinned resident."""

    models: int = 1000
    size_median_mb: float = 200.0
    size_sigma: float = 1.0
    zipf_s: float = 1.1
    seed: int = 1
    replicas: int = 2
    rate_per_s: float = 1000.0
    deadline_ms: float = 30_000.0
    load_base_s: float = 0.2
    load_gb_per_s: float = 2.0
    base_ms: float = 4.0
    per_item_ms: float = 0.4
    max_batch: int = 32
    pinned: int = 0

    def keys(self) -> list[str]:
        return [f"m{i:06d}@1" for i in range(self.models)]

    def sizes(self) -> list[int]:
        """Each model's bytes (seeded; at least 1 MB)."""
        gen = derive_np(self.seed, "catalog sizes")
        mb = gen.lognormal(math.log(self.size_median_mb), self.size_sigma, self.models)
        return [max(1 << 20, int(v * (1 << 20))) for v in mb.tolist()]

    def workflows(self) -> tuple[WorkflowSpec, ...]:
        return tuple(
            WorkflowSpec(
                key=key,
                replicas=self.replicas,
                base_ms=self.base_ms,
                per_item_ms=self.per_item_ms,
                max_batch=self.max_batch,
                load_s=self.load_base_s + size / (self.load_gb_per_s * 1e9),
                bytes=size,
                pinned=i < self.pinned,
            )
            for i, (key, size) in enumerate(zip(self.keys(), self.sizes(), strict=True))
        )

    def objective(self) -> ObjectiveSpec:
        """The one objective of catalog traffic (its config names model 0 as default; the
        request engine routes each request to the model its Zipf draw names)."""
        config = {"name": CATALOG_OBJECTIVE, "default": "m000000@1"}
        return ObjectiveSpec(
            config=config, rate_per_s=self.rate_per_s, deadline_ms=self.deadline_ms
        )


CATALOG_OBJECTIVE = "catalog"


@dataclass(frozen=True)
class ObjectiveSpec:
    config: Mapping[str, Any]
    rate_per_s: float = 100.0
    deadline_ms: float = 300.0

    @property
    def name(self) -> str:
        return str(self.config["name"])


@dataclass(frozen=True)
class WorkloadSpec:
    users: int = 50_000
    zipf_s: float = 1.1
    countries: tuple[str, ...] = ("US", "BR", "DE", "IN", "JP")
    devices: tuple[str, ...] = ("tv", "mobile", "web")


@dataclass(frozen=True)
class CheckSpec:
    detection_bound_s: float | None = None  # None: computed from the SWIM config
    convergence_bound_s: float = 30.0
    heal_at_s: float | None = None  # None: when the last fault is over
    config_staleness_s: float = 2.0
    min_success_rate: float = 0.0
    max_failed: int | None = None  # requests that may end without an answer (None: any)


DEFAULT_WORKFLOWS = tuple(WorkflowSpec(**doc) for doc in defaults.WORKFLOWS)
DEFAULT_OBJECTIVES = tuple(ObjectiveSpec(**doc) for doc in defaults.OBJECTIVES)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str = ""
    seed: int = 1
    duration_s: float = 60.0
    tail_s: float = 5.0  # after duration: no new requests, the ones in flight finish
    cluster: ClusterSpec = ClusterSpec()
    network: NetworkSpec = NetworkSpec()
    workload: WorkloadSpec = WorkloadSpec()
    workflows: tuple[WorkflowSpec, ...] = DEFAULT_WORKFLOWS
    objectives: tuple[ObjectiveSpec, ...] = DEFAULT_OBJECTIVES
    faults: tuple[FaultSpec, ...] = ()
    checks: CheckSpec = CheckSpec()
    catalog: CatalogSpec | None = None
    source: str = ""

    def heal_at_s(self) -> float:
        """When the last fault is over (or the scenario's explicit ``checks.heal_at_s``)."""
        if self.checks.heal_at_s is not None:
            return self.checks.heal_at_s
        return max((f.ends_at_s() for f in self.faults), default=0.0)

    def detection_bound_s(self) -> float:
        """Crash -> no more routing to it: worst suspicion timeout plus probing slack."""
        if self.checks.detection_bound_s is not None:
            return self.checks.detection_bound_s
        swim = self.cluster.swim_config()
        worst = swim.suspicion_bounds_s(max(self.cluster.nodes, 2))[1]
        return min(worst + 6 * swim.probe_interval_s + 2.0, self.cluster.lease_ttl_s + 3.0)

    def with_overrides(
        self, *, duration_s: float | None = None, rate_scale: float | None = None
    ) -> Scenario:
        """A shorter or lighter run: faults after the new duration are dropped."""
        out = self
        if duration_s is not None and duration_s < self.duration_s:
            kept = tuple(
                replace(
                    f, params={**f.params, "until_s": min(f.params["until_s"], 0.7 * duration_s)}
                )
                if f.op == "churn"
                else f
                for f in self.faults
                if f.at_s < duration_s
            )
            checks = self.checks
            if checks.heal_at_s is not None and checks.heal_at_s >= duration_s:
                checks = replace(checks, heal_at_s=None)
            out = replace(out, duration_s=duration_s, faults=kept, checks=checks)
        if rate_scale is not None:
            objectives = tuple(
                replace(o, rate_per_s=o.rate_per_s * rate_scale) for o in out.objectives
            )
            out = replace(out, objectives=objectives)
        return out


# ----------------------------------------------------------------------------- parsing


def _check_keys(raw: Mapping[str, Any], cls: type, where: str, extra: tuple[str, ...] = ()) -> None:
    allowed = {f.name for f in fields(cls)} | set(extra)
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ScenarioError(f"{where}: unknown key(s) {unknown} (allowed: {sorted(allowed)})")


def _number(raw: Mapping[str, Any], key: str, where: str, low: float, high: float) -> None:
    if key not in raw:
        return
    value = raw[key]
    ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if not ok or not low <= value <= high:
        raise ScenarioError(
            f"{where}.{key}: must be a number in [{low:g}, {high:g}], got {value!r}"
        )


def _table(raw: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ScenarioError(f"{where}: must be a table")
    return raw


def _cluster(raw: Mapping[str, Any]) -> ClusterSpec:
    _check_keys(raw, ClusterSpec, "cluster")
    _number(raw, "nodes", "cluster", 1, 1000)
    _number(raw, "lease_ttl_s", "cluster", 2, 600)
    _number(raw, "load_report_interval_s", "cluster", 0.01, 10)
    _number(raw, "client_refresh_s", "cluster", 0.1, 60)
    _number(raw, "memory_budget_bytes", "cluster", 0, 2**60)
    _number(raw, "max_resident_models", "cluster", 1, 10_000_000)
    _number(raw, "zones", "cluster", 0, 1000)
    _number(raw, "hot_interval_s", "cluster", 0.01, 600)
    ints = {
        k: int(raw[k]) for k in ("memory_budget_bytes", "max_resident_models", "zones") if k in raw
    }
    for flag in ("watch_batching", "gossip_settled"):
        if flag in raw and not isinstance(raw[flag], bool):
            raise ScenarioError(f"cluster.{flag}: must be true or false")
    spec = ClusterSpec(
        **{
            **raw,
            **ints,
            "capacities": tuple(raw.get("capacities", ())),
            "watch_delay_ms": tuple(raw.get("watch_delay_ms", ClusterSpec.watch_delay_ms)),
            "swim": dict(_table(raw.get("swim", {}), "cluster.swim")),
            "hot": dict(_table(raw.get("hot", {}), "cluster.hot")),
        }
    )
    try:
        spec.hot_policy()
    except (TypeError, ValueError) as exc:
        raise ScenarioError(f"cluster.hot: {exc}") from None
    if len(spec.watch_delay_ms) != 2 or not 0 <= spec.watch_delay_ms[0] <= spec.watch_delay_ms[1]:
        raise ScenarioError("cluster.watch_delay_ms: must be [low, high] with 0 <= low <= high")
    try:
        spec.swim_config()
    except (TypeError, ValueError) as exc:
        raise ScenarioError(f"cluster.swim: {exc}") from None
    return spec


def _network(raw: Mapping[str, Any]) -> NetworkSpec:
    _check_keys(raw, NetworkSpec, "network")
    for key in ("loss", "duplicate", "reorder"):
        _number(raw, key, "network", 0.0, 0.9)
    for key in ("latency_ms", "jitter_ms", "reorder_ms", "retransmit_ms", "client_latency_ms"):
        _number(raw, key, "network", 0.0, 10_000.0)
    _number(raw, "etcd_timeout_ms", "network", 1.0, 60_000.0)
    return NetworkSpec(**raw)


def _workflow(raw: Mapping[str, Any], where: str) -> WorkflowSpec:
    _check_keys(raw, WorkflowSpec, where)
    if "key" not in raw:
        raise ScenarioError(f"{where}.key: required")
    _number(raw, "replicas", where, 1, 16)
    _number(raw, "max_batch", where, 1, 4096)
    _number(raw, "max_delay_ms", where, 0, 1000)
    _number(raw, "queue_capacity", where, 1, 1_000_000)
    for key in ("base_ms", "per_item_ms", "jitter", "load_s"):
        _number(raw, key, where, 0, 600_000)
    _number(raw, "bytes", where, 0, 2**50)
    if "pinned" in raw and not isinstance(raw["pinned"], bool):
        raise ScenarioError(f"{where}.pinned: must be true or false")
    if "bytes" in raw:
        raw = {**raw, "bytes": int(raw["bytes"])}
    return WorkflowSpec(**raw)


def _objective(raw: Mapping[str, Any], where: str, keys: set[str]) -> ObjectiveSpec:
    _check_keys(raw, ObjectiveSpec, where)
    _number(raw, "rate_per_s", where, 0, 10_000_000)
    _number(raw, "deadline_ms", where, 1, 600_000)
    config = _table(raw.get("config"), f"{where}.config")
    try:
        parsed = ObjectiveConfig.from_dict(config)
    except ConfigError as exc:
        raise ScenarioError(f"{where}.config: {exc}") from None
    missing = sorted(parsed.model_keys() - keys)
    if missing:
        raise ScenarioError(f"{where}.config: models {missing} are not in [[workflows]]")
    return ObjectiveSpec(**{**raw, "config": dict(config)})


def _catalog(raw: Mapping[str, Any]) -> CatalogSpec:
    _check_keys(raw, CatalogSpec, "catalog")
    _number(raw, "models", "catalog", 1, 10_000_000)
    _number(raw, "size_median_mb", "catalog", 0.001, 10_000_000)
    _number(raw, "size_sigma", "catalog", 0, 5)
    _number(raw, "zipf_s", "catalog", 0, 10)
    _number(raw, "seed", "catalog", 0, 2**63)
    _number(raw, "replicas", "catalog", 1, 16)
    _number(raw, "rate_per_s", "catalog", 0, 10_000_000)
    _number(raw, "deadline_ms", "catalog", 1, 3_600_000)
    _number(raw, "load_base_s", "catalog", 0, 3600)
    _number(raw, "load_gb_per_s", "catalog", 0.001, 1000)
    _number(raw, "base_ms", "catalog", 0, 600_000)
    _number(raw, "per_item_ms", "catalog", 0, 600_000)
    _number(raw, "max_batch", "catalog", 1, 4096)
    _number(raw, "pinned", "catalog", 0, 10_000_000)
    ints = ("models", "seed", "replicas", "max_batch", "pinned")
    return CatalogSpec(**{k: int(v) if k in ints else v for k, v in raw.items()})


def parse_scenario(data: Mapping[str, Any], source: str = "") -> Scenario:
    """Validate a decoded TOML document into a ``Scenario``."""
    _check_keys(data, Scenario, "scenario")
    if not isinstance(data.get("name"), str) or not data["name"]:
        raise ScenarioError("name: required (a string)")
    _number(data, "duration_s", "scenario", 1, 86_400)
    _number(data, "tail_s", "scenario", 0, 3600)
    _number(data, "seed", "scenario", 0, 2**63)
    cluster = _cluster(_table(data.get("cluster", {}), "cluster"))
    workflows: tuple[WorkflowSpec, ...] = DEFAULT_WORKFLOWS
    if "workflows" in data:
        workflows = tuple(
            _workflow(_table(w, f"workflows[{i}]"), f"workflows[{i}]")
            for i, w in enumerate(data["workflows"])
        )
    catalog = None
    if "catalog" in data:
        if "workflows" in data or "objectives" in data:
            raise ScenarioError(
                "catalog: generates the workflows and the objective; drop "
                "[[workflows]] and [[objectives]]"
            )
        catalog = _catalog(_table(data["catalog"], "catalog"))
        workflows = catalog.workflows()
    budget = cluster.memory_budget_bytes
    if budget:
        too_big = [w for w in workflows if w.bytes > budget]
        if too_big:
            w = max(too_big, key=lambda w: w.bytes)
            raise ScenarioError(
                f"workflows: {len(too_big)} model(s) larger than cluster.memory_budget_bytes "
                f"({budget} bytes) would be refused at deploy; the largest, {w.key}, needs "
                f"{w.bytes} bytes"
            )
    keys = {w.key for w in workflows}
    if len(keys) != len(workflows):
        raise ScenarioError("workflows: duplicate key")
    objectives: tuple[ObjectiveSpec, ...] = DEFAULT_OBJECTIVES
    if catalog is not None:
        objectives = (catalog.objective(),)
    elif "objectives" in data:
        objectives = tuple(
            _objective(_table(o, f"objectives[{i}]"), f"objectives[{i}]", keys)
            for i, o in enumerate(data["objectives"])
        )
    try:
        faults = tuple(
            FaultSpec.parse(_table(f, f"faults[{i}]"), f"faults[{i}]")
            for i, f in enumerate(data.get("faults", []))
        )
    except FaultSpecError as exc:
        raise ScenarioError(str(exc)) from None
    names = {o.name for o in objectives}
    for i, fault in enumerate(faults):
        if fault.op == "objective_change":
            where = f"faults[{i}].config"
            spec = _objective({"config": fault.params["config"]}, f"faults[{i}]", keys)
            if spec.name != fault.params["objective"] or spec.name not in names:
                raise ScenarioError(f"{where}.name: must be the objective, one of {sorted(names)}")
    checks_raw = _table(data.get("checks", {}), "checks")
    _check_keys(checks_raw, CheckSpec, "checks")
    _number(checks_raw, "min_success_rate", "checks", 0, 1)
    _number(checks_raw, "max_failed", "checks", 0, 2**63)
    workload_raw = _table(data.get("workload", {}), "workload")
    _check_keys(workload_raw, WorkloadSpec, "workload")
    _number(workload_raw, "users", "workload", 1, 100_000_000)
    _number(workload_raw, "zipf_s", "workload", 0, 10)
    workload = WorkloadSpec(
        **{
            **workload_raw,
            **{k: tuple(workload_raw[k]) for k in ("countries", "devices") if k in workload_raw},
        }
    )
    if catalog is not None:  # a "user" is a model: Zipf over the catalog, model 0 first
        workload = replace(workload, users=catalog.models, zipf_s=catalog.zipf_s)
    return Scenario(
        name=data["name"],
        description=str(data.get("description", "")),
        seed=int(data.get("seed", 1)),
        duration_s=float(data.get("duration_s", 60.0)),
        tail_s=float(data.get("tail_s", 5.0)),
        cluster=cluster,
        network=_network(_table(data.get("network", {}), "network")),
        workload=workload,
        workflows=workflows,
        objectives=objectives,
        faults=faults,
        checks=CheckSpec(**checks_raw),
        catalog=catalog,
        source=source,
    )


def scenario_names() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A scenario by name (``sim/scenarios/<name>.toml``) or by path."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = SCENARIO_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        known = ", ".join(scenario_names())
        raise ScenarioError(f"no scenario {str(name_or_path)!r} (known: {known})")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: invalid TOML: {exc}") from None
    try:
        return parse_scenario(data, source=str(path))
    except ScenarioError as exc:
        raise ScenarioError(f"{path}: {exc}") from None


__all__ = [
    "CATALOG_OBJECTIVE",
    "FAULT_OPS",
    "CatalogSpec",
    "CheckSpec",
    "ClusterSpec",
    "FaultSpec",
    "NetworkSpec",
    "ObjectiveSpec",
    "Scenario",
    "ScenarioError",
    "WorkflowSpec",
    "WorkloadSpec",
    "load_scenario",
    "parse_scenario",
    "scenario_names",
]
