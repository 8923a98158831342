"""The project's import graph: no circles, and imports only in the documented direction.

Every import counts — module level, inside functions, and under ``if TYPE_CHECKING:`` — since
a circle through any of them still ties the modules together for a reader (and for a
refactoring). The allowed directions are the ones ``docs/architecture.md`` documents; each
room's ``__init__`` says the same for its own imports:

    shardline.node: ops -> cluster -> serving -> observability -> sdk -> the cores
    (ops, the command line, may also load shardline.sim for `shardline sim`)
    shardline.sim -> router, membership, workflows        (never node)
    shardline.router -> membership                         (views and data types only)
    shardline.membership, shardline.workflows -> nothing of the project
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("node", "router", "membership", "workflows", "sim")
GENERATED = ("node/_proto/", "node/_proto_oip/", "membership/_proto/")
CORES = {"router", "membership", "workflows"}
#: Where each part may import from (parts are top-level packages, or rooms of node).
ALLOWED = {
    "sdk": {"sdk", "_proto", "router", "membership"},
    "observability": {"observability", "sdk", "_proto", *CORES},
    "serving": {"serving", "observability", "sdk", "_proto", "_proto_oip", *CORES},
    "cluster": {"cluster", "serving", "observability", "sdk", "_proto", *CORES},
    "ops": {"ops", "cluster", "serving", "observability", "sdk", "_proto", "sim", *CORES},
    "node": {"_proto", *CORES},  # node/__init__.py
    "_proto": {"_proto"},
    "_proto_oip": {"_proto_oip"},
    "sim": {"sim", *CORES},
    "router": {"router", "membership"},
    "membership": {"membership"},
    "workflows": {"workflows"},
}


def part(module: str) -> str:
    """The part of the house a module belongs to: a room of node, or a top-level package."""
    names = module.split(".")[1:]  # without "shardline"
    if names[0] == "node" and len(names) > 1:
        return names[1]
    return names[0]


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel.startswith(GENERATED):
                continue
            name = "shardline." + rel[: -len(".py")].replace("/", ".").removesuffix(".__init__")
            out[name] = path
    return out


def imported(path: Path, name: str, known: dict[str, Path]) -> Iterator[str]:
    """The project modules ``path`` (module ``name``) imports, anywhere in its body."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")
                parts = parts if is_package else parts[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            if target.startswith("shardline.node._proto"):
                yield "shardline.node._proto"
                continue
            # the longest project module the target names (a module, or a name in one)
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                yield target


def graph() -> dict[str, set[str]]:
    known = modules()
    known_and_proto = {**known, "shardline.node._proto": REPO / "node" / "_proto"}
    return {name: set(imported(path, name, known_and_proto)) for name, path in known.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles() -> None:
    found = circles(graph())
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_imports_go_the_documented_way() -> None:
    wrong = [
        f"{src} ({part(src)}) imports {dst} ({part(dst)})"
        for src, targets in graph().items()
        for dst in sorted(targets)
        if part(dst) not in ALLOWED[part(src)]
    ]
    assert not wrong, "imports against the documented direction:\n" + "\n".join(wrong)


def test_every_module_has_a_place() -> None:
    assert {part(m) for m in modules()} <= set(ALLOWED)


def test_the_checker_sees_a_circle_and_a_wrong_way_import() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
    edges = graph()
    assert "shardline.router.ring" in edges["shardline.router.handoff"]  # real imports seen
    assert part("shardline.node.sdk.client") == "sdk" and part("shardline.sim.core") == "sim"
    assert "serving" not in ALLOWED["sdk"]  # the SDK may not reach into the serving path
