#!/usr/bin/env bash
# Set up everything (Debian peers + venv) and run the test suite.
# Extra arguments go to pytest, e.g. deploy/test.sh -k receiver -x
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/setup.sh test
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
