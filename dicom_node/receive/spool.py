"""The spool: received objects as Part 10 files, written durably with one flush each.

Layout: ``<spool>/<study uid>/<series uid>/<sop instance uid>.dcm``, plus
``<spool>/.pool`` (empty slot files whose names are already on disk) and
``<spool>/.tmp`` (files being written when ``storage.fsync`` is off).

Durable writing, per object:

1. take a slot from ``.pool``: an empty file created earlier, in a batch,
   after which the directory was fsynced once, so its *name* is durable;
2. write the object into it and ``fdatasync``: its bytes and size are now
   durable under the slot's name;
3. rename it to its final path.  The rename is not flushed.  After a power
   cut it may be undone, and then the object is still there, complete,
   under its slot name; :meth:`Spool.recover_pool` moves it into place at
   start-up, before anything reads the spool.

That is one flush per object where "temp file, fsync, rename, fsync the
directory" costs two, and the rule that a file at its final path is
complete still holds (the rename comes after the flush).  A slot cut off
mid-write was never acknowledged; it is recognised by its preamble, which
records the file's full length and a write stamp (PS3.10 leaves the
128-byte preamble to the implementation), and removed.  The stamp also
decides, when several copies of one SOP Instance UID are found, which is
the newest (the duplicate policy keeps the newest).  The preamble holds a
digest of the dataset bytes too (SHA-256 cut to 16 bytes: with the CPU's SHA
instructions about 0.35 ms for a 526 KB CT slice here, BLAKE2b took 1 ms):
kept with the instance row, it tells a byte-identical resend from a
correction, and tells the sender that the file it opened is the copy the
row describes.

The bytes of the dataset are written exactly as received (no
decode/re-encode), which keeps compressed transfer syntaxes intact.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import struct
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from dicom_node.defaults import SPOOL_SLOT_BATCH
from dicom_node.receive.headers import read_header

log = logging.getLogger("dicom_node.receive.spool")

_SAFE_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
SPOOL_MARK = b"DICOM-NODE-SPOOL"  # then the file's length, a write stamp (ns), little endian, and the digest
_PREAMBLE_FIELDS = struct.Struct("<16sQQ16s")
DIGEST_SIZE = 16  # bytes of SHA-256 kept: collisions are out of reach, and it fits the preamble
PREAMBLE_LENGTH = 128 + 4  # preamble + "DICM"


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


def dataset_digest(dataset: bytes | memoryview) -> str:
    """The digest of a dataset's bytes, as kept in the preamble and the instance row (hex)."""
    return hashlib.sha256(dataset).digest()[:DIGEST_SIZE].hex()


def spool_preamble(total_length: int, stamp_ns: int, digest: str | None = None) -> bytes:
    """The 128-byte preamble plus ``DICM`` of a spool file: mark, full file length, write stamp, digest."""
    fields = _PREAMBLE_FIELDS.pack(SPOOL_MARK, total_length, stamp_ns, bytes.fromhex(digest) if digest else bytes(DIGEST_SIZE))
    return fields + bytes(128 - len(fields)) + b"DICM"


def parse_spool_preamble(head: bytes) -> tuple[int, int] | None:
    """(recorded file length, write stamp) from a file's first bytes, or None without the mark."""
    if len(head) < _PREAMBLE_FIELDS.size:
        return None
    mark, length, stamp, _ = _PREAMBLE_FIELDS.unpack_from(head)
    return (length, stamp) if mark == SPOOL_MARK else None


def preamble_digest(head: bytes) -> str | None:
    """The dataset digest a spool preamble records; None without the mark or for files written before digests."""
    if len(head) < _PREAMBLE_FIELDS.size:
        return None
    mark, _, _, digest = _PREAMBLE_FIELDS.unpack_from(head)
    return digest.hex() if mark == SPOOL_MARK and any(digest) else None


def read_spool_preamble(path: str | Path) -> tuple[int, int] | None:
    """:func:`parse_spool_preamble` of a file on disk."""
    with open(path, "rb") as handle:
        return parse_spool_preamble(handle.read(_PREAMBLE_FIELDS.size))


def _make_dir(directory: str) -> None:
    """Create a series directory (and its study directory) if missing."""
    try:
        os.mkdir(directory)
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(directory, exist_ok=True)


@dataclass(frozen=True)
class StoredFile:
    path: Path
    size: int
    replaced: bool
    digest: str = ""  # of the dataset bytes (:func:`dataset_digest`)


@dataclass(frozen=True)
class PoolRecovery:
    """What :meth:`Spool.recover_pool` did with the slots a crash left."""

    moved: int      # complete objects whose rename had not reached the disk, now in place
    superseded: int  # complete copies older than the one kept for the same instance
    torn: int       # cut off mid-write (never acknowledged), removed
    empty: int      # unused slots, removed


