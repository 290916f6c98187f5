#!/usr/bin/env python
"""C-STORE receiver benchmark: our node against dcmtk storescp and Orthanc.

One invocation sends the SAME synthetic data (a 512x512 CT series and a set
of 2500x2048 DX radiographs) with dcmtk ``storescu`` to each receiver on
127.0.0.1, several times, interleaved (run 1 of every receiver, then run
2, ...; the order rotates each round so no receiver always goes first after
a ``sync``).  Per run it reports:

- instances/s and MB/s from the storescu start to its exit (every C-STORE-RSP
  received), after checking that every object is on disk;
- peak RSS of the receiver's whole process tree (for the node: the parent
  process, its receiver child, multiprocessing's resource tracker and any
  other child it spawns; the receiver child is the one holding the port),
  sampled every 20 ms, and the tree's CPU seconds (per process for the node);
- busy CPU of the machine not charged to the receiver or storescu (the machine is shared);
- for the node only: the forward latency, from storescu's exit (the last
  C-STORE-RSP) until the last object is in the folder of a dcmtk storescp
  that the node forwards every series to (rule ``forward-all``), with the
  completion quiet period given by ``--quiet-seconds``; ``node-instance``
  runs the same rule at ``level = "instance"``, forwarding each object as it
  is stored instead of when its series is complete.

Throughput is compared as a *paired* ratio: run i of a receiver divided by
run i of dcmtk storescp taken moments before or after, because this VM's
speed drifts over minutes.

The receivers are configured like the main rows of the project's first
receiver baseline (docs/benchmarks/receiver.md): dcmtk ``storescp -pdu 131072 -dhl`` (normal
mode, no fsync), Orthanc with ``MaximumPduLength`` 131072 and
``SyncStorageArea`` true (fsync), both with ``TCP_NODELAY=1``; the node as
``dicom-node serve`` with its defaults (durable acknowledgement: fsync of
file and directory, then the database row, then the response).
``node-nofsync`` (``storage.fsync = false``) is a diagnostic row that shows
what the fsyncs cost; ``node-base`` runs the node at ``--base-rev`` beside
the current one, so a change is judged by the paired ratio node / node-base.

Run from the repository root with the project's Python::

    .venv/bin/python tests/bench/bench_receiver.py --quick --runs 1     # 60 CT + 10 DX, ~2 min
    .venv/bin/python tests/bench/bench_receiver.py --runs 5 --json out.json --markdown out.md

The node runs from a snapshot of ``--node-rev`` (default ``HEAD``, extracted
with ``git archive``), not from the working tree that other engineers edit
while the benchmark runs; ``--node-rev worktree`` measures the tree as is.

Everything lives in a fresh ``bench-receiver-*`` folder under
``--scratch-root`` (default: the system temp dir), removed at the end unless
``--data`` names a folder to keep the generated files in.  Servers listen
on free ports, are stopped by PID, and only loopback traffic is sent.

This is a script, not a test: pytest does not collect ``bench_*.py``.
"""
from __future__ import annotations

import abc
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from tests.node.conftest import forward_rule  # noqa: E402
from tests.peers import DCMTK_ENV, NodeProcess, free_port, stop_pid, wait_port  # noqa: E402

SEND_PDU = 131072  # storescu's maximum; the baseline's main rows use it both ways
CALLING_AET = "STORESCU"  # allowed by the node's listener in NodeProcess
CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 2**20


# --- data -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSet:
    name: str
    files: list[Path]

    @property
    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)


def make_ct(folder: Path, count: int) -> DataSet:
    """One axial chest series, 512x512, 16-bit, Explicit VR LE (~526 KB per slice)."""
    from dicom_node.ops.synthetic import chest_ct_series, write_datasets

    return DataSet("ct", write_datasets(chest_ct_series(count, 512, seed=1), folder, "CT"))


def make_dx(folder: Path, count: int) -> DataSet:
    """Chest radiographs 2500x2048, 16 bits allocated, two views (PA + lateral) per study (~10 MB each)."""
    from pydicom.uid import generate_uid

    from dicom_node.ops.synthetic import UID_PREFIX, chest_dx

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):  # one at a time: 50 of them in memory would be 0.5 GB
        if i % 2 == 0:
            study_uid = generate_uid(prefix=UID_PREFIX)
        ds = chest_dx(2500, 2048, view="PA" if i % 2 == 0 else "LL", study_uid=study_uid,
                      patient_id=f"SYNDX{i // 2:03d}", seed=i)
        path = folder / f"DX{i + 1:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return DataSet("dx", paths)


