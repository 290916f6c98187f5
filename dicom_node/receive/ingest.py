"""Recording received instances in the database.

The duplicate policy lives here: a second copy of a SOP Instance UID
replaces the first on disk (the spool writes to the same path) and in the
row (``version`` + 1, new association and time), and the series counts it in
``duplicate_count``.  The newest copy wins because a modality resends after
a correction far more often than by mistake.  A copy moved to another series
by a correction has another path: the superseded file is removed once the
new row is committed, so nothing (start-up recovery included) can take it
for the newest copy again.  A byte-identical copy (same ``digest``) is
counted in ``duplicate_count`` and changes nothing else: no new version, so
it is neither routed nor forwarded again.

The late-instance policy too: an instance that arrives after its series was
dispatched is stored and flagged ``late``; with ``ignore`` the series stays
dispatched, with ``rerun`` / ``replace`` it goes back to ``receiving`` and
the completion tracker dispatches it again (a new run number).
"""
from __future__ import annotations

import logging
import os
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, Table, bindparam, event, insert, select, update
from sqlalchemy.orm import Session

from dicom_node.db.models import Instance, Series, Study
from dicom_node.db.states import SeriesState, StudyState

if TYPE_CHECKING:
    from sqlalchemy import Row

    from dicom_node.db import Database

log = logging.getLogger("dicom_node.receive.ingest")


