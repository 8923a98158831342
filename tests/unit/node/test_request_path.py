"""The request path goes one way: ingress → router → executor here (or a peer there).

Two checks. The imports of ``node/`` (module level, ``TYPE_CHECKING`` and function-local
alike) form no circle, and the parts of the path import only downstream: the ingress no
router and no executor, a router no ingress, the executor neither. And a real request,
standalone and through the cluster router (a one-node view: no sockets), reaches
``Executor.execute`` by exactly those hops, with no frame of the ingress below a router's;
a shadow copy runs on the executor without passing through the ingress again.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from membership.registry import NodeRecord, NodeState
from membership.snapshot import ClusterSnapshot
from membership.view import Liveness, MembershipView, ViewMember
from node._proto.shardline.v1 import inference_pb2 as pb
from node._proto.shardline.v1 import peer_pb2
from node.client import build_request
from node.executor import Executor
from node.node_config import NodeConfig
from node.peers import PeerPool
from node.routing import ClusterRouter
from node.runtime import NodeRuntime
from router.objectives import ObjectiveConfig
from tests.procs import EXAMPLES, REPO

NODE = REPO / "node"
KNOWN_CIRCLES = [{"node.cli", "node.cli_admin"}]  # the lead untangles the CLI's (issue 14)
V1, V2 = "payment_fraud@1", "payment_fraud@2"


# -- imports -------------------------------------------------------------------------------


def _imports(path: Path, package: str = "node") -> set[str]:
    """Every module ``path`` imports (anywhere in the file), as dotted names."""
    out: set[str] = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            out.add(n.module)
            out.update(f"{n.module}.{a.name}" for a in n.names)
        elif isinstance(n, ast.Import):
            out.update(a.name for a in n.names)
    return out


def _graph() -> dict[str, set[str]]:
    modules = {f"node.{p.stem}": p for p in NODE.glob("*.py") if p.stem != "__init__"}
    return {m: (_imports(p) & modules.keys()) - {m} for m, p in modules.items()}


def _circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_node_modules_import_no_circle() -> None:
    circles = [c for c in _circles(_graph()) if c not in KNOWN_CIRCLES]
    assert circles == [], f"import circles in node/: {circles}"


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("node.ingress", {"node.local_router", "node.routing", "node.peers", "node.executor"}),
        ("node.local_router", {"node.ingress", "node.runtime", "node.routing"}),
        ("node.routing", {"node.ingress", "node.runtime"}),
        ("node.peers", {"node.ingress", "node.runtime", "node.routing", "node.executor"}),
        (
            "node.executor",
            {"node.ingress", "node.runtime", "node.routing", "node.local_router", "node.peers"},
        ),
    ],
)
def test_request_path_imports_point_downstream(module: str, forbidden: set[str]) -> None:
    imported = _imports(NODE / f"{module.split('.')[1]}.py")
    assert not imported & forbidden, f"{module} imports {sorted(imported & forbidden)}"
    if module == "node.executor":  # it is told what to run: no rules, no ring
        assert not {m for m in imported if m.startswith("router")}, sorted(imported)


# -- a real request ------------------------------------------------------------------------


def _hops(frame: FrameType | None) -> list[str]:
    """The ``node`` modules on the stack below ``frame``, outermost first, repeats merged."""
    names: list[str] = []
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name.startswith("node.") and (not names or names[-1] != name):
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
    assert ("execute", V1, ["node.ingress", "node.local_router"]) in calls
    assert ("run_shadow", V2, ["node.local_router"]) in calls
    assert len(calls) == 2, calls


async def test_cluster_request_goes_one_way(calls: list[tuple[str, str, list[str]]]) -> None:
    runtime = await _runtime()
    record = NodeRecord("n1", "127.0.0.1:1", "127.0.0.1:2", capacity=1.0, state=NodeState.ACTIVE)
    view = MembershipView(1, {"n1": ViewMember(record, Liveness.ALIVE, models=(V1, V2))})
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
    assert ("execute", V1, ["node.ingress", "node.routing"]) in calls
    assert ("run_shadow", V2, ["node.local_router"]) in calls
    assert ("execute", V1, ["node.routing"]) in calls  # a peer's Forward: no ingress here
    assert len(calls) == 3, calls
