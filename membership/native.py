"""Optional compiled builds of the pure cores the simulator drives (mypyc).

The chaos simulator spends its time in the real SWIM, view, ring, replica and request-path
code. Compiled with mypyc (the mypy project's compiler for type-annotated Python: the same
source, type-checked, turned into a C extension) that code runs about twice as fast, with the
same results: a test runs every shipped scenario both ways and compares the trace hashes.

    python -m shardline.sim.native build [--if-stale]   # compile MODULES into .native/
    python -m shardline.sim.native status
    python -m shardline.sim.native clean

``scripts/setup.sh`` builds it when a C compiler is present; without one everything runs
as plain Python. The build lands in ``.native/<package>/`` beside the packages, never over
the sources, and is used only while it is *fresh*: ``.native/manifest.json`` records the
sha256 of every source in the compiled packages (and ``workflows``, which they import),
and a build whose sources changed since is not used: every compiled module falls back
to plain Python (so an edit takes effect at once, and the next
``scripts/setup.sh`` rebuilds). The choice is made once per process, for all the compiled
modules together (compiled modules call each other directly, so they cannot be mixed with
interpreted copies of one another). ``SHARDLINE_NATIVE=0`` forces plain Python.

This module decides and extends the packages' paths; ``shardline.sim.native`` builds. It must stay
importable before anything else in ``membership`` (its ``__init__`` calls ``extend``):
standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from pathlib import Path

#: The compiled modules: the pure cores and the simulator's hot path (one mypyc group).
MODULES = (
    "shardline.membership.dissemination",
    "shardline.membership.swim",
    "shardline.membership.swim_merge",
    "shardline.membership.swim_state",
    "shardline.membership.view",
    "shardline.router.replica",
    "shardline.router.ring",
    "shardline.sim.candidates",
    "shardline.sim.checks",
    "shardline.sim.core",
    "shardline.sim.executor",
    "shardline.sim.metrics",
    "shardline.sim.network",
    "shardline.sim.node",
    "shardline.sim.request",
    "shardline.sim.routing",
    "shardline.sim.serving",
    "shardline.sim.workload",
    "shardline.sim.world",
)
PACKAGES = ("shardline.membership", "shardline.router", "shardline.sim")
#: The packages whose sources the build depends on: the compiled modules and everything they
#: import from the project (compiled code bakes in the types it reads from other modules).
SOURCES = ("membership", "router", "sim", "workflows")
GROUP = "shardline.membership.cores"  # the library: .native/shardline/membership/cores__mypyc.*.so
ENV = "SHARDLINE_NATIVE"

ROOT = Path(__file__).resolve().parent.parent
NATIVE = ROOT / ".native"
MANIFEST = NATIVE / "manifest.json"

_enabled: bool | None = None  # decided once per process


def source_path(module: str) -> Path:
    return ROOT / (module.replace(".", "/") + ".py")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def source_digests() -> dict[str, str]:
    """sha256 of every Python source in ``SOURCES``, by path relative to the root."""
    return {
        str(path.relative_to(ROOT)): digest(path)
        for package in SOURCES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def abi() -> str:
    return str(sysconfig.get_config_var("EXT_SUFFIX"))


def state() -> str:
    """``fresh``, ``stale: <why>``, ``absent`` or ``disabled`` (by the environment)."""
    if os.environ.get(ENV, "") == "0":
        return "disabled"
    try:
        manifest = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return "absent"
    if manifest.get("abi") != abi():
        return f"stale: built for {manifest.get('abi')}, this interpreter loads {abi()}"
    if manifest.get("modules") != list(MODULES):
        return "stale: built from another module list"
    built: dict[str, str] = manifest.get("sources", {})
    now = source_digests()
    for path in sorted(built.keys() | now.keys()):
        if built.get(path) != now.get(path):
            what = "added" if path not in built else "removed" if path not in now else "changed"
            return f"stale: {path} {what} since the build"
    return "fresh"


def enabled() -> bool:
    """Whether this process uses the compiled modules (decided on first call)."""
    global _enabled
    if _enabled is None:
        _enabled = state() == "fresh"
    return _enabled


def extend(package: str, path: list[str]) -> None:
    """Called by each compiled package's ``__init__`` with its ``__path__``: when the
    build is used, the package's compiled modules are found first."""
    if package in PACKAGES and enabled():
        path.insert(0, str(NATIVE / package.replace(".", "/")))
