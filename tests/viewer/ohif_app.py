"""OHIF's prebuilt viewer for the browser tests: where it is, its offline config, and its server process."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.peers import stop_pid, wait_port

VIEWER_DIR = Path(__file__).resolve().parent
OHIF_VERSION = json.loads((VIEWER_DIR / "package.json").read_text())["ohifApp"]
OHIF_DIST = VIEWER_DIR / ".ohif" / "package" / "dist"  # unpacked by deploy/setup.sh test

# OHIF's default extensions and modes are compiled into the bundle; this only
# swaps the data source for "files the user picked" (no PACS, no DICOMweb)
# and turns off what would interrupt an unattended run.
APP_CONFIG = {
    "routerBasename": "/",
    "extensions": [],
    "modes": [],
    "showStudyList": True,
    "maxNumberOfWebWorkers": 2,
    "showWarningMessageForCrossOrigin": False,
    "showCPUFallbackMessage": False,
    "showLoadingIndicator": True,
    "strictZSpacingForVolumeViewport": True,
    "investigationalUseDialog": {"option": "never"},
    "defaultDataSourceName": "dicomlocal",
    "dataSources": [{
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomlocal",
        "sourceName": "dicomlocal",
        "configuration": {"friendlyName": "local files"},
    }],
}


def dist_missing_reason() -> str | None:
    """Why the packaged viewer cannot be served, or None when it can."""
    package = OHIF_DIST.parent / "package.json"
    if not (OHIF_DIST / "index.html").is_file() or not package.is_file():
        return f"OHIF dist missing in {OHIF_DIST} (deploy/setup.sh test fetches @ohif/app@{OHIF_VERSION} with npm pack)"
    found = json.loads(package.read_text()).get("version")
    if found != OHIF_VERSION:
        return f"{OHIF_DIST.parent} holds @ohif/app {found}, the tests expect {OHIF_VERSION}"
    return None


def write_app_config(path: Path) -> Path:
    path.write_text(f"window.config = {json.dumps(APP_CONFIG, indent=2)};\n")
    return path


@dataclass
class OhifServer:
    """``ohif_server.py`` in a subprocess on a free 127.0.0.1 port, stopped by PID."""

    workdir: Path
    proc: subprocess.Popen | None = None
    port: int = 0
    log_path: Path = field(init=False)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OhifServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = write_app_config(self.workdir / "app-config.js")
        self.log_path = self.workdir / "ohif-server.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(VIEWER_DIR / "ohif_server.py"), str(OHIF_DIST), str(config)],
            stdout=subprocess.PIPE, stderr=self._log, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.isdigit():
            self.stop()
            raise RuntimeError(f"OHIF server did not start: {line!r}, see {self.log_path}")
        self.port = int(line)
        wait_port(self.port, 10, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc, 10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self._log.close()
