"""Start-up recovery: make the database agree with the spool after any crash.

* Objects left in spool slots by a power cut (their rename had not reached
  the disk) are put in place, newest copy first; slots cut off mid-write were
  never acknowledged and are removed (see :mod:`dicom_node.receive.spool`).
* Partial ``.part`` files in the spool were never acknowledged: removed.
* Associations left open by a receiver process that no longer runs are
  closed, so completion does not wait for them until the maximum wait.
* Spool files without a row (power cut after fsync+rename but before the
  WAL commit reached disk) are indexed again; the sender had its success
  status, so they must not be lost.
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

import pydicom
from sqlalchemy import select

from dicom_node.clock import utcnow
from dicom_node.config import NodeConfig
from dicom_node.db import Association, Database, Instance
from dicom_node.delivery.queue import recover as recover_deliveries
from dicom_node.jobs.queue import recover as recover_jobs
from dicom_node.receive.ingest import InstanceHeader, record_instance
from dicom_node.receive.spool import Spool

log = logging.getLogger("dicom_node.runtime.recovery")


@dataclass(frozen=True)
class RecoveryReport:
    slots_moved_into_place: int
    torn_slots_removed: int
    partial_files_removed: int
    associations_closed: int
    files_reindexed: int
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


def recover(config: NodeConfig, db: Database, spool: Spool) -> RecoveryReport:
    pool = spool.recover_pool()
    removed = spool.clean_tmp()
    now = utcnow()
    with db.write() as session:
        stale = [a for a in session.scalars(select(Association).where(Association.ended_at.is_(None))).all() if not _pid_alive(a.receiver_pid)]
        for assoc in stale:
            assoc.ended_at, assoc.end_reason = now, "node-restart"
    known = {row for row in db.session().scalars(select(Instance.path)).all()}
    reindexed = 0
    for path in spool.iter_files():
        if str(path) in known:
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            header = InstanceHeader(
                str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), str(ds.SOPClassUID),
                str(ds.file_meta.TransferSyntaxUID), str(ds.get("Modality", "")) or None, str(ds.get("SeriesDescription", "")) or None,
            )
        except Exception as exc:  # noqa: BLE001
            log.error("spool file %s cannot be re-indexed: %s", path, exc)
            continue
        called = config.listeners[0].ae_title
        with db.write() as session:
            record_instance(
                session, header, path=str(path), size=path.stat().st_size, association_id=None, called_ae=called,
                calling_ae=str(ds.file_meta.get("SourceApplicationEntityTitle", "")) or "UNKNOWN",
                late_policy=config.completion_for(called).late_instances, now=now,
            )
        reindexed += 1
    requeued = recover_deliveries(db)
    jobs = recover_jobs(db, config.jobs.max_attempts)
    report = RecoveryReport(pool.moved, pool.torn, removed, len(stale), reindexed, requeued, jobs)
    if any(vars(report).values()):
        log.warning("recovery: %s", report)
    return report