@dataclass(frozen=True)
class InstanceHeader:
    """The few header values the database keeps per instance."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str | None
    series_description: str | None


@dataclass(frozen=True)
class RecordOutcome:
    instance_id: int
    series_id: int
    duplicate: bool
    late: bool
    study_id: int = 0
    identical: bool = False  # a byte-identical copy of the stored one: counted, nothing else changed


def _study(session: Session, uid: str, now: datetime, called_ae: str) -> Study:
    study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
    if study is None:
        study = Study(study_instance_uid=uid, state=StudyState.RECEIVING, first_received_at=now, last_received_at=now, called_ae=called_ae)
        session.add(study)
        session.flush()
    else:
        study.last_received_at = now
    return study


def _series(session: Session, study: Study, header: InstanceHeader, now: datetime, called_ae: str, calling_ae: str) -> Series:
    series = session.scalar(select(Series).where(Series.series_instance_uid == header.series_uid))
    if series is None:
        series = Series(
            study_id=study.id, series_instance_uid=header.series_uid, modality=header.modality,
            series_description=(header.series_description or "")[:64] or None, state=SeriesState.RECEIVING,
            called_ae=called_ae, calling_ae=calling_ae, instance_count=0, duplicate_count=0, late_count=0,
            run_count=0, first_received_at=now, last_received_at=now,
        )
        session.add(series)
        session.flush()
    series.last_received_at = now
    return series


def record_instance(
    session: Session,
    header: InstanceHeader,
    *,
    path: str,
    size: int,
    association_id: int | None,
    called_ae: str,
    calling_ae: str,
    late_policy: str,
    now: datetime,
    digest: str | None = None,
) -> RecordOutcome:
    """Insert or update the rows for one stored instance (caller commits).

    ``digest``: of the dataset bytes (:func:`dicom_node.receive.spool.dataset_digest`).
    """
    study = _study(session, header.study_uid, now, called_ae)
    series = _series(session, study, header, now, called_ae, calling_ae)
    instance = session.scalar(select(Instance).where(Instance.sop_instance_uid == header.sop_uid))
    if instance is not None and digest is not None and instance.digest == digest and instance.path == path:
        series.duplicate_count += 1
        session.flush()
        return RecordOutcome(instance.id, series.id, True, False, study.id, identical=True)
    late = series.state == SeriesState.DISPATCHED
    if late:
        series.late_count += 1
        if late_policy != "ignore":
            series.state = SeriesState.RECEIVING
            series.first_received_at = now
    elif series.state == SeriesState.COMPLETE:
        series.state = SeriesState.RECEIVING
    if series.state == SeriesState.RECEIVING:
        study.state = StudyState.RECEIVING
    duplicate = instance is not None
    if instance is None:
        instance = Instance(
            series_id=series.id, sop_instance_uid=header.sop_uid, sop_class_uid=header.sop_class_uid,
            transfer_syntax_uid=header.transfer_syntax_uid, path=path, size=size, received_at=now,
            association_id=association_id, version=1, late=late, digest=digest,
        )
        session.add(instance)
        series.instance_count += 1
    else:
        instance.version += 1
        instance.routed_version = None  # the new copy goes through instance-level rules again
        if instance.path != path:
            _remove_after_commit(session, instance.path)
        instance.path, instance.size, instance.received_at, instance.digest = path, size, now, digest
        instance.association_id = association_id
        instance.transfer_syntax_uid = header.transfer_syntax_uid
        instance.late = instance.late or late
        if instance.series_id != series.id:  # moved between series by a correction
            old = session.get(Series, instance.series_id)
            if old is not None:
                old.instance_count -= 1
            instance.series_id = series.id
            series.instance_count += 1
        series.duplicate_count += 1
    session.flush()
    return RecordOutcome(instance.id, series.id, duplicate, late, study.id)


def _remove_after_commit(session: Session, superseded: str) -> None:
    """Delete a superseded copy's file once the row naming its successor is committed.

    Not before: if the commit fails, the row still names the old file.  A
    crash in between leaves the file behind, and start-up recovery then
    sees by its write stamp that it is older than the row's copy.
    """
    def remove(_session: Session) -> None:
        try:
            os.unlink(superseded)
        except FileNotFoundError:
            pass
        except OSError as exc:  # the row is right either way; recovery removes it by its stamp
            log.warning("superseded copy %s not removed: %s", superseded, exc)

    event.listen(session, "after_commit", remove, once=True)


# Declarative types ``__table__`` as any FromClause; for these mapped classes it is their Table.
_INSTANCES_T = cast(Table, Instance.__table__)
_SERIES_T = cast(Table, Series.__table__)
_STUDIES_T = cast(Table, Study.__table__)
# Built once: SQLAlchemy caches their compiled form, so each call only binds values.
_FIND_INSTANCE = select(_INSTANCES_T.c.id).where(_INSTANCES_T.c.sop_instance_uid == bindparam("b_uid"))
_TOUCH_SERIES = (
    update(_SERIES_T)
    .where(_SERIES_T.c.id == bindparam("b_series"), _SERIES_T.c.state == SeriesState.RECEIVING)
    .values(last_received_at=bindparam("b_now"), instance_count=_SERIES_T.c.instance_count + 1)
)
_TOUCH_STUDY = update(_STUDIES_T).where(_STUDIES_T.c.id == bindparam("b_study")).values(
    last_received_at=bindparam("b_now"), state=StudyState.RECEIVING
)
_INSERT_INSTANCE = insert(_INSTANCES_T)


def record_new_instance_fast(
    conn: Connection,
    header: InstanceHeader,
    *,
    series_id: int,
    study_id: int,
    path: str,
    size: int,
    association_id: int | None,
    now: datetime,
    digest: str | None = None,
) -> RecordOutcome | None:
    """The common case in four Core statements: a new instance of a series still receiving.

    The receiver knows ``series_id`` / ``study_id`` from an earlier instance
    of the same association.  Returns None (and changes nothing) whenever the
    common case does not hold: a duplicate UID, or a series that completed
    meanwhile; the caller then uses :func:`record_instance` in a new
    transaction.  Core statements on a plain connection skip the ORM's
    unit of work and its session synchronisation, which cost more CPU per
    object than everything else the node does in a C-STORE (see
    docs/benchmarks/receiver.md).
    """
    if conn.execute(_FIND_INSTANCE, {"b_uid": header.sop_uid}).first() is not None:
        return None
    if conn.execute(_TOUCH_SERIES, {"b_series": series_id, "b_now": now}).rowcount != 1:
        return None
    conn.execute(_TOUCH_STUDY, {"b_study": study_id, "b_now": now})
    inserted = conn.execute(
        _INSERT_INSTANCE,
        {
            "series_id": series_id, "sop_instance_uid": header.sop_uid, "sop_class_uid": header.sop_class_uid,
            "transfer_syntax_uid": header.transfer_syntax_uid, "path": path, "size": size, "received_at": now,
            "association_id": association_id, "version": 1, "late": False, "digest": digest,
        },
    )
    # Optional only for an INSERT that produced no key; a single-row INSERT into an autoincrement table has one
    instance_id = cast("Row[int]", inserted.inserted_primary_key)[0]
    return RecordOutcome(instance_id, series_id, False, False, study_id)


class CoreFastRecorder:
    """:func:`record_new_instance_fast` in its own serialised transaction, for any database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def record(self, header: InstanceHeader, **where: Any) -> RecordOutcome | None:
        """Same contract as :func:`record_new_instance_fast`: None means nothing was changed."""
        with self._db.write_connection() as conn:
            return record_new_instance_fast(conn, header, **where)

    def close(self) -> None:
        """Nothing held between calls."""


