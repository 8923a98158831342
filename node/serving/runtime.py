"""One node's serving parts, wired: ingress → router → executor.

``NodeRuntime`` builds them and is what the transport (``shardline.node.serving.server``) and the
cluster shell (``shardline.node.cluster.cluster_node``) hold:

- ``ingress`` (``shardline.node.serving.ingress.Ingress``): decode the head, admission, rules → a
  ``Decision``, handed to its router;
- the router: ``shardline.node.serving.local_router.LocalRouter`` (standalone), replaced by a
  ``shardline.node.cluster.routing.ClusterRouter`` in a cluster (``use_router``);
- ``executor`` (``shardline.node.serving.executor.Executor``): the model actors, load/unload,
  decoding, shedding, the answer and the prediction log;
- ``shadows`` (``shardline.node.serving.local_router.Shadows``): the shadow copies in flight.

No request passes through this class (``shardline.node.serving.service`` calls the ingress); it only
wires the parts and fans out what concerns several of them: the objectives (admission limits at the
ingress, label names and log rates at the executor), start-up and shutdown.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Mapping

from shardline.node.observability.metrics import NodeMetrics
from shardline.node.serving.executor import Executor, LoadedModel
from shardline.node.serving.ingress import Ingress, Router
from shardline.node.serving.local_router import LocalRouter, Shadows
from shardline.node.serving.node_config import NodeConfig
from shardline.router.objectives import ObjectiveConfig
from shardline.workflows.manifest import WorkflowManifest

__all__ = [
    "NodeConfig",
    "NodeRuntime",
]  # NodeConfig: shardline.node.serving.node_config's, for old imports


class NodeRuntime:
    """Everything one node serves, independent of the transport."""

    def __init__(self, config: NodeConfig, metrics: NodeMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or NodeMetrics()
        self.executor = Executor(config, self.metrics)
        self.shadows = Shadows(self.executor, config.max_shadow_in_flight, config.shadow_timeout_s)
        self.ingress = Ingress(config, self.metrics, LocalRouter(self.executor, self.shadows))
        self.catalog_manifests: Mapping[str, WorkflowManifest] = {}
        """Cluster mode: every model key's manifest from the catalog (loaded here or not)."""

    def use_router(self, router: Router) -> None:
        """Route decided requests with ``router`` from now on (a cluster node's)."""
        self.ingress.router = router

    @property
    def objectives(self) -> Mapping[str, ObjectiveConfig]:
        return self.ingress.objectives

    @property
    def models(self) -> Mapping[str, LoadedModel]:
        return self.executor.models

    @property
    def in_flight(self) -> int:
        """Requests executing on this node's model actors (what gossip reports as load)."""
        return self.executor.in_flight

    def set_objectives(self, objectives: Mapping[str, ObjectiveConfig]) -> None:
        """Swap the objective configs; admission limits, metric labels and log rates follow."""
        self.ingress.set_objectives(objectives)
        self.executor.set_objectives(
            objectives,
            {
                n: c.prediction_log_rate
                for n, c in objectives.items()
                if c.prediction_log_rate is not None
            },
        )

    def manifest_of(self, model_key: str) -> WorkflowManifest | None:
        model = self.executor.models.get(model_key)
        return model.manifest if model is not None else self.catalog_manifests.get(model_key)

    def missing_models(self) -> dict[str, list[str]]:
        """Objective -> model keys it references that this node has not loaded."""
        missing: dict[str, list[str]] = {}
        for name, cfg in self.objectives.items():
            keys = sorted(k for k in cfg.model_keys() if k not in self.executor.models)
            if keys:
                missing[name] = keys
        return missing

    def tune_process(self) -> None:
        """Once the models are loaded: freeze the GC (everything loaded so far leaves its
        reach: shorter pauses, lower p99) and shorten the GIL switch interval."""
        gc.collect()
        gc.freeze()
        sys.setswitchinterval(self.config.gil_switch_interval_s)

    async def start_prediction_log(self) -> None:
        await self.executor.start_prediction_log()

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Flush the prediction log, stop the model actors, cancel the shadow copies left,
        stop the device threads."""
        await self.executor.stop_actors(timeout_s)
        self.shadows.cancel()
        self.executor.close()
