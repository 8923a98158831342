"""The project's import graph: no circles, and imports only in the documented direction.

Every import counts — module level, inside functions, and under ``if TYPE_CHECKING:`` — since
a circle through any of them still ties the modules together for a reader (and for a
refactoring). The allowed directions between the top-level packages are the ones
``docs/architecture.md`` documents:

    node -> router, membership, workflows     (the process: CLI -> cluster -> serving -> cores)
    sim  -> router, membership, workflows     (never node; only the CLI loads sim.cli)
    router -> membership                      (views and data types only)
    membership, workflows -> nothing of the project
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("node", "router", "membership", "workflows", "sim")
ALLOWED = {
    "node": {"node", "router", "membership", "workflows"},
    "sim": {"sim", "router", "membership", "workflows"},
    "router": {"router", "membership"},
    "membership": {"membership"},
    "workflows": {"workflows"},
}
#: The command line is the top of the house: `shardline sim` loads the simulator's CLI.
ALLOWED_MODULES = {("node.cli", "sim.cli")}
GENERATED = ("node/_proto/", "membership/_proto/")


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel.startswith(GENERATED):
                continue
            name = rel[: -len(".py")].replace("/", ".").removesuffix(".__init__")
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
            # the longest project module the target names (a module, or a name in one)
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                yield target


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: set(imported(path, name, known)) for name, path in known.items()}


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
        f"{src} imports {dst}"
        for src, targets in graph().items()
        for dst in sorted(targets)
        if dst.split(".")[0] not in ALLOWED[src.split(".")[0]] and (src, dst) not in ALLOWED_MODULES
    ]
    assert not wrong, "imports against the documented direction:\n" + "\n".join(wrong)


def test_the_checker_sees_a_circle_and_a_wrong_way_import() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
    edges = graph()
    assert "router.ring" in edges["router.handoff"]  # the graph sees real imports