def load_or_make(root: Path, n_ct: int, n_dx: int, wanted: list[str]) -> list[DataSet]:
    """The wanted sets from ``root``, generated there first if missing or of another size."""
    sets = []
    for name, count, maker in (("ct", n_ct, make_ct), ("dx", n_dx, make_dx)):
        if name not in wanted:
            continue
        folder = root / f"{name}-{count}"
        files = sorted(folder.glob("*.dcm")) if folder.is_dir() else []
        sets.append(DataSet(name, files) if len(files) == count else maker(folder, count))
    return sets


# --- process measurements from /proc ---------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                out += [int(x) for x in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def process_tree(pid: int) -> list[int]:
    seen, stack = [], [pid]
    while stack:
        current = stack.pop()
        seen.append(current)
        stack += _children(current)
    return seen


def rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, all its threads."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / CLK
    except (OSError, ValueError, IndexError):
        return 0.0


def listening_pid(pids: list[int], port: int) -> int | None:
    """Which of ``pids`` holds the TCP socket listening on ``port`` (the node's receiver child)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    for pid in pids:
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        if inodes & set(links):
            return pid
    return None


def role(pid: int, listener: int | None) -> str:
    """A readable name for a process of a receiver's tree (the node's are all 'python')."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return str(pid)
    if "resource_tracker" in cmdline:
        return "resource-tracker"
    if "spawn_main" in cmdline:  # multiprocessing children: the receiver, and whatever else the node spawns
        return "receiver-child" if pid == listener else "spawned-child"
    if "dicom_node.cli.main" in cmdline:
        return "node-parent"
    return Path(cmdline.split(" ")[0]).name or str(pid)


def system_busy_seconds() -> float:
    """CPU seconds spent busy by all cores since boot (everything but idle and iowait)."""
    values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq + steal) / CLK


class TreeSampler(threading.Thread):
    """Samples the RSS of a process tree every 20 ms; keeps the peak per phase and per process."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.phase = "receive"
        self.peaks: dict[str, int] = {}
        self.process_peaks: dict[int, int] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            pids = process_tree(self.pid)
            sizes = {p: rss_bytes(p) for p in pids}
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), sum(sizes.values()))
            if self.phase == "receive":
                for p, size in sizes.items():
                    self.process_peaks[p] = max(self.process_peaks.get(p, 0), size)
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def tree_cpu(pid: int) -> dict[int, float]:
    return {p: cpu_seconds(p) for p in process_tree(pid)}


def by_role(values: dict[int, float], listener: int | None) -> dict[str, float]:
    """Per-pid figures keyed by role; a second process with the same role gets '#2' (in pid order)."""
    out: dict[str, float] = {}
    for pid in sorted(values):
        name = role(pid, listener)
        key, k = name, 1
        while key in out:
            k += 1
            key = f"{name}#{k}"
        out[key] = values[pid]
    return out


# --- receivers --------------------------------------------------------------------------------------


def count_files(folder: Path, pattern: str = "*", skip: str | None = None) -> int:
    if not folder.exists():
        return 0
    return sum(1 for p in folder.rglob(pattern) if p.is_file() and (skip is None or skip not in p.parts))


def echo_ok(port: int, aet: str) -> bool:
    done = subprocess.run(["echoscu", "-aet", CALLING_AET, "-aec", aet, "-to", "2", "127.0.0.1", str(port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=DCMTK_ENV)
    return done.returncode == 0


def wait_echo(port: int, aet: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not echo_ok(port, aet):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{aet} on port {port} does not answer C-ECHO after {timeout}s")
        time.sleep(0.1)


@dataclass
class Receiver(abc.ABC):
    """A receiver under test: started fresh in ``workdir`` for every run."""

    workdir: Path
    aet: str = ""
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    destination: DcmtkStoreSCP | None = None  # where it forwards to (the node only)

    @abc.abstractmethod
    def start(self) -> None:
        """Start it and return once it answers C-ECHO."""

    @abc.abstractmethod
    def stored(self) -> int:
        """How many objects it has on disk now."""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def problems(self) -> list[str]:
        """Warnings worth keeping with the run's figures (only the node has a log to read)."""
        return []

    def log_tail(self) -> str:
        logs = sorted(self.workdir.rglob("*.log"))
        return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-2000:]}" for p in logs)

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc)


