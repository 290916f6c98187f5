"""The receiver's per-object fast paths write exactly what the general ORM path would.

Both fast paths (Core statements for any database, the sqlite3 connection
for SQLite) are checked against rows read back through the ORM, and both
must change nothing when the common case does not hold.
"""
from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select

from dicom_node.db import Database
from dicom_node.db.models import Instance, Series, Study
from dicom_node.receive.ingest import CoreFastRecorder, InstanceHeader, SQLiteFastRecorder, fast_recorder, record_instance

T0 = datetime(2026, 11, 25, 16, 0, 0, 123456)


def _header(n: int) -> InstanceHeader:
    return InstanceHeader(
        study_uid="1.2.3", series_uid="1.2.3.4", sop_uid=f"1.2.3.4.{n}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1", modality="CT", series_description="chest",
    )


@pytest.fixture(params=["core", "sqlite3"])
def recorder(request, tmp_path):
    """(database, record function) with one instance already recorded by the general path."""
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    with db.write() as session:
        first = record_instance(session, _header(1), path="/spool/1.dcm", size=100, association_id=None,
                                called_ae="NODE", calling_ae="MOD", late_policy="ignore", now=T0)
    fast = CoreFastRecorder(db) if request.param == "core" else SQLiteFastRecorder(db)

    def record(header, now):
        return fast.record(header, series_id=first.series_id, study_id=first.study_id,
                           path=f"/spool/{header.sop_uid}.dcm", size=200, association_id=None, now=now)
    yield db, record, first
    fast.close()
    db.dispose()


def test_new_instance_rows_match_the_orm_view(recorder):
    db, record, first = recorder
    later = T0 + timedelta(seconds=2, microseconds=5)
    outcome = record(_header(2), later)
    assert outcome is not None and not outcome.duplicate and not outcome.late
    assert (outcome.series_id, outcome.study_id) == (first.series_id, first.study_id)
    with db.session() as session:
        row = session.get(Instance, outcome.instance_id)
        assert row.sop_instance_uid == "1.2.3.4.2" and row.path == "/spool/1.2.3.4.2.dcm" and row.size == 200
        assert row.received_at == later and row.version == 1 and row.late is False
        assert row.series_id == first.series_id and row.transfer_syntax_uid == "1.2.840.10008.1.2.1"
        series = session.get(Series, first.series_id)
        assert series.instance_count == 2 and series.last_received_at == later
        study = session.get(Study, first.study_id)
        assert study.last_received_at == later and study.state == "receiving"


def test_duplicate_uid_changes_nothing(recorder):
    db, record, first = recorder
    assert record(_header(1), T0 + timedelta(seconds=5)) is None
    with db.session() as session:
        assert session.get(Series, first.series_id).instance_count == 1
        assert session.get(Series, first.series_id).last_received_at == T0


def test_series_no_longer_receiving_changes_nothing(recorder):
    db, record, first = recorder
    with db.write() as session:
        session.get(Series, first.series_id).state = "dispatched"
    assert record(_header(3), T0 + timedelta(seconds=5)) is None
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 1
        assert session.get(Study, first.study_id).last_received_at == T0


def test_the_receiver_gets_the_sqlite_recorder_on_sqlite(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    recorder = fast_recorder(db)
    assert isinstance(recorder, SQLiteFastRecorder)
    recorder.close()
    db.dispose()


def test_sqlite_recorder_refuses_other_databases():
    class NotSQLite:
        is_sqlite = False
        write_lock = None

    with pytest.raises(ValueError, match="SQLite"):
        SQLiteFastRecorder(NotSQLite())  # type: ignore[arg-type]
