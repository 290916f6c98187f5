#!/usr/bin/env bash
# Set up everything (Debian peers + venv), lint and type-check, then run the test suite.
#   deploy/test.sh                 set-up, ruff, mypy, every test
#   deploy/test.sh --fast          ruff, mypy, then only the fast tier (pytest -m fast, under a minute);
#                                  reuses .venv when an earlier deploy/test.sh built it
# Other arguments go to pytest, e.g. deploy/test.sh -k receiver -x, or deploy/test.sh --fast -k rules
set -euo pipefail
cd "$(dirname "$0")/.."
fast=0
pytest_args=()
for arg in "$@"; do
  if [ "$arg" = "--fast" ]; then fast=1; else pytest_args+=("$arg"); fi
done

# The day-to-day loop skips the set-up (apt, pip, npm: minutes) when the venv has the test tools;
# run the full deploy/test.sh after a dependency changes.
if [ "$fast" = 0 ] || [ ! -x .venv/bin/ruff ] || [ ! -x .venv/bin/mypy ] || [ ! -x .venv/bin/dicom-node ]; then
  deploy/setup.sh test
fi

echo "ruff check"
.venv/bin/ruff check .
echo "mypy (settings in mypy.ini: routing_rules strict, dicom_node and ai_models default)"
.venv/bin/mypy
if [ "$fast" = 1 ]; then
  exec .venv/bin/python -m pytest -q -p no:cacheprovider -m fast ${pytest_args[@]+"${pytest_args[@]}"}
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider ${pytest_args[@]+"${pytest_args[@]}"}