class Spool:
    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.tmp = self.root / ".tmp"
        self.pool = self.root / ".pool"
        self.fsync = fsync
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._tmp_dir = os.fspath(self.tmp)
        self._pool_dir = os.fspath(self.pool)
        self._slots: list[str] = []
        self._slots_lock = threading.Lock()

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return self.root / safe_component(study_uid) / safe_component(series_uid) / f"{safe_component(sop_uid)}.dcm"

    def _fsync_dir(self, directory: Path | str) -> None:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _take_slot(self) -> str:
        """An empty file in ``.pool`` whose name is durable; a new batch (one directory flush) when none is left."""
        with self._slots_lock:
            if not self._slots:
                os.makedirs(self._pool_dir, exist_ok=True)  # made on first use: folder destinations never need one
                batch = []
                for _ in range(SPOOL_SLOT_BATCH):
                    path = os.path.join(self._pool_dir, f"{uuid.uuid4().hex}.slot")
                    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                    batch.append(path)
                self._fsync_dir(self._pool_dir)
                self._slots = batch
            return self._slots.pop()

    def write(self, destination: Path, file_meta: bytes, dataset: bytes | memoryview) -> StoredFile:
        """Write preamble + file meta + dataset bytes durably to ``destination`` (see the module docstring).

        Runs inside every C-STORE round trip, so it sticks to ``os`` calls on
        strings: pathlib's objects cost more CPU than the syscalls.
        """
        target = os.fspath(destination)
        total = PREAMBLE_LENGTH + len(file_meta) + len(dataset)
        digest = dataset_digest(dataset)
        part: str | None = None
        handle: BinaryIO
        try:
            if self.fsync:
                part = self._take_slot()
                try:
                    handle = open(part, "r+b")
                except FileNotFoundError:  # slots removed behind our back (by hand, a recovery run): new batch
                    with self._slots_lock:
                        self._slots.clear()
                    part = self._take_slot()
                    handle = open(part, "r+b")
            else:
                part = os.path.join(self._tmp_dir, uuid.uuid4().hex + ".part")
                handle = open(part, "wb")
            with handle:
                handle.write(spool_preamble(total, time.time_ns(), digest))
                handle.write(file_meta)
                handle.write(dataset)
                handle.flush()
                if self.fsync:
                    os.fdatasync(handle.fileno())  # bytes and size, under the slot's durable name
            _make_dir(os.path.dirname(target))
            replaced = os.path.exists(target)
            os.replace(part, target)
        except OSError as exc:
            if part is not None:
                try:
                    os.unlink(part)  # a used or half-written slot is never handed out again
                except OSError:
                    pass  # never created, or the spool itself is broken; the original error is what matters
            raise SpoolError(exc.errno, f"spool write failed: {exc.strerror}") from exc
        return StoredFile(destination, total, replaced, digest)

    def recover_pool(self) -> PoolRecovery:
        """Put complete objects left in slots into place, newest copy first; remove torn and empty slots.

        Run at start-up, before the receiver and before re-indexing, by the
        only process that touches the spool then.
        """
        newest: dict[str, tuple[int, str]] = {}
        superseded = torn = empty = 0
        for slot in sorted(self.pool.glob("*.slot")):
            size = slot.stat().st_size
            mark = read_spool_preamble(slot) if size else None
            if size == 0 or mark is None or mark[0] != size:
                slot.unlink()
                if size == 0:
                    empty += 1
                else:
                    torn += 1
                    log.warning("removed %s: cut off mid-write (%d of %s bytes), never acknowledged",
                                slot.name, size, mark[0] if mark else "?")
                continue
            try:
                ds = read_header(str(slot), specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
                target = os.fspath(self.path_for(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)))
            except Exception as exc:  # noqa: BLE001 - complete but unreadable: keep it for a person to look at
                log.error("slot %s is complete but its identifiers cannot be read (%s); left in %s", slot.name, exc, self.pool)
                continue
            held = newest.get(target)
            if held is None and os.path.exists(target):
                placed = read_spool_preamble(target)
                held = (placed[1] if placed else 0, "")  # the copy already in place ("" : nothing to remove)
            if held is not None and held[0] >= mark[1]:
                slot.unlink()
                superseded += 1
                continue
            if held is not None and held[1]:
                os.unlink(held[1])
                superseded += 1
            newest[target] = (mark[1], os.fspath(slot))
        touched = {self._pool_dir, os.fspath(self.root)} if self.pool.is_dir() else set()
        moved = 0
        for target, (_, slot_path) in newest.items():
            if not slot_path:
                continue
            series_dir = os.path.dirname(target)
            _make_dir(series_dir)
            os.replace(slot_path, target)
            touched.update((series_dir, os.path.dirname(series_dir)))
            moved += 1
        for directory in touched:  # the moves are durable before anything is re-indexed
            self._fsync_dir(directory)
        return PoolRecovery(moved, superseded, torn, empty)

    def clean_tmp(self) -> int:
        """Remove partial files a crash left behind (they were never acknowledged)."""
        count = 0
        for part in self.tmp.glob("*.part"):
            part.unlink(missing_ok=True)
            count += 1
        return count

    def iter_files(self):  # type: ignore[no-untyped-def]
        for path in self.root.rglob("*.dcm"):
            if self.tmp not in path.parents and self.pool not in path.parents:
                yield path


@dataclass(frozen=True)
class DiskState:
    used_percent: float
    free_mb: float


def disk_state(path: Path) -> DiskState:
    usage = shutil.disk_usage(path)
    return DiskState(used_percent=100.0 * usage.used / usage.total, free_mb=usage.free / 1e6)
