"""Start-up recovery: make the database agree with the spool after any crash.

* Objects left in spool slots by a power cut (their rename had not reached
  the disk) are put in place, newest copy first; slots cut off mid-write were
  never acknowledged and are removed (see :mod:`dicom_node.receive.spool`).
* Partial ``.part`` files in the spool were never acknowledged: removed.
* Associations left open by a receiver process that no longer runs are
  closed, so completion does not wait for them until the maximum wait.
* Spool files without a row (power cut after fsync+rename but before the
  WAL commit reached disk) are indexed again; the sender had its success
  status, so they must not be lost.  Unless a row already names another copy
  of the same SOP Instance UID with a newer write stamp: then the file is a
  superseded copy (moved to another series by a correction, its removal cut
  off by a crash) and is removed, so a restart never undoes "newest wins".
* Deliveries caught in ``sending`` go back to the queue.
* Model jobs caught in ``running`` go back to the queue, or fail when they
  have used their attempts.

Every start-up repair is here, run once before the receiver and the
workers start, so nothing else in the node needs to guess whether it runs
after a crash.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from sqlalchemy import select

from dicom_node.clock import utcnow
from dicom_node.config import NodeConfig
from dicom_node.db import Association, Database, Instance
from dicom_node.db.states import AssociationEnd
from dicom_node.delivery.queue import recover as recover_deliveries
from dicom_node.jobs.queue import recover as recover_jobs
from dicom_node.receive.headers import read_header
from dicom_node.receive.ingest import InstanceHeader, record_instance
from dicom_node.receive.spool import PREAMBLE_LENGTH, Spool, parse_spool_preamble, preamble_digest

log = logging.getLogger("dicom_node.runtime.recovery")


@dataclass(frozen=True)
class RecoveryReport:
    slots_moved_into_place: int
    torn_slots_removed: int
    partial_files_removed: int
    associations_closed: int
    files_reindexed: int
    superseded_removed: int
    deliveries_requeued: int
    jobs_requeued: int


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` runs; a zombie (killed, not yet reaped by a lazy init) counts as dead."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return True


def _stamp(path: str) -> int | None:
    """A spool file's write stamp (None: missing, or written without the spool's preamble)."""
    try:
        with open(path, "rb") as handle:
            mark = parse_spool_preamble(handle.read(PREAMBLE_LENGTH))
    except OSError:
        return None
    return mark[1] if mark else None


def _superseded(db: Database, sop_uid: str, stamp: int | None) -> bool:
    """True if the row for ``sop_uid`` names another copy written after ``stamp``.

    Without both stamps (the row's file is gone, or either was not written
    by the spool) nothing tells which is newer: the file is indexed as before.
    """
    with db.session() as session:
        row_path = session.scalar(select(Instance.path).where(Instance.sop_instance_uid == sop_uid))
    if row_path is None or stamp is None:
        return False
    kept = _stamp(row_path)
    return kept is not None and stamp < kept


def recover(config: NodeConfig, db: Database, spool: Spool) -> RecoveryReport:
    pool = spool.recover_pool()
    removed = spool.clean_tmp()
    now = utcnow()
    with db.write() as session:
        stale = [a for a in session.scalars(select(Association).where(Association.ended_at.is_(None))).all() if not _pid_alive(a.receiver_pid)]
        for assoc in stale:
            assoc.ended_at, assoc.end_reason = now, AssociationEnd.NODE_RESTART
    known = {row for row in db.session().scalars(select(Instance.path)).all()}
    reindexed = superseded = 0
    for path in spool.iter_files():
        if str(path) in known:
            continue
        try:
            with open(path, "rb") as handle:
                head = handle.read(PREAMBLE_LENGTH)
            mark = parse_spool_preamble(head)
            ds = read_header(str(path))
            header = InstanceHeader(
                str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), str(ds.SOPClassUID),
                str(ds.file_meta.TransferSyntaxUID), str(ds.get("Modality", "")) or None, str(ds.get("SeriesDescription", "")) or None,
            )
        except Exception as exc:  # noqa: BLE001
            log.error("spool file %s cannot be re-indexed: %s", path, exc)
            continue
        if _superseded(db, header.sop_uid, mark[1] if mark else None):
            log.warning("removed %s: a superseded copy of %s (the database names a newer one)", path, header.sop_uid)
            path.unlink()
            superseded += 1
            continue
        called = config.listeners[0].ae_title
        with db.write() as session:
            record_instance(
                session, header, path=str(path), size=path.stat().st_size, association_id=None, called_ae=called,
                calling_ae=str(ds.file_meta.get("SourceApplicationEntityTitle", "")) or "UNKNOWN",
                late_policy=config.completion_for(called).late_instances, now=now, digest=preamble_digest(head),
            )
        reindexed += 1
    requeued = recover_deliveries(db)
    jobs = recover_jobs(db, config.jobs.max_attempts)
    report = RecoveryReport(pool.moved, pool.torn, removed, len(stale), reindexed, superseded, requeued, jobs)
    if any(vars(report).values()):
        log.warning("recovery: %s", report)
    return report
