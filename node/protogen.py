"""Generate (or check) the committed protobuf code in ``node/_proto`` from ``node/proto``.

Two generators run over the same ``.proto`` files: betterproto (service stubs and
control-plane messages, ``node/_proto/shardline/v1/__init__.py``) and protoc's own Python
output (``*_pb2.py``, the upb runtime) for the data-plane messages that are decoded on
every request — see README, "Stack changes".

Run ``python -m node.protogen`` after editing a ``.proto`` file; ``--check`` exits 1 when
the committed code differs from what the ``.proto`` files generate (the staleness test
calls it). Needs the ``[dev]`` extra (``grpcio-tools`` and ``betterproto[compiler]``).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROTO_ROOT = PACKAGE_DIR / "proto"
OUT_DIR = PACKAGE_DIR / "_proto"


def proto_files() -> list[Path]:
    """Every .proto file of the contract, sorted (stable generator input)."""
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: Path) -> None:
    """Run protoc with the betterproto plugin into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_betterproto_out={out_dir}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
    ]
    done = subprocess.run(cmd, cwd=PROTO_ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"protoc failed ({done.returncode}):\n{done.stderr}")


def _tree(root: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(root)): p
        for p in [*root.rglob("*.py"), *root.rglob("*.pyi")]
        if "__pycache__" not in p.parts
    }


def stale_files() -> list[str]:
    """Files of ``node/_proto`` that differ from a fresh generation (empty when current)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh_root = Path(tmp)
        generate(fresh_root)
        fresh, committed = _tree(fresh_root), _tree(OUT_DIR)
        diffs = sorted(set(fresh) ^ set(committed))
        for name in sorted(set(fresh) & set(committed)):
            if not filecmp.cmp(fresh[name], committed[name], shallow=False):
                diffs.append(name)
        return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if node/_proto is stale")
    args = parser.parse_args(argv)
    if args.check:
        diffs = stale_files()
        if diffs:
            print("node/_proto is stale; run `python -m node.protogen`:", *diffs, sep="\n  ")
            return 1
        print("node/_proto is up to date")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        shutil.rmtree(OUT_DIR, ignore_errors=True)
        shutil.copytree(tmp, OUT_DIR)
    print(f"generated {len(_tree(OUT_DIR))} modules into {OUT_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
