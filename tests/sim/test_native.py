"""The compiled cores (mypyc, ``shardline.membership.native``) give the same runs as plain Python.

Every shipped scenario (its first 40 virtual seconds) and the swarm-style determinism
scenario run in two processes, one forced to plain Python (``SHARDLINE_NATIVE=0``), one on
the compiled build; their trace hashes, summaries and checks must be identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import shardline.membership.native as native

ROOT = Path(__file__).resolve().parents[2]

RUN = """
import json, sys
from shardline.membership import native
from shardline.sim import serving
from shardline.sim.result import run_scenario
from shardline.sim.scenario import load_scenario, scenario_names
assert native.enabled() == (sys.argv[1] == "1"), native.state()
assert serving.__file__.endswith(".py") != (sys.argv[1] == "1"), serving.__file__
from bench.sim_fleet import scaled
out = {}
for name in scenario_names():
    if name == "fleet_1000_nodes":  # minutes at full size: replayed scaled down below
        s = scaled(30, 2000, 10.0)
    else:
        s = load_scenario(name)
        s = s.with_overrides(duration_s=min(s.duration_s, 40.0))
    r = run_scenario(s, seed=11)
    out[name] = [r.trace_hash, r.summary["requests"], [(c.name, c.ok) for c in r.checks]]
print(json.dumps(out))
"""


def run_all(compiled: bool) -> dict[str, object]:
    env = {**os.environ, native.ENV: "1" if compiled else "0"}
    proc = subprocess.run(
        [sys.executable, "-c", RUN, "1" if compiled else "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, object] = json.loads(proc.stdout)
    return result


@pytest.mark.skipif(
    native.state() != "fresh",
    reason=f"compiled cores not built ({native.state()}): python -m shardline.sim.native build",
)
def test_compiled_cores_replay_every_scenario_identically() -> None:
    compiled = run_all(True)
    plain = run_all(False)
    assert set(compiled) == set(plain) and len(plain) >= 8
    for name in plain:
        assert compiled[name] == plain[name], name


def test_build_is_used_only_while_fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = tmp_path / "manifest.json"
    monkeypatch.setattr(native, "MANIFEST", manifest)
    assert native.state() == "absent"
    sources = native.source_digests()
    assert "membership/swim.py" in sources and "sim/report.py" in sources  # (not compiled)
    modules = list(native.MODULES)

    def write(**fields: object) -> None:
        manifest.write_text(json.dumps({"abi": native.abi(), "modules": modules} | fields))

    write(sources=sources)
    assert native.state() == "fresh"
    write(sources=sources | {"membership/swim.py": "0" * 64})
    assert native.state() == "stale: membership/swim.py changed since the build"
    write(sources={k: v for k, v in sources.items() if k != "sim/report.py"})
    assert native.state() == "stale: sim/report.py added since the build"
    write(sources=sources | {"sim/gone.py": "0" * 64})
    assert native.state() == "stale: sim/gone.py removed since the build"
    write(sources=sources, abi=".cpython-39-x.so")
    assert native.state().startswith("stale: built for .cpython-39-x.so")
    write(sources=sources, modules=["shardline.sim.core"])
    assert native.state() == "stale: built from another module list"
    monkeypatch.setenv(native.ENV, "0")
    assert native.state() == "disabled"


def test_extend_puts_the_build_first_only_when_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    path = ["src"]
    monkeypatch.setattr(native, "_enabled", False)
    native.extend("shardline.sim", path)
    assert path == ["src"]
    monkeypatch.setattr(native, "_enabled", True)
    native.extend("shardline.node", path)  # not a compiled package
    assert path == ["src"]
    native.extend("shardline.sim", path)
    assert path == [str(native.NATIVE / "shardline" / "sim"), "src"]
