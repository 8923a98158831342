"""Build the compiled cores (``shardline.membership.native`` decides when they are used).

    python -m shardline.sim.native build [--if-stale]   # mypyc: MODULES -> .native/, about a minute
    python -m shardline.sim.native status               # fresh, stale (and why), absent or disabled
    python -m shardline.sim.native clean

Needs the dev extra (mypy, which ships mypyc) and a C compiler; ``scripts/setup.sh`` runs
``build --if-stale`` when ``cc`` is on the PATH. A failed build leaves plain Python.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from shardline.membership.native import (
    GROUP,
    MANIFEST,
    MODULES,
    NATIVE,
    PACKAGES,
    ROOT,
    abi,
    source_digests,
    source_path,
    state,
)


def build(*, verbose: bool = False) -> None:
    """Compile ``MODULES`` into ``.native/`` (replacing an earlier build)."""
    from mypyc.build import mypycify

    setuptools: Any = importlib.import_module("setuptools")  # (no type stubs)
    sources = source_digests()
    with tempfile.TemporaryDirectory(prefix="shardline-native-") as tmp:
        work = Path(tmp)
        cwd = Path.cwd()
        os.chdir(ROOT)  # mypyc reads the mypy settings in pyproject.toml
        try:
            extensions = mypycify(
                [str(source_path(m).relative_to(ROOT)) for m in MODULES],
                group_name=GROUP,
                target_dir=str(work / "c"),
                opt_level="3",
                verbose=verbose,
            )
            dist = setuptools.Distribution({"ext_modules": extensions, "script_name": "setup.py"})
            cmd = dist.get_command_obj("build_ext")
            cmd.build_lib = str(work / "lib")
            cmd.build_temp = str(work / "tmp")
            cmd.parallel = os.cpu_count() or 1
            dist.run_command("build_ext")
        finally:
            os.chdir(cwd)
        clean()
        for package in PACKAGES:
            where = package.replace(".", "/")
            (NATIVE / where).mkdir(parents=True)
            for lib in (work / "lib" / where).glob("*" + abi()):
                shutil.copy2(lib, NATIVE / where / lib.name)
    manifest = {"abi": abi(), "modules": list(MODULES), "sources": sources}
    MANIFEST.write_text(json.dumps(manifest, indent=1) + "\n")


def clean() -> None:
    shutil.rmtree(NATIVE, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shardline.sim.native", description=__doc__)
    parser.add_argument("command", choices=("build", "status", "clean"))
    parser.add_argument("--if-stale", action="store_true", help="build only when not fresh")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "status":
        print(f"compiled cores ({NATIVE}): {state()}")
        return 0
    if args.command == "clean":
        clean()
        return 0
    current = state()
    if args.if_stale and current in ("fresh", "disabled"):
        return 0
    print(f"compiling the simulator's cores with mypyc ({current}); about a minute", flush=True)
    try:
        build(verbose=args.verbose)
    except (Exception, SystemExit) as exc:  # (setuptools reports compiler failures as exits)
        clean()
        print(f"compiled cores not built, plain Python it is: {exc!r}", file=sys.stderr)
        return 1
    print(f"compiled {len(MODULES)} modules into {NATIVE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
