#!/usr/bin/env bash
# Set up everything and run the node with the default node.toml
# (SQLite, local spool, folder destination var/archive, no weights needed).
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/setup.sh run
exec .venv/bin/dicom-node --config "${DICOM_NODE_CONFIG:-node.toml}" serve