@dataclass
class DcmtkStoreSCP(Receiver):
    """``storescp -pdu 131072 -dhl``, normal mode (parses, then writes; no fsync), Nagle off."""

    aet: str = "STORESCP"

    def start(self) -> None:
        out = self.workdir / "out"
        out.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / "storescp.log", "wb") as log:
            self.proc = subprocess.Popen(
                ["storescp", "-aet", self.aet, "-pdu", str(SEND_PDU), "-dhl", "-od", str(out), str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, env=DCMTK_ENV,
            )
        wait_port(self.port, 30, self.proc)
        wait_echo(self.port, self.aet)

    def stored(self) -> int:
        return count_files(self.workdir / "out")


@dataclass
class OrthancSCP(Receiver):
    """Orthanc, DICOM only: PDU 131072, SyncStorageArea (fsync) on, fresh SQLite index, Nagle off."""

    aet: str = "ORTHANC"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "bench", "StorageDirectory": str(self.workdir / "storage"), "IndexDirectory": str(self.workdir / "index"),
            "StorageCompression": False, "Plugins": [], "LuaScripts": [], "HttpServerEnabled": False,
            "HttpPort": free_port(), "RemoteAccessAllowed": False, "WebDavEnabled": False, "DicomServerEnabled": True,
            "DicomAet": self.aet, "DicomPort": self.port, "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True, "DicomModalities": {}, "MaximumPduLength": SEND_PDU, "SyncStorageArea": True,
            "SaveJobs": False, "OverwriteInstances": False,
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config, indent=1))
        with open(self.workdir / "orthanc.log", "wb") as log:
            self.proc = subprocess.Popen(["Orthanc", str(path)], stdout=log, stderr=subprocess.STDOUT, env=DCMTK_ENV)
        wait_port(self.port, 30, self.proc)
        wait_echo(self.port, self.aet)

    def stored(self) -> int:
        return count_files(self.workdir / "storage", skip=".incoming")


@dataclass
class NodeSCP(Receiver):
    """``dicom-node serve`` forwarding every complete series to a dcmtk storescp."""

    aet: str = "DICOM_NODE"
    fsync: bool = True
    quiet_seconds: float = 1.0
    forward_level: str = "series"  # "instance": forward each object as stored, not after completion
    source: Path | None = None  # run the node from this snapshot (``--base-rev``) instead of the default one
    node: NodeProcess | None = None

    def start(self) -> None:
        self.destination = DcmtkStoreSCP(self.workdir / "destination", aet="FWDSCP")
        self.destination.start()
        self.node = NodeProcess(
            self.workdir / "node", port=self.port, quiet_seconds=self.quiet_seconds,
            destinations={"dest": {"type": "dicom", "ae_title": "FWDSCP", "host": "127.0.0.1", "port": self.destination.port}},
            rules={"10-forward.toml": forward_rule("dest", level=self.forward_level)},
            source=self.source, cli_module=cli_module_of(self.source),
        )
        self.node.write_config()
        if not self.fsync:
            text = self.node.config_path.read_text()
            assert "min_free_mb = 10\n" in text, "NodeProcess config layout changed"
            self.node.config_path.write_text(text.replace("min_free_mb = 10\n", "min_free_mb = 10\nfsync = false\n", 1))
        self.node.start()
        self.proc = self.node.proc
        wait_echo(self.port, self.aet)

    def stored(self) -> int:
        assert self.node is not None
        return count_files(self.node.workdir / "spool", "*.dcm", skip=".tmp")

    def problems(self) -> list[str]:
        """The node's WARNING/ERROR log lines (a failed delivery attempt explains a slow forward)."""
        if self.node is None or not getattr(self.node, "log_path", None) or not self.node.log_path.exists():
            return []
        return [line for line in self.node.log_text().splitlines() if " WARNING " in line or " ERROR " in line]

    def stop(self) -> None:
        if self.node is not None:
            self.node.stop()
        if self.destination is not None:
            self.destination.stop()


