"""What takes time off the forward path: the sweep runs when a quiet period ends, headers are read ahead.

The completion sweep must report when the next series fires and which
series sit in their quiet period; the scheduler helper must pull the sweep
forward to that moment (never push it back); and headers read ahead must be
the current file's, re-read when a duplicate replaced the file.
"""
from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
from apscheduler.schedulers.background import BackgroundScheduler

from dicom_node.config import load_config
from dicom_node.db import Database
from dicom_node.db.models import Association, Series
from dicom_node.ops.synthetic import chest_ct_series, write_datasets
from dicom_node.receive.ingest import InstanceHeader, record_instance
from dicom_node.routing.completion import mark_complete_series
from dicom_node.routing.header_readahead import HeaderReadahead
from dicom_node.runtime.service import _CoalescedSweepFilter, _pull_forward

T0 = datetime(2026, 12, 3, 12, 0, 0)


def _record(db: Database, series_uid: str, n: int, association_id: int, now: datetime) -> int:
    header = InstanceHeader("1.2.3", series_uid, f"{series_uid}.{n}", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", "CT", None)
    with db.write() as session:
        return record_instance(session, header, path=f"/spool/{series_uid}.{n}.dcm", size=1, association_id=association_id,
                               called_ae="DICOM_NODE", calling_ae="MOD", late_policy="ignore", now=now).series_id


def test_sweep_reports_next_fire_and_quiet_series(tmp_path: Path) -> None:
    config_path = tmp_path / "node.toml"
    config_path.write_text("[completion]\nseries_quiet_seconds = 2.0\nseries_max_wait_seconds = 600.0\n")
    config = load_config(config_path)
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    with db.write() as session:
        ended = Association(calling_ae="MOD", called_ae="DICOM_NODE", peer_host="127.0.0.1", peer_port=1, started_at=T0,
                            ended_at=T0 + timedelta(seconds=1), receiver_pid=os.getpid())
        still_open = Association(calling_ae="MOD", called_ae="DICOM_NODE", peer_host="127.0.0.1", peer_port=2, started_at=T0,
                                 receiver_pid=os.getpid())
        session.add_all([ended, still_open])
        session.flush()
        ended_id, open_id = ended.id, still_open.id
    quiet_series = _record(db, "1.2.3.1", 1, ended_id, T0)
    open_series = _record(db, "1.2.3.2", 1, open_id, T0)

    with db.write() as session:
        found = mark_complete_series(session, config, T0 + timedelta(seconds=2))
    assert found.completed == []
    assert found.quiet == [quiet_series]  # the open association keeps the other one out of read-ahead
    assert found.next_fire == T0 + timedelta(seconds=3)  # association end + 2 s quiet, before the other's max wait

    with db.write() as session:
        found = mark_complete_series(session, config, T0 + timedelta(seconds=3))
    assert found.completed == [quiet_series]
    assert found.quiet == []
    assert found.next_fire == T0 + timedelta(seconds=600)  # only the maximum wait of the open one is left
    with db.session() as session:
        assert session.get(Series, quiet_series).state == "complete"
        assert session.get(Series, open_series).state == "receiving"
    db.dispose()


def test_pull_forward_moves_the_sweep_earlier_never_later() -> None:
    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.add_job(lambda: None, "interval", seconds=3600, id="sweep")
    scheduler.start(paused=True)
    try:
        regular = scheduler.get_job("sweep").next_run_time
        later = (regular + timedelta(seconds=5)).astimezone(UTC).replace(tzinfo=None)
        _pull_forward(scheduler, "sweep", later)
        assert scheduler.get_job("sweep").next_run_time == regular
        sooner = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=2)
        _pull_forward(scheduler, "sweep", sooner)
        assert scheduler.get_job("sweep").next_run_time == sooner.replace(tzinfo=UTC)
        overdue = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=1)
        _pull_forward(scheduler, "sweep", overdue)  # due already: just after the caller returns, never in the past
        pulled = scheduler.get_job("sweep").next_run_time
        assert datetime.now(UTC) < pulled < datetime.now(UTC) + timedelta(seconds=1)
        _pull_forward(scheduler, "missing", sooner)  # an unknown job is left alone
    finally:
        scheduler.shutdown(wait=False)


def test_read_ahead_headers_are_the_current_files(tmp_path: Path) -> None:
    paths = [str(p) for p in write_datasets(chest_ct_series(4, 32, seed=1), tmp_path / "s", "CT")]
    readahead = HeaderReadahead(budget_seconds=60)
    assert readahead.read_ahead({7: paths[:2]}) == 2
    assert readahead.read_ahead({7: paths}) == 2  # only what is new
    assert readahead.cached(7) == 4

    # a duplicate replaces one file (newest wins): its header is read again at dispatch
    replacement = pydicom.dcmread(paths[1])
    replacement.SeriesDescription = "replaced copy"
    replacement.save_as(tmp_path / "new.dcm")
    os.replace(tmp_path / "new.dcm", paths[1])
    headers = readahead.take(7, paths).datasets
    assert [str(h.SOPInstanceUID) for h in headers] == [str(pydicom.dcmread(p).SOPInstanceUID) for p in paths]
    assert headers[1].SeriesDescription == "replaced copy" and headers[0].SeriesDescription != "replaced copy"
    assert readahead.cached(7) == 0  # taken

    readahead.read_ahead({7: paths, 8: paths[:1]})
    readahead.read_ahead({8: paths[:1]})  # series 7 no longer waits: forgotten
    assert (readahead.cached(7), readahead.cached(8)) == (0, 1)

    stingy = HeaderReadahead(budget_seconds=0)
    assert stingy.read_ahead({1: paths}) <= 1  # the budget bounds one sweep's work


def test_only_the_coalesced_sweep_warning_is_dropped() -> None:
    sweep_skipped = logging.LogRecord("apscheduler.scheduler", logging.WARNING, __file__, 1,
                                      'Execution of job "%s" skipped: maximum number of running instances reached (%d)',
                                      ("Node.run.<locals>.sweep (trigger: interval[0:00:00.250000])", 1), None)
    other = logging.LogRecord("apscheduler.scheduler", logging.WARNING, __file__, 1, 'Run time of job "%s" was missed by %s',
                              ("Node.run.<locals>.sweep", "0:00:07"), None)
    assert not _CoalescedSweepFilter().filter(sweep_skipped)
    assert _CoalescedSweepFilter().filter(other)
