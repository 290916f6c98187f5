#!/usr/bin/env bash
# Shared set-up for run.sh and test.sh: Debian packages (when missing and we
# can install), then a virtual environment in .venv with the project.
#   deploy/setup.sh            runtime: the node with the web admin and the models extra
#   deploy/setup.sh test       runtime + test peers (dcmtk, Orthanc, dicom3tools, PostgreSQL, Chromium) + test extras
# The models extra (torch, SimpleITK, OpenCV, h5py, SciPy, highdicom: about 1.4 GB with the CPU torch) is
# installed in both modes: the README promises weight-free models and the self test
# out of the box.  A forward-only node installs without it: pip install '.[web]'.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"

apt_packages=(dcmtk)
if [ "$mode" = "test" ]; then
  apt_packages+=(orthanc dicom3tools postgresql chromium)
  # Node.js for the viewer check; a machine that already has node (e.g. v20) keeps it
  command -v node >/dev/null 2>&1 || apt_packages+=(nodejs npm)
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
  .venv/bin/pip install -q -e ".[test,web,postgres,models]"
else
  .venv/bin/pip install -q -e ".[web,models]"
fi

# --- viewer check (tests/viewer, test mode only) ------------------------------
# npm packages for the Node SEG check, and the prebuilt OHIF viewer (npm pack of
# @ohif/app, unpacked into the git-ignored tests/viewer/.ohif/) for the browser
# test.  Without node/npm those tests skip; see docs/viewer_check.md.
if [ "$mode" = "test" ]; then
  if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    npm ci --prefix tests/viewer --no-audit --no-fund --loglevel=error
    ohif_version="$(node -p "require('./tests/viewer/package.json').ohifApp")"
    ohif_dir=tests/viewer/.ohif
    ohif_found="$(node -p "try { require('./$ohif_dir/package/package.json').version } catch (e) { '' }")"
    if [ "$ohif_found" != "$ohif_version" ]; then
      echo "fetching @ohif/app@$ohif_version (prebuilt viewer, about 50 MB)"
      rm -rf "$ohif_dir" && mkdir -p "$ohif_dir"
      npm pack --silent --pack-destination "$ohif_dir" "@ohif/app@$ohif_version" >/dev/null
      tar xzf "$ohif_dir/ohif-app-$ohif_version.tgz" -C "$ohif_dir"
      rm "$ohif_dir/ohif-app-$ohif_version.tgz"
    fi
  else
    echo "node/npm not found: the viewer checks in tests/viewer will be skipped" >&2
  fi
fi
# --- end viewer check ----------------------------------------------------------
