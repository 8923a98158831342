#!/usr/bin/env bash
# Set up (first run) and run the whole test suite plus lint and type checks.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy -p shardline
exec .venv/bin/python -m pytest -q "$@"
