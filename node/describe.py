"""The routing table a node serves on ``Cluster.GetRoutingTable`` (status, smart clients)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from node._proto.shardline import v1
from node.runtime import NodeRuntime

if TYPE_CHECKING:
    from node.placement import Placement
    from node.routing import ClusterRouter


def describe(
    runtime: NodeRuntime,
    router: ClusterRouter | None = None,
    placement: Placement | None = None,
) -> v1.RoutingTable:
    objectives = {
        name: json.dumps(cfg.to_dict(), sort_keys=True) for name, cfg in runtime.objectives.items()
    }
    table = v1.RoutingTable(
        node_id=runtime.config.node_id,
        objectives_json=objectives,
        loaded_models=sorted(runtime.models),
        mode="standalone" if router is None else "cluster",
    )
    if router is None:
        table.placements = [
            v1.ModelPlacement(model_key=key, replicas=1, owners=[runtime.config.node_id])
            for key in sorted(runtime.models)
        ]
        return table
    state = router.state
    view = state.view
    table.revision = view.revision
    table.dead = sorted(view.dead)
    members = []
    for node_id, m in sorted(view.members.items()):
        r = m.record
        in_flight = runtime.in_flight if node_id == runtime.config.node_id else m.in_flight
        members.append(
            v1.MemberInfo(
                node_id=node_id,
                grpc_address=r.grpc_address,
                gossip_address=r.gossip_address,
                zone=r.zone,
                capacity=r.capacity,
                state=r.state.value,
                liveness=m.liveness.value,
                in_flight=in_flight,
                models=sorted(runtime.models)
                if node_id == runtime.config.node_id
                else list(m.models),
                devices=list(r.devices),
                version=r.version,
            )
        )
    table.members = members
    keys = sorted(set(state.replicas) | set(runtime.models))
    table.placements = [
        v1.ModelPlacement(
            model_key=key, replicas=state.replicas.get(key, 2), owners=list(state.owners(key))
        )
        for key in keys
    ]
    if placement is not None:
        table.load_failures = {k: f.message for k, f in placement.failures.items()}
    return table
