"""The routing table a cluster node serves on ``Cluster.GetRoutingTable`` (``shardline status``,
smart clients): the standalone part (``shardline.node.serving.describe``) plus the members with
their state, liveness, load and warm models, the owners of every key and this node's load
failures."""

from __future__ import annotations

from shardline.node._proto.shardline import v1
from shardline.node.cluster.placement import Placement
from shardline.node.cluster.routing import ClusterRouter
from shardline.node.serving.describe import base_table
from shardline.node.serving.runtime import NodeRuntime


def describe_cluster(
    runtime: NodeRuntime, router: ClusterRouter, placement: Placement | None = None
) -> v1.RoutingTable:
    table = base_table(runtime, "cluster")
    state = router.state
    view = state.view
    table.revision = view.revision
    table.dead = sorted(view.dead)
    budget = placement.residence.budget_bytes if placement is not None else 0
    members = []
    for node_id, m in sorted(view.members.items()):
        r = m.record
        here = node_id == runtime.config.node_id
        loaded = runtime.executor.loaded_set(node_id, budget) if here else m.loaded
        members.append(
            v1.MemberInfo(
                node_id=node_id,
                grpc_address=r.grpc_address,
                gossip_address=r.gossip_address,
                zone=r.zone,
                capacity=r.capacity,
                state=r.state.value,
                liveness=m.liveness.value,
                in_flight=runtime.in_flight if here else m.in_flight,
                models=sorted(runtime.models) if here else sorted(m.models),
                devices=list(r.devices),
                version=r.version,
                resident_bytes=loaded.resident_bytes if loaded else 0,
                budget_bytes=loaded.budget_bytes if loaded else 0,
                loading=sorted(loaded.loading) if loaded else [],
                loads=loaded.loads if loaded else 0,
                evictions=loaded.evictions if loaded else 0,
                settled=loaded.settled if loaded else False,
            )
        )
    table.members = members
    keys = sorted(set(state.replicas) | set(runtime.models))
    pinned = placement.pinned() if placement is not None else frozenset()
    table.placements = [
        v1.ModelPlacement(
            model_key=key,
            replicas=state.replicas.get(key, 2),
            owners=list(state.owners(key)),
            footprint_bytes=(
                runtime.executor.footprint(key)
                or (placement.residence.declared_bytes(key) if placement is not None else 0)
            ),
            pinned=key in pinned,
        )
        for key in keys
    ]
    if placement is not None:
        failures = {
            k: reason
            for k, (_, reason) in placement.residence.failed.items()
            if k in router.catalog_models  # (an undeployed key's failure goes with it)
        }
        failures.update({k: f.message for k, f in placement.failures.items()})
        table.load_failures = failures  # placement's, and lazy loads' that failed
    return table
