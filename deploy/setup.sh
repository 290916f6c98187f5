#!/usr/bin/env bash
# Shared set-up for run.sh and test.sh: Debian packages (when missing and we
# can install), then a virtual environment in .venv with the project.
#   deploy/setup.sh            runtime only
#   deploy/setup.sh test       runtime + test peers (dcmtk, Orthanc, dicom3tools, PostgreSQL, Chromium) + test extras
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"

apt_packages=(dcmtk)
if [ "$mode" = "test" ]; then
  apt_packages+=(orthanc dicom3tools postgresql chromium)
fi
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "missing Debian packages (install them as root): ${missing[*]}" >&2
    [ "$mode" = "test" ] && exit 1
  fi
fi

python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
if [ "$mode" = "test" ]; then
  .venv/bin/pip install -q -e ".[test,web,postgres]"
else
  .venv/bin/pip install -q -e ".[web]"
fi
