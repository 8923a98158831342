#!/usr/bin/env bash
# Set up (first run) and start a local shardline cluster: etcd + 3 nodes with the examples.
# Extra arguments go to `shardline up` (e.g. --nodes 5, --detach).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/shardline up "$@"
