"""The spool: received objects as Part 10 files, written durably.

Layout: ``<spool>/<study uid>/<series uid>/<sop instance uid>.dcm``, plus
``<spool>/.tmp`` for files being written.  A file is first written to
``.tmp``, fsynced, renamed into place, and the directory is fsynced, so a
crash leaves either the old complete file or the new complete file, never a
torn one.  The bytes of the dataset are written exactly as received (no
decode/re-encode), which keeps compressed transfer syntaxes intact.
"""
from __future__ import annotations

import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

_SAFE_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
PREAMBLE = b"\x00" * 128 + b"DICM"


class SpoolError(OSError):
    """Writing to the spool failed (disk full, read-only, permissions)."""


def safe_component(uid: str) -> str:
    """A path component for a UID; anything that is not digits and dots is hashed.

    Malformed UIDs from real modalities exist; they must neither escape the
    spool (``..``, ``/``) nor collide.
    """
    if _SAFE_UID.match(uid) and len(uid) <= 64:
        return uid
    return "x" + uuid.uuid5(uuid.NAMESPACE_OID, uid).hex


def _make_dir(directory: str) -> bool:
    """Create a series directory (and its study directory) if missing; True when it was created."""
    try:
        os.mkdir(directory)
    except FileExistsError:
        return False
    except FileNotFoundError:
        os.makedirs(directory, exist_ok=True)
    return True


@dataclass(frozen=True)
class StoredFile:
    path: Path
    size: int
    replaced: bool


class Spool:
    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.tmp = self.root / ".tmp"
        self.fsync = fsync
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._tmp_dir = os.fspath(self.tmp)

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return self.root / safe_component(study_uid) / safe_component(series_uid) / f"{safe_component(sop_uid)}.dcm"

    def _fsync_dir(self, directory: Path | str) -> None:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def write(self, destination: Path, file_meta: bytes, dataset: bytes | memoryview) -> StoredFile:
        """Write preamble + file meta + dataset bytes durably to ``destination``.

        Runs inside every C-STORE round trip, so it sticks to ``os`` calls on
        strings: pathlib's objects cost more CPU than the syscalls.
        """
        tmp = os.path.join(self._tmp_dir, uuid.uuid4().hex + ".part")
        target = os.fspath(destination)
        series_dir = os.path.dirname(target)
        try:
            with open(tmp, "wb") as handle:
                handle.write(PREAMBLE)
                handle.write(file_meta)
                handle.write(dataset)
                handle.flush()
                if self.fsync:
                    os.fdatasync(handle.fileno())  # data + size; the rename and directory fsync cover the rest
            new_dir = _make_dir(series_dir)
            replaced = os.path.exists(target)
            os.replace(tmp, target)
            if self.fsync:
                self._fsync_dir(series_dir)
                if new_dir:
                    study_dir = os.path.dirname(series_dir)
                    self._fsync_dir(study_dir)
                    self._fsync_dir(os.path.dirname(study_dir))
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass  # never created, or the spool itself is broken; the original error is what matters
            raise SpoolError(exc.errno, f"spool write failed: {exc.strerror}") from exc
        return StoredFile(destination, len(PREAMBLE) + len(file_meta) + len(dataset), replaced)

    def clean_tmp(self) -> int:
        """Remove partial files a crash left behind (they were never acknowledged)."""
        count = 0
        for part in self.tmp.glob("*.part"):
            part.unlink(missing_ok=True)
            count += 1
        return count

    def iter_files(self):  # type: ignore[no-untyped-def]
        for path in self.root.rglob("*.dcm"):
            if self.tmp not in path.parents:
                yield path


@dataclass(frozen=True)
class DiskState:
    used_percent: float
    free_mb: float


def disk_state(path: Path) -> DiskState:
    usage = shutil.disk_usage(path)
    return DiskState(used_percent=100.0 * usage.used / usage.total, free_mb=usage.free / 1e6)
