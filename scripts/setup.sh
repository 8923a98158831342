#!/usr/bin/env bash
# Create .venv (Python >= 3.11) and install shardline with its dev and fast (uvloop) extras,
# idempotently.
# torch is pinned through constraints.txt (a CPU build); bring your own CUDA build on GPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "shardline needs Python >= 3.11 (found: $("$PY" --version 2>&1))" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.shardline-installed
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing shardline and its dependencies into .venv (first run takes a minute or two)" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -c constraints.txt -e '.[dev,fast]'
  echo "$want" > "$stamp"
fi
# The simulator's cores compiled with mypyc (about twice as fast, same traces; see
# sim/native.py): built when a C compiler is present, rebuilt when their sources change.
if command -v cc >/dev/null 2>&1; then
  .venv/bin/python -m shardline.sim.native build --if-stale || echo "continuing with plain Python" >&2
fi
