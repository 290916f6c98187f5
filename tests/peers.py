"""Real DICOM peers for tests: the node itself, Orthanc, dcmtk storescp/storescu.

Everything binds to 127.0.0.1 on free ports and is stopped by PID.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def stop_pid(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


@dataclass
class Orthanc:
    """A throwaway Orthanc: DICOM + HTTP on free loopback ports."""

    workdir: Path
    aet: str = "ORTHANC"
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    def start(self, modalities: dict | None = None) -> Orthanc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "test-orthanc", "StorageDirectory": str(self.workdir / "storage"), "IndexDirectory": str(self.workdir / "index"),
            "DicomAet": self.aet, "DicomPort": self.dicom_port, "HttpPort": self.http_port, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True, "DicomModalities": modalities or {}, "Plugins": [], "StableAge": 1,
            "HttpServerEnabled": True, "DicomAssociationCloseDelay": 0, "StorageCompression": False,
        }
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(config))
        self.log = open(self.workdir / "orthanc.log", "wb")
        self.proc = subprocess.Popen(["Orthanc", str(cfg)], stdout=self.log, stderr=subprocess.STDOUT, env=DCMTK_ENV)
        wait_port(self.http_port, 30, self.proc)
        wait_port(self.dicom_port, 30, self.proc)
        return self

    def get(self, path: str):  # type: ignore[no-untyped-def]
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as rsp:
            body = rsp.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def instances(self) -> list[str]:
        return self.get("/instances")

    def instance_file(self, orthanc_id: str) -> bytes:
        return self.get(f"/instances/{orthanc_id}/file")

    def sop_uids(self) -> dict[str, str]:
        """SOP Instance UID -> Orthanc id for everything stored."""
        out = {}
        for oid in self.instances():
            tags = self.get(f"/instances/{oid}/simplified-tags")
            out[tags["SOPInstanceUID"]] = oid
        return out

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc, 30)
            self.log.close()


@dataclass
class StoreSCP:
    """dcmtk storescp writing what it receives into a folder, as received (+B)."""

    folder: Path
    aet: str = "STORESCP"
    port: int = field(default_factory=free_port)
    accept_all: bool = True  # +xa: every transfer syntax; False: uncompressed only (storescp's default)
    unique_names: bool = False  # +uf: a new file per object received, so duplicates can be counted
    proc: subprocess.Popen | None = None

    def start(self) -> StoreSCP:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log = open(self.folder.parent / f"storescp-{self.port}.log", "wb")
        self.proc = subprocess.Popen(
            ["storescp", "-aet", self.aet, "+B", *(["+xa"] if self.accept_all else []), *(["+uf"] if self.unique_names else []),
             "-od", str(self.folder), str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT, env=DCMTK_ENV,
        )
        wait_port(self.port, 15, self.proc)
        return self

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc)
            self.log.close()


def storescu(port: int, files: list[Path] | list[str], *, called: str = "DICOM_NODE", calling: str = "STORESCU", extra: list[str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """dcmtk storescu with Nagle off; returns the completed process (check returncode)."""
    args = ["storescu", "-aet", calling, "-aec", called, *(extra or []), "127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(args, env=DCMTK_ENV, capture_output=True, text=True, timeout=timeout)


@dataclass
class NodeProcess:
    """``dicom-node serve`` in a subprocess with a config written for the test."""

    workdir: Path
    port: int = field(default_factory=free_port)
    destinations: dict = field(default_factory=dict)
    rules: dict[str, str] = field(default_factory=dict)
    extra_config: str = ""
    quiet_seconds: float = 1.0
    proc: subprocess.Popen | None = None
    # The benchmark runs an older revision of the node beside this one: its CLI module and its source folder.
    cli_module: str = "dicom_node.cli.main"
    source: Path | None = None

    @property
    def config_path(self) -> Path:
        return self.workdir / "node.toml"

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        rules_dir = self.workdir / "rules"
        rules_dir.mkdir(exist_ok=True)
        for name, text in self.rules.items():
            (rules_dir / name).write_text(text)
        dest_lines = []
        for name, spec in self.destinations.items():
            dest_lines.append(f"[destinations.{name}]")
            dest_lines += [f"{k} = {json.dumps(v)}" for k, v in spec.items()]
        self.config_path.write_text(
            f"""
[node]
ae_title = "DICOM_NODE"
port = {self.port}

[storage]
spool = "spool"
min_free_mb = 10

[database]
url = "sqlite:///node.db"

[completion]
series_quiet_seconds = {self.quiet_seconds}
study_quiet_seconds = {self.quiet_seconds * 2}

