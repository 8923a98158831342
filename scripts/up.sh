#!/usr/bin/env bash
# Set up (first run) and start a local shardline node serving the example workflows.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/shardline serve --standalone --workflows workflows/examples "$@"