def cli_module_of(source: Path | None) -> str:
    """The node's CLI module in a source tree (``dicom_node.cli`` before the layout by stage)."""
    if source is not None and (source / "dicom_node" / "cli.py").exists():
        return "dicom_node.cli"
    return "dicom_node.cli.main"


def extract(rev: str, folder: Path) -> str:
    """Extract ``rev`` of the repository into ``folder``; returns the commit."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", rev], capture_output=True, text=True, check=True).stdout.strip()
    folder.mkdir(parents=True)
    archive = subprocess.Popen(["git", "-C", str(REPO), "archive", commit], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(folder)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise RuntimeError(f"git archive {commit} failed")
    return commit


def snapshot_node(rev: str, folder: Path) -> str:
    """Extract ``rev`` of the repository into ``folder`` and make node processes import it from there.

    Other engineers edit the working tree while benchmarks run; a node started
    from a fixed commit keeps every run of one invocation measuring the same
    code.  PYTHONPATH wins over the editable install, and the node's spawned
    receiver child inherits the parent's sys.path.
    """
    commit = extract(rev, folder)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    where = subprocess.run([sys.executable, "-c", "import dicom_node; print(dicom_node.__file__)"],
                           capture_output=True, text=True, check=True, cwd=folder.parent).stdout.strip()
    if not where.startswith(str(folder)):
        raise RuntimeError(f"the node would still import {where}, not the snapshot in {folder}")
    return commit


RECEIVERS: dict[str, Callable[[Path, float], Receiver]] = {
    "dcmtk": lambda wd, q: DcmtkStoreSCP(wd),
    "orthanc": lambda wd, q: OrthancSCP(wd),
    "node": lambda wd, q: NodeSCP(wd, quiet_seconds=q),
    "node-nofsync": lambda wd, q: NodeSCP(wd, fsync=False, quiet_seconds=q),
    "node-instance": lambda wd, q: NodeSCP(wd, quiet_seconds=q, forward_level="instance"),
    # The node at ``--base-rev``, run beside the current one: a change's paired ratio (node / node-base) in one run.
    "node-base": lambda wd, q: NodeSCP(wd, quiet_seconds=q, source=BASE_SOURCE[0]),
}
BASE_SOURCE: list[Path | None] = [None]
REFERENCE = "dcmtk"


# --- one run ----------------------------------------------------------------------------------------


def wait_for_count(count: Callable[[], int], n: int, timeout: float) -> tuple[float | None, float | None]:
    """Poll every 10 ms; perf_counter times at which the first and the n-th object were there."""
    first = last = None
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        seen = count()
        now = time.perf_counter()
        if seen and first is None:
            first = now
        if seen >= n:
            last = now
            break
        time.sleep(0.01)
    return first, last


def run_one(receiver: Receiver, data: DataSet, nbytes: int, forward_timeout: float) -> dict:
    n = len(data.files)
    result: dict = {"ok": False, "n": n, "bytes": nbytes}
    try:
        receiver.start()
        listener = listening_pid(process_tree(receiver.pid), receiver.port)
        sampler = TreeSampler(receiver.pid)
        sampler.start()
        cpu0, busy0, load0 = tree_cpu(receiver.pid), system_busy_seconds(), os.getloadavg()[0]
        sender_log = receiver.workdir / "storescu.log"
        with open(sender_log, "wb") as log:
            t0 = time.perf_counter()
            sender = subprocess.Popen(
                ["storescu", "-aet", CALLING_AET, "-aec", receiver.aet, "-pdu", str(SEND_PDU), "--max-send-pdu", str(SEND_PDU),
                 "127.0.0.1", str(receiver.port), *map(str, data.files)],
                stdout=log, stderr=subprocess.STDOUT, env=DCMTK_ENV,
            )
            _, status, usage = os.wait4(sender.pid, 0)
            t1 = time.perf_counter()
        sender.returncode = os.waitstatus_to_exitcode(status)
        busy1, cpu1 = system_busy_seconds(), tree_cpu(receiver.pid)
        sampler.phase = "forward"
        seconds = t1 - t0
        receiver_cpu = {pid: cpu1[pid] - cpu0.get(pid, 0.0) for pid in cpu1}
        sender_cpu = usage.ru_utime + usage.ru_stime
        stored = receiver.stored()
        result.update(
            seconds=seconds, inst_s=n / seconds, mb_s=nbytes / 1e6 / seconds, sender_rc=sender.returncode, stored=stored,
            receiver_cpu_s=sum(receiver_cpu.values()),
            receiver_cpu_by_process={k: round(v, 3) for k, v in by_role(receiver_cpu, listener).items()},
            sender_cpu_s=sender_cpu,
            # busy CPU not charged to the receiver tree or storescu while the set was sent: other users'
            # jobs, this script, and kernel work (writeback, loopback softirq) not charged to a process
            foreign_cpu_s=max(0.0, (busy1 - busy0) - sum(receiver_cpu.values()) - sender_cpu),
            load_avg_1m=load0,
        )
        ok = sender.returncode == 0 and stored == n
        if receiver.destination is not None and ok:
            first, last = wait_for_count(receiver.destination.stored, n, forward_timeout)
            result.update(
                forwarded=receiver.destination.stored(),
                first_forwarded_s=None if first is None else first - t1,
                forward_latency_s=None if last is None else last - t1,
            )
            ok = last is not None
        sampler.stop()
        result.update(
            peak_rss_mib=sampler.peaks.get("receive", 0) / MIB,
            peak_rss_forward_mib=sampler.peaks.get("forward", 0) / MIB,
            peak_rss_by_process_mib={k: round(v / MIB, 1) for k, v in by_role(sampler.process_peaks, listener).items()},
            ok=ok,
        )
        if receiver.problems():
            result["log_problems"] = receiver.problems()[:20]
        if not ok:
            print(f"    run failed (storescu rc {sender.returncode}, stored {stored}/{n}); logs:\n"
                  f"{sender_log.read_text(errors='replace')[-1500:]}\n{receiver.log_tail()}", flush=True)
    except Exception as exc:  # noqa: BLE001 - one broken run must not lose the others
        result["error"] = f"{type(exc).__name__}: {exc}"
        print(f"    run error: {result['error']}\n{receiver.log_tail()}", flush=True)
    finally:
        receiver.stop()
        shutil.rmtree(receiver.workdir, ignore_errors=True)
        subprocess.run(["sync"], check=False)  # flush the last run's dirty pages outside any timed window
        time.sleep(0.3)
    return result


# --- statistics and report --------------------------------------------------------------------------


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(runs: dict[str, dict[str, list[dict]]], names: list[str]) -> dict[str, dict[str, dict]]:
    """Medians per (set, receiver) and paired ratios against run i of the reference."""
    out: dict[str, dict[str, dict]] = {}
    for set_name, by_receiver in runs.items():
        ref = by_receiver.get(REFERENCE, [])
        out[set_name] = {}
        for name in names:
            mine = by_receiver.get(name, [])
            good = [r for r in mine if r.get("ok")]
            pairs = [(r, ref[i]) for i, r in enumerate(mine) if r.get("ok") and i < len(ref) and ref[i].get("ok")]
            speed = [r["inst_s"] / f["inst_s"] for r, f in pairs]
            memory = [r["peak_rss_mib"] / f["peak_rss_mib"] for r, f in pairs]
            summary = {"runs": len(mine), "ok_runs": len(good)}
            for key in ("inst_s", "mb_s", "peak_rss_mib", "receiver_cpu_s", "sender_cpu_s", "foreign_cpu_s",
                        "forward_latency_s", "first_forwarded_s", "peak_rss_forward_mib"):
                values = [r[key] for r in good if r.get(key) is not None]
                if values:
                    summary[key] = _median(values)
                    summary[key + "_range"] = (min(values), max(values))
            base = by_receiver.get("node-base", [])
            against_base = [r["inst_s"] / base[i]["inst_s"] for i, r in enumerate(mine)
                            if name != "node-base" and r.get("ok") and i < len(base) and base[i].get("ok")]
            if against_base:  # run i of this receiver / run i of the node at --base-rev
                summary["base_ratio"] = _median(against_base)
                summary["base_ratio_range"] = (min(against_base), max(against_base))
            if speed:
                summary["speed_ratio"] = _median(speed)
                summary["speed_ratio_range"] = (min(speed), max(speed))
                summary["rss_ratio"] = _median(memory)
            by_process: dict[str, list[float]] = {}
            for r in good:
                for proc, cpu in r.get("receiver_cpu_by_process", {}).items():
                    by_process.setdefault(proc, []).append(cpu)
            summary["receiver_cpu_by_process"] = {k: round(_median(v) or 0.0, 2) for k, v in by_process.items()}
            out[set_name][name] = summary
    return out


def _fmt(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _range(summary: dict, key: str, digits: int) -> str:
    if key not in summary:
        return "–"
    low, high = summary[key + "_range"]
    return f"{summary[key]:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})"


def markdown(summary: dict[str, dict[str, dict]], names: list[str], quiet: float) -> str:
    lines = [
        "| set | receiver | inst/s | MB/s | vs dcmtk, paired (min–max) | peak RSS MiB (tree) | RSS vs dcmtk | receiver CPU s | runs ok |",
        "|---|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for set_name, rows in summary.items():
        for name in names:
            s = rows.get(name)
            if not s:
                continue
            lines.append(
                f"| {set_name.upper()} | {name} | {_fmt(s.get('inst_s'))} | {_fmt(s.get('mb_s'))} | "
                f"{_range(s, 'speed_ratio', 2)} | {_fmt(s.get('peak_rss_mib'))} | {_fmt(s.get('rss_ratio'), 1)} | "
                f"{_fmt(s.get('receiver_cpu_s'), 2)} | {s['ok_runs']}/{s['runs']} |"
            )
    lines += [
        "",
        f"Forward latency (completion quiet period {quiet:g} s): storescu exit → first / last object at the destination",
        "",
        "| set | receiver | first object s (min–max) | last object s (min–max) | peak RSS MiB while forwarding |",
        "|---|---|---|---|---:|",
    ]
    for set_name, rows in summary.items():
        for name in names:
            s = rows.get(name, {})
            if "forward_latency_s" in s:
                lines.append(
                    f"| {set_name.upper()} | {name} | {_range(s, 'first_forwarded_s', 2)} | {_range(s, 'forward_latency_s', 2)} | "
                    f"{_fmt(s.get('peak_rss_forward_mib'))} |"
                )
    lines += ["", "Receiver CPU seconds by process (medians); 'unattributed' = busy CPU of the machine that was neither",
              "the receiver tree nor storescu (other users' jobs, kernel writeback and network softirq):", ""]
    for set_name, rows in summary.items():
        for name in names:
            s = rows.get(name, {})
            if s:
                lines.append(
                    f"- {set_name.upper()} {name}: {s.get('receiver_cpu_by_process')}; storescu {_fmt(s.get('sender_cpu_s'), 2)} s; "
                    f"unattributed {_fmt(s.get('foreign_cpu_s'), 2)} CPU s"
                )
    return "\n".join(lines)


def machine_info() -> dict:
    def first_line(cmd: list[str]) -> str:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            return (done.stdout or done.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    import pydicom
    import pynetdicom

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?")
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1), "kernel": platform.release(),
        "python": platform.python_version(), "pynetdicom": pynetdicom.__version__, "pydicom": pydicom.__version__,
        "dcmtk": first_line(["storescp", "--version"]), "orthanc": first_line(["Orthanc", "--version"]),
        "load_avg_at_start": os.getloadavg(),
    }


# --- main -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="60 CT slices and 10 DX images instead of 300 and 50")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs per receiver and set (default 3)")
    parser.add_argument("--receivers", default=",".join(RECEIVERS), help=f"comma list from {list(RECEIVERS)}")
    parser.add_argument("--sets", default="ct,dx")
    parser.add_argument("--quiet-seconds", type=float, default=1.0, help="the node's series completion quiet period")
    parser.add_argument("--forward-timeout", type=float, default=180.0)
    parser.add_argument("--scratch-root", default=tempfile.gettempdir())
    parser.add_argument("--data", help="keep generated data in this folder (and reuse it next time)")
    parser.add_argument("--node-rev", default="HEAD",
                        help="git revision of the node to run (default HEAD, extracted to the scratch dir); "
                             "'worktree' runs the working tree as it is")
    parser.add_argument("--base-rev", help="with receiver 'node-base': the git revision it runs (e.g. the commit before a change)")
    parser.add_argument("--json", help="write every run and the summary here")
    parser.add_argument("--markdown", help="write the tables here")
    args = parser.parse_args(argv)

    names = [n for n in args.receivers.split(",") if n]
    unknown = set(names) - set(RECEIVERS)
    if unknown:
        parser.error(f"unknown receivers {sorted(unknown)}")
    if REFERENCE not in names:
        names.insert(0, REFERENCE)
    for tool in ("storescu", "storescp", "echoscu", "Orthanc"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed (deploy/test.sh installs dcmtk and orthanc)")

    scratch = Path(tempfile.mkdtemp(prefix="bench-receiver-", dir=args.scratch_root))
    try:
        n_ct, n_dx = (60, 10) if args.quick else (300, 50)
        started = time.perf_counter()
        data_root = Path(args.data) if args.data else scratch / "data"
        sets = load_or_make(data_root, n_ct, n_dx, args.sets.split(","))
        sizes = {s.name: s.nbytes for s in sets}
        print(f"data ready in {time.perf_counter() - started:.0f}s: "
              + ", ".join(f"{s.name} {len(s.files)} files {sizes[s.name] / 1e6:.1f} MB" for s in sets), flush=True)
        info = machine_info()
        info["node"] = "working tree" if args.node_rev == "worktree" else snapshot_node(args.node_rev, scratch / "node-src")
        if "node-base" in names:
            if not args.base_rev:
                parser.error("receiver node-base needs --base-rev")
            BASE_SOURCE[0] = scratch / "node-base-src"
            info["node_base"] = extract(args.base_rev, BASE_SOURCE[0])
        runs: dict[str, dict[str, list[dict]]] = {s.name: {n: [] for n in names} for s in sets}
        for i in range(args.runs):
            order = names[i % len(names):] + names[:i % len(names)]
            for data in sets:
                subprocess.run(["cat", *map(str, data.files)], stdout=subprocess.DEVNULL, check=True)  # page cache
                for name in order:
                    receiver = RECEIVERS[name](scratch / f"run-{name}", args.quiet_seconds)
                    r = run_one(receiver, data, sizes[data.name], args.forward_timeout)
                    runs[data.name][name].append(r)
                    fwd = f" forward {_fmt(r.get('forward_latency_s'), 2)}s" if "forwarded" in r else ""
                    # apscheduler's "sweep skipped" notes are kept in the JSON only: they come with every completion
                    notable = [line for line in r.get("log_problems", []) if "apscheduler" not in line]
                    fwd += "".join(f"\n    node log: {line}" for line in notable[:5])
                    print(f"run {i + 1} {data.name} {name:13s} ok={r['ok']} {_fmt(r.get('seconds'), 2)}s "
                          f"{_fmt(r.get('inst_s'), 1)} inst/s {_fmt(r.get('mb_s'), 1)} MB/s rss {_fmt(r.get('peak_rss_mib'))} MiB "
                          f"cpu {_fmt(r.get('receiver_cpu_s'), 2)}s unattributed {_fmt(r.get('foreign_cpu_s'), 2)}s{fwd}", flush=True)
        info["load_avg_at_end"] = os.getloadavg()
        info["wall_minutes"] = round((time.perf_counter() - started) / 60, 1)
        summary = summarise(runs, names)
        table = markdown(summary, names, args.quiet_seconds)
        for set_name, by_name in summary.items():
            for name, s in by_name.items():
                if "base_ratio" in s:
                    low, high = s["base_ratio_range"]
                    table += (f"\n{set_name}: {name} / node-base ({info.get('node_base', '')[:10]}) instances/s, paired: "
                              f"median {s['base_ratio']:.2f} (range {low:.2f}-{high:.2f})")
        print("\n" + json.dumps(info) + "\n\n" + table)
        if args.markdown:
            Path(args.markdown).write_text(table + "\n")
        if args.json:
            sets_info = {s.name: {"files": len(s.files), "bytes": sizes[s.name]} for s in sets}
            Path(args.json).write_text(json.dumps(
                {"machine": info, "sets": sets_info, "quiet_seconds": args.quiet_seconds, "summary": summary, "runs": runs},
                indent=1, default=str))
        return 0 if all(r.get("ok") for by in runs.values() for rs in by.values() for r in rs) else 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