[[listener]]
ae_title = "DICOM_NODE"
allowed_calling_aets = ["STORESCU", "DICOM_NODE_SCU", "SENDER2", "SENDER3", "SENDER4"]
allowed_hosts = ["127.0.0.1"]

[rules]
folder = "rules"

[delivery]
retry_initial_seconds = 1.0
retry_max_seconds = 4.0
max_attempts = 5
poll_seconds = 0.1

{chr(10).join(dest_lines)}
{"" if "[web]" in self.extra_config else "[web]" + chr(10) + "enabled = false  # tests that want the admin app configure it" + chr(10)}
{self.extra_config}
"""
        )

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "dicom_node.cli.main", "--config", str(self.config_path), *args],
            capture_output=True, text=True, timeout=timeout, cwd=self.workdir,
        )

    def start(self) -> NodeProcess:
        if not self.config_path.exists():
            self.write_config()
        self.log_path = self.workdir / f"node-{int(time.time() * 1000)}.log"
        self.log = open(self.log_path, "wb")
        env = None
        if self.source is not None:
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(self.source), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.cli_module, "--config", str(self.config_path), "serve"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=self.workdir, env=env,
        )
        wait_port(self.port, 60, self.proc)
        # The receiver listens before the dispatcher runs; tests that time routing wait for both.
        wait_for(lambda: " ready: " in self.log_text() or self.proc.poll() is not None, timeout=60, interval=0.05)
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc)
            self.log.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self.log.close()


# storescu proposes one compressed transfer syntax per run; this maps each to its flag
_STORESCU_TS_FLAG = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}


def storescu_as_stored(port: int, files: list[Path], **kwargs) -> list[subprocess.CompletedProcess]:  # type: ignore[no-untyped-def]
    """Send files in their own transfer syntax: one storescu run per syntax (no conversion)."""
    import pydicom

    groups: dict[str, list[Path]] = {}
    for path in files:
        ts = str(pydicom.filereader.read_file_meta_info(path).TransferSyntaxUID)
        groups.setdefault(ts, []).append(path)
    return [storescu(port, group, extra=["-R", _STORESCU_TS_FLAG[ts]], **kwargs) for ts, group in groups.items()]


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.2, what: str = ""):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns something truthy; return that, or fail after ``timeout``.

    Tests wait for the condition they depend on (a row, a file, a log line),
    never for a fixed time: a fixed sleep is too short on a loaded machine and
    too long everywhere else.  ``what`` names the condition in the failure.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what or 'condition'} not met within {timeout}s (last: {value!r:.300})")
        time.sleep(interval)


def node_db_rows(node: NodeProcess, sql: str) -> list:
    """Rows of a query on a test node's SQLite database."""
    import sqlite3

    with sqlite3.connect(node.workdir / "node.db", timeout=30) as conn:
        return conn.execute(sql).fetchall()


# Work the node still has for what it received: (what, query counting it, waits for completion).
_UNFINISHED = (
    ("series not yet dispatched", "select count(*) from series where state != 'dispatched'", True),
    ("studies not yet dispatched", "select count(*) from studies where state != 'dispatched'", True),
    ("objects not yet through instance-level rules", "select count(*) from instances where routed_version is null", False),
    ("jobs not finished, or their findings not yet applied",
     "select count(*) from jobs where state in ('pending', 'running') or (state = 'done' and not findings_applied)", False),
    ("deliveries not finished", "select count(*) from deliveries where state in ('pending', 'sending')", False),
)


def unfinished_work(node: NodeProcess, *, completion: bool = True) -> dict[str, int]:
    """What the node has yet to do, as counts (all 0: nothing more will be sent).

    A test that checks that something was sent once, or not at all, waits
    for this instead of sleeping "long enough": once every series and study
    is dispatched, every job finished with its findings applied and every
    delivery finished, nothing further can arrive at a destination (the
    dispatcher queues jobs and deliveries in the transaction that records a
    dispatch).  ``completion=False`` leaves out series and studies, for a
    test with a long quiet period that only routes instance by instance.
    """
    return {what: node_db_rows(node, sql)[0][0] for what, sql, waits in _UNFINISHED if completion or not waits}


def wait_until_settled(node: NodeProcess, *, timeout: float = 60.0, completion: bool = True) -> None:
    """Wait until the node has nothing left to do (see :func:`unfinished_work`)."""
    left: dict[str, int] = {}

    def settled() -> bool:
        left.update(unfinished_work(node, completion=completion))
        return not any(left.values())

    try:
        wait_for(settled, timeout=timeout, interval=0.1)
    except AssertionError:
        raise AssertionError(f"the node still had work after {timeout}s: {left}") from None
