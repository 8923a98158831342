"""Generate (or check) the committed protobuf code from the project's ``.proto`` files.

Each package owns its wire contract: ``node/proto`` -> ``node/_proto`` (the client and
peer API) and ``membership/proto`` -> ``membership/_proto`` (gossip). Two generators run
over the node contract: betterproto (service stubs and control-plane messages) and
protoc's own Python output (``*_pb2.py``, the upb runtime) for the data-plane messages
decoded on every request — see README, "Stack changes".

Run ``python -m shardline.node.ops.protogen`` after editing a ``.proto`` file; ``--check`` exits 1
when the committed code differs from what the ``.proto`` files generate (a test calls it). Needs the
``[dev]`` extra (``grpcio-tools`` and ``betterproto[compiler]``).
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Contract:
    proto_root: Path
    out_dir: Path
    upb: bool  # also emit *_pb2.py / *_pb2.pyi for the hot path

    def proto_files(self) -> list[Path]:
        return sorted(self.proto_root.rglob("*.proto"))


CONTRACTS = (
    Contract(REPO / "node" / "proto", REPO / "node" / "_proto", upb=True),
    Contract(REPO / "membership" / "proto", REPO / "membership" / "_proto", upb=False),
)


def generate(contract: Contract, out_dir: Path) -> None:
    """Run protoc over one contract into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = [f"--python_betterproto_out={out_dir}"]
    if contract.upb:
        outputs += [f"--python_out={out_dir}", f"--pyi_out={out_dir}"]
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{contract.proto_root}",
        *outputs,
        *(str(p.relative_to(contract.proto_root)) for p in contract.proto_files()),
    ]
    # The betterproto plugin sits beside this interpreter (a venv's bin/), which need not be
    # on PATH when the venv is not activated (CI calls .venv/bin/python directly).
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    done = subprocess.run(
        cmd,
        cwd=contract.proto_root,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PATH": path},
    )
    if done.returncode != 0:
        raise RuntimeError(f"protoc failed ({done.returncode}):\n{done.stderr}")


def _tree(root: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(root)): p
        for p in [*root.rglob("*.py"), *root.rglob("*.pyi")]
        if "__pycache__" not in p.parts
    }


def stale_files() -> list[str]:
    """Generated files that differ from a fresh generation (empty when all are current)."""
    diffs: list[str] = []
    for contract in CONTRACTS:
        if not contract.proto_files():
            continue
        with tempfile.TemporaryDirectory() as tmp:
            fresh_root = Path(tmp)
            generate(contract, fresh_root)
            fresh, committed = _tree(fresh_root), _tree(contract.out_dir)
            rel = contract.out_dir.relative_to(REPO)
            names = sorted(set(fresh) ^ set(committed))
            names += [
                n
                for n in sorted(set(fresh) & set(committed))
                if not filecmp.cmp(fresh[n], committed[n], shallow=False)
            ]
            diffs += [f"{rel}/{n}" for n in names]
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if generated code is stale")
    args = parser.parse_args(argv)
    if args.check:
        diffs = stale_files()
        if diffs:
            print(
                "generated code is stale; run `python -m shardline.node.ops.protogen`:",
                *diffs,
                sep="\n  ",
            )
            return 1
        print("generated code is up to date")
        return 0
    for contract in CONTRACTS:
        if not contract.proto_files():
            continue
        with tempfile.TemporaryDirectory() as tmp:
            generate(contract, Path(tmp))
            shutil.rmtree(contract.out_dir, ignore_errors=True)
            shutil.copytree(tmp, contract.out_dir)
        print(f"generated {len(_tree(contract.out_dir))} modules into {contract.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