def fast_recorder(db: Database) -> CoreFastRecorder | SQLiteFastRecorder:
    """The receiver's per-object recorder: straight on sqlite3 for SQLite (the default), Core otherwise."""
    return SQLiteFastRecorder(db) if db.is_sqlite else CoreFastRecorder(db)


# SQLAlchemy's storage format for DateTime on SQLite, so rows written here read back identically.
_SQLITE_DATETIME = "%Y-%m-%d %H:%M:%S.%f"


class SQLiteFastRecorder:
    """:func:`record_new_instance_fast` on the sqlite3 connection itself, for the default database.

    Even Core statements cost about 0.3 ms of CPU per object in SQLAlchemy's
    execution layer; four statements and a commit straight on the DBAPI
    connection cost a fraction of that, inside the C-STORE round trip that
    bounds reception speed.  The SQL is the same as the Core statements';
    the datetime is written in SQLAlchemy's SQLite storage format so the ORM
    reads these rows like any other.  One pooled connection is held for the
    receiver's lifetime and used under the database's write lock.
    """

    def __init__(self, db: Database) -> None:
        if not db.is_sqlite or db.write_lock is None:
            raise ValueError("SQLiteFastRecorder needs an SQLite database")
        self._lock = db.write_lock
        self._pooled = db.engine.raw_connection()
        # a URL starting "sqlite" uses the default pysqlite driver, whose connection is sqlite3's;
        # SQLAlchemy types it Optional only for a connection already invalidated
        self._conn = cast(sqlite3.Connection, self._pooled.driver_connection)

    def record(
        self,
        header: InstanceHeader,
        *,
        series_id: int,
        study_id: int,
        path: str,
        size: int,
        association_id: int | None,
        now: datetime,
        digest: str | None = None,
    ) -> RecordOutcome | None:
        """Same contract as :func:`record_new_instance_fast`: None means nothing was changed."""
        stamp = now.strftime(_SQLITE_DATETIME)
        with self._lock:
            cur = self._conn.cursor()
            try:
                cur.execute("SELECT id FROM instances WHERE sop_instance_uid = ?", (header.sop_uid,))
                if cur.fetchone() is not None:
                    return None
                cur.execute(
                    "UPDATE series SET last_received_at = ?, instance_count = instance_count + 1 "
                    f"WHERE id = ? AND state = '{SeriesState.RECEIVING}'",
                    (stamp, series_id),
                )
                if cur.rowcount != 1:
                    self._conn.rollback()
                    return None
                cur.execute(f"UPDATE studies SET last_received_at = ?, state = '{StudyState.RECEIVING}' WHERE id = ?", (stamp, study_id))
                cur.execute(
                    "INSERT INTO instances (series_id, sop_instance_uid, sop_class_uid, transfer_syntax_uid, path, "
                    "size, received_at, association_id, version, late, digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, 0, ?)",
                    (series_id, header.sop_uid, header.sop_class_uid, header.transfer_syntax_uid, path, size, stamp,
                     association_id, digest),
                )
                instance_id = cast(int, cur.lastrowid)  # set by the INSERT just executed
                self._conn.commit()
            except BaseException:
                self._conn.rollback()
                raise
            finally:
                cur.close()
        return RecordOutcome(instance_id, series_id, False, False, study_id)

    def close(self) -> None:
        self._pooled.close()
