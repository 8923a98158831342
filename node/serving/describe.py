"""The routing table a standalone node serves on ``Cluster.GetRoutingTable`` (status, smart
clients): its objectives and the models it holds, each owned by itself. A cluster node adds
members and owners in ``shardline.node.cluster.routing_table``."""

from __future__ import annotations

import json

from shardline.node._proto.shardline import v1
from shardline.node.serving.runtime import NodeRuntime


def describe(runtime: NodeRuntime) -> v1.RoutingTable:
    """This node alone: objectives, loaded models, each placed here."""
    table = base_table(runtime, "standalone")
    table.placements = [
        v1.ModelPlacement(model_key=key, replicas=1, owners=[runtime.config.node_id])
        for key in sorted(runtime.models)
    ]
    return table


def base_table(runtime: NodeRuntime, mode: str) -> v1.RoutingTable:
    """What every node's table holds: its id, objectives (as JSON) and loaded models."""
    objectives = {
        name: json.dumps(cfg.to_dict(), sort_keys=True) for name, cfg in runtime.objectives.items()
    }
    return v1.RoutingTable(
        node_id=runtime.config.node_id,
        objectives_json=objectives,
        loaded_models=sorted(runtime.models),
        mode=mode,
    )
