"""The request path goes one way: ingress → router → executor here (or a peer there).

Two checks. The parts of the path import only downstream (every import counts, module
level, ``TYPE_CHECKING`` and function-local alike; circles are checked by
``tests/unit/test_import_graph.py``): the ingress no router and no executor, a router no
ingress, the executor neither. And a real request, standalone and through the cluster router
(a one-node view: no sockets), reaches ``Executor.execute`` by exactly those hops, with no
frame of the ingress below a router's; a shadow copy runs on the executor without passing
through the ingress again.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from types import FrameType
from typing import Any

import pytest

from shardline.membership.registry import NodeRecord, NodeState
from shardline.membership.snapshot import ClusterSnapshot
from shardline.membership.view import Liveness, MembershipView, ViewMember
from shardline.node._proto.shardline.v1 import inference_pb2 as pb
from shardline.node._proto.shardline.v1 import peer_pb2
from shardline.node.cluster.peers import PeerPool
from shardline.node.cluster.routing import ClusterRouter
from shardline.node.sdk.client import build_request
from shardline.node.serving.executor import Executor
from shardline.node.serving.node_config import NodeConfig
from shardline.node.serving.runtime import NodeRuntime
from shardline.router.objectives import ObjectiveConfig
from tests.procs import EXAMPLES
from tests.unit.test_import_graph import graph

GRAPH = graph()
V1, V2 = "payment_fraud@1", "payment_fraud@2"


# -- imports (the whole graph, circles included: tests/unit/test_import_graph.py) -----------


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        (
            "shardline.node.serving.ingress",
            {
                "shardline.node.serving.local_router",
                "shardline.node.cluster.routing",
                "shardline.node.cluster.peers",
                "shardline.node.serving.executor",
            },
        ),
        (
            "shardline.node.serving.local_router",
            {
                "shardline.node.serving.ingress",
                "shardline.node.serving.runtime",
                "shardline.node.cluster.routing",
            },
        ),
        (
            "shardline.node.cluster.routing",
            {"shardline.node.serving.ingress", "shardline.node.serving.runtime"},
        ),
        (
            "shardline.node.cluster.peers",
            {
                "shardline.node.serving.ingress",
                "shardline.node.serving.runtime",
                "shardline.node.cluster.routing",
                "shardline.node.serving.executor",
            },
        ),
        (
            "shardline.node.serving.executor",
            {
                "shardline.node.serving.ingress",
                "shardline.node.serving.runtime",
                "shardline.node.cluster.routing",
                "shardline.node.serving.local_router",
                "shardline.node.cluster.peers",
            },
        ),
    ],
)
def test_request_path_imports_point_downstream(module: str, forbidden: set[str]) -> None:
    imported = GRAPH[module]
    assert not imported & forbidden, f"{module} imports {sorted(imported & forbidden)}"
    if module == "shardline.node.serving.executor":  # it is told what to run: no rules, no ring
        assert not {m for m in imported if m.startswith("shardline.router")}, sorted(imported)


# -- a real request ------------------------------------------------------------------------


def _hops(frame: FrameType | None) -> list[str]:
    """The ``node`` modules on the stack below ``frame``, outermost first, repeats merged."""
    names: list[str] = []
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name.startswith("shardline.node.") and (not names or names[-1] != name):
            names.append(name)
        frame = frame.f_back
    return names[::-1]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str, list[str]]]]:
    """(method, model key, hops) for every call into the executor's request methods."""
    seen: list[tuple[str, str, list[str]]] = []
    execute, run_shadow = Executor.execute, Executor.run_shadow

    async def spy_execute(self: Executor, raw: bytes, model_key: str, *a: Any, **k: Any) -> bytes:
        seen.append(("execute", model_key, _hops(sys._getframe(1))))
        return await execute(self, raw, model_key, *a, **k)

    async def spy_shadow(self: Executor, raw: bytes, model_key: str, context: Any) -> None:
        seen.append(("run_shadow", model_key, _hops(sys._getframe(1))))
        await run_shadow(self, raw, model_key, context)

    monkeypatch.setattr(Executor, "execute", spy_execute)
    monkeypatch.setattr(Executor, "run_shadow", spy_shadow)
    yield seen


async def _runtime() -> NodeRuntime:
    runtime = NodeRuntime(NodeConfig(node_id="n1"))
    for key in (V1, V2):
        name, _, version = key.partition("@")
        await runtime.executor.load_workflow(EXAMPLES / name / f"v{version}", expect_key=key)
    objective = {"name": "fraud", "default": V1, "shadows": [{"model": V2, "percent": 100.0}]}
    runtime.set_objectives({"fraud": ObjectiveConfig.from_dict(objective)})
    return runtime


def _request(runtime: NodeRuntime) -> bytes:
    fields, inputs = runtime.executor.models[V1].loaded.workflow.example_request()
    return build_request("fraud", inputs, **fields)  # type: ignore[no-any-return]


def _answer(raw: bytes) -> Any:
    response = pb.PredictResponse()
    response.ParseFromString(raw)
    return response.provenance


async def test_standalone_request_goes_one_way(calls: list[tuple[str, str, list[str]]]) -> None:
    runtime = await _runtime()
    try:
        answer = await runtime.ingress.predict(_request(runtime), 10.0)
        await runtime.shadows.drain()
    finally:
        await runtime.stop()
    assert (_answer(answer).model_key, _answer(answer).hops) == (V1, 0)
    assert (
        "execute",
        V1,
        ["shardline.node.serving.ingress", "shardline.node.serving.local_router"],
    ) in calls
    assert ("run_shadow", V2, ["shardline.node.serving.local_router"]) in calls
    assert len(calls) == 2, calls


async def test_cluster_request_goes_one_way(calls: list[tuple[str, str, list[str]]]) -> None:
    runtime = await _runtime()
    record = NodeRecord("n1", "127.0.0.1:1", "127.0.0.1:2", capacity=1.0, state=NodeState.ACTIVE)
    view = MembershipView(1, {"n1": ViewMember(record, Liveness.ALIVE, models=frozenset((V1, V2)))})
    manifests = {k: {"manifest": {"replicas": 1}} for k in (V1, V2)}
    router = ClusterRouter(runtime.executor, runtime.shadows, PeerPool())
    router.catalog_models = frozenset(manifests)
    router.on_view(view, ClusterSnapshot(1, workflows=manifests))
    runtime.use_router(router)
    raw = _request(runtime)
    forward = peer_pb2.ForwardRequest(request=raw, hops=1, model_key=V1, cell="default")
    try:
        answer = await runtime.ingress.predict(raw, 10.0)
        await runtime.shadows.drain()
        forwarded = await router.serve_forward(forward, 10.0, 0.0)
    finally:
        await runtime.stop()
    assert _answer(answer).model_key == V1
    assert _answer(forwarded).hops == 1
    assert (
        "execute",
        V1,
        ["shardline.node.serving.ingress", "shardline.node.cluster.routing"],
    ) in calls
    assert ("run_shadow", V2, ["shardline.node.serving.local_router"]) in calls
    assert (
        "execute",
        V1,
        ["shardline.node.cluster.routing"],
    ) in calls  # a peer's Forward: no ingress here
    assert len(calls) == 3, calls
