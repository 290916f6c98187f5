"""Each step of a sweep is isolated: a series, study, object group or job that raises is marked, once, and the rest goes on.

Driven directly (dispatcher + SQLite + files written here); the running-node
version of the poison object is tests/node/test_poison_object.py.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pydicom
import pytest
from alembic import command
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session

from dicom_node.db import Database, Delivery, Job, Series, Study
from dicom_node.db.admin_models import AuditEntry
from dicom_node.db.engine import alembic_config
from dicom_node.ops import admin_actions, queries
from dicom_node.ops.metrics import render_metrics
from dicom_node.ops.synthetic import chest_ct_series, chest_dx, write_datasets
from dicom_node.receive.ingest import InstanceHeader, record_instance
from dicom_node.routing.actions import Target, forward_action
from dicom_node.routing.dispatcher import Dispatcher
from dicom_node.routing.header_readahead import HeaderReadahead
from routing_rules import RuleSet
from tests.node.in_process import FixedRules, pacs_config, valid_rules

T0 = datetime(2026, 12, 3, 12, 0, 0)  # long past: every series and study is due at the first sweep

SERIES_FORWARD = """
[[rule]]
name = "ct-series"
level = "series"
[rule.match]
Modality = "CT"
[[rule.actions]]
type = "forward"
destinations = ["pacs"]
"""

DX_NOW = """
[[rule]]
name = "{name}"
level = "instance"
[rule.match]
Modality = "DX"
[[rule.actions]]
type = "forward"
destinations = ["pacs"]
"""


@pytest.fixture
def node(tmp_path: Path):  # type: ignore[no-untyped-def]
    config = pacs_config(tmp_path)
    db = Database(config.database_url)
    yield config, db
    db.dispose()


def _store(db: Database, path: Path, now: datetime = T0) -> int:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    header = InstanceHeader(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID,
                            str(ds.file_meta.TransferSyntaxUID), ds.Modality, None)
    with db.write() as session:
        return record_instance(session, header, path=str(path), size=path.stat().st_size, association_id=None,
                               called_ae="DICOM_NODE", calling_ae="MOD", late_policy="ignore", now=now).series_id


def _series(db: Database, series_id: int) -> tuple[str, str | None]:
    with db.session() as session:
        series = session.get(Series, series_id)
        assert series is not None
        return series.state, series.failure_reason


def _errors(caplog: pytest.LogCaptureFixture, words: str) -> int:
    return sum(1 for r in caplog.records if r.levelno >= logging.ERROR and words in r.getMessage())


def test_a_series_whose_headers_cannot_be_read_fails_alone(node, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config, db = node
    dispatcher = Dispatcher(config, db, FixedRules(valid_rules(SERIES_FORWARD)))
    bad = write_datasets(chest_ct_series(2, 32, seed=1), tmp_path / "bad", "CT")
    good = write_datasets(chest_ct_series(3, 32, seed=2), tmp_path / "good", "CT")
    bad_id = _store(db, bad[0])
    _store(db, bad[1])
    good_id = _store(db, good[0])
    for path in good[1:]:
        _store(db, path)
    bad_uid = str(pydicom.dcmread(bad[0]).SeriesInstanceUID)
    for path in bad:
        path.write_bytes(b"not DICOM any more")  # damaged after it was stored; the first in id order

    caplog.set_level(logging.ERROR, "dicom_node")
    dispatcher.sweep()
    state, reason = _series(db, bad_id)
    assert state == "failed" and reason is not None
    assert "no header of its 2 object(s) can be read" in reason and "InvalidDicomError" in reason
    assert _series(db, good_id) == ("dispatched", None)
    with db.session() as session:
        assert [d.series_id for d in session.scalars(select(Delivery))] == [good_id]
        studies = {s.id: s.state for s in session.scalars(select(Study))}
    assert sorted(studies.values()) == ["dispatched", "receiving"]  # the failed series' study waits for its series
    assert _errors(caplog, "cannot be dispatched, marked failed") == 1

    caplog.clear()
    for _ in range(3):
        dispatcher.sweep()
    assert caplog.records == []  # nothing logged again: not tried at every sweep
    assert _series(db, bad_id)[0] == "failed"

    # what an operator sees: status, the operations counts, metrics
    with db.session() as session:
        report = queries.status_report(session, config, T0)
        counts = queries.counts(session)
    (row,) = report["failed_dispatches"]
    assert (row["level"], row["id"], row["uid"], row["modality"], row["instances"], row["reason"]) == (
        "series", bad_id, bad_uid, "CT", 2, reason)
    assert counts["series"] == {"dispatched": 1, "failed": 1}
    metrics = render_metrics(db)
    assert 'dicom_node_series{state="failed"} 1.0' in metrics and 'dicom_node_failures{kind="series"} 1.0' in metrics
    assert 'dicom_node_studies{state="failed"} 0.0' in metrics


def test_retry_dispatches_again_and_dismiss_lets_the_study_go_on(node, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config, db = node
    dispatcher = Dispatcher(config, db, FixedRules(valid_rules(SERIES_FORWARD)))
    first = write_datasets(chest_ct_series(1, 32, seed=3), tmp_path / "first", "CT")
    second = write_datasets(chest_ct_series(1, 32, seed=4), tmp_path / "second", "CT")
    first_id, second_id = _store(db, first[0]), _store(db, second[0])
    good_copy = first[0].read_bytes()
    for path in (first[0], second[0]):
        path.write_bytes(b"damaged")
    caplog.set_level(logging.ERROR, "dicom_node")
    dispatcher.sweep()
    assert _series(db, first_id)[0] == _series(db, second_id)[0] == "failed"

    # retry before the cause is fixed: failed again, logged once more
    assert admin_actions.retry_dispatch(db, "ops", "10.0.0.1", "series", first_id)
    assert _series(db, first_id) == ("complete", None)
    caplog.clear()
    dispatcher.sweep()
    assert _series(db, first_id)[0] == "failed" and _errors(caplog, "cannot be dispatched") == 1
    # the file is good again (a resend, a restore): retry routes it
    first[0].write_bytes(good_copy)
    assert admin_actions.retry_dispatch(db, "ops", None, "series", first_id)
    dispatcher.sweep()
    assert _series(db, first_id) == ("dispatched", None)
    with db.session() as session:
        assert [d.series_id for d in session.scalars(select(Delivery))] == [first_id]

    # dismiss: dispatched, nothing queued, the reason kept behind who and why; its study is then dispatched
    assert admin_actions.dismiss_dispatch(db, "ops", None, "series", second_id, note="lost copy")
    state, reason = _series(db, second_id)
    assert state == "dispatched" and reason is not None
    assert reason.startswith("dismissed by ops at ") and "(lost copy): no header" in reason
    assert not admin_actions.dismiss_dispatch(db, "ops", None, "series", second_id)  # not failed any more
    assert not admin_actions.retry_dispatch(db, "ops", None, "series", second_id)
    dispatcher.sweep()
    with db.session() as session:
        assert set(session.scalars(select(Study.state))) == {"dispatched"}
        assert [d.series_id for d in session.scalars(select(Delivery))] == [first_id]
        audit = [(e.action, e.target, e.outcome) for e in session.scalars(select(AuditEntry).order_by(AuditEntry.id))]
    assert audit == [("retry", f"series {first_id}", "ok"), ("retry", f"series {first_id}", "ok"),
                     ("dismiss", f"series {second_id}", "ok"), ("dismiss", f"series {second_id}", "failed"),
                     ("retry", f"series {second_id}", "failed")]


def test_a_study_that_cannot_be_dispatched_fails_alone(node, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config, db = node
    study_rule = SERIES_FORWARD.replace('"ct-series"', '"ct-study"').replace('"series"', '"study"')
    dispatcher = Dispatcher(config, db, FixedRules(valid_rules(study_rule)))
    bad = write_datasets(chest_ct_series(1, 32, seed=5), tmp_path / "bad", "CT")
    good = write_datasets(chest_ct_series(1, 32, seed=6), tmp_path / "good", "CT")
    bad_series, good_series = _store(db, bad[0]), _store(db, good[0])
    with db.write() as session:  # both series dispatched earlier; one file damaged since
        for series_id in (bad_series, good_series):
            session.get(Series, series_id).state = "dispatched"  # type: ignore[union-attr]
    bad[0].write_bytes(b"damaged")
    caplog.set_level(logging.ERROR, "dicom_node")
    dispatcher.sweep()
    with db.session() as session:
        states = {s.series[0].id: (s.id, s.state, s.failure_reason) for s in session.scalars(select(Study))}
    bad_study, state, reason = states[bad_series]
    assert state == "failed" and reason is not None and "no header" in reason
    assert states[good_series][1:] == ("dispatched", None)
    assert _errors(caplog, f"study {bad_study} cannot be dispatched") == 1
    assert 'dicom_node_failures{kind="study"} 1.0' in render_metrics(db)
    assert admin_actions.retry_dispatch(db, "ops", None, "study", bad_study)
    with db.session() as session:
        assert session.get(Study, bad_study).state == "receiving"  # type: ignore[union-attr]
    dispatcher.sweep()
    assert admin_actions.dismiss_dispatch(db, "ops", None, "study", bad_study)
    with db.session() as session:
        assert session.get(Study, bad_study).state == "dispatched"  # type: ignore[union-attr]


def test_an_instance_rule_that_raises_does_not_hold_the_other_rules(node, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config, db = node
    rules = valid_rules(DX_NOW.format(name="a-broken") + DX_NOW.format(name="b-works"))
    dispatcher = Dispatcher(config, db, FixedRules(rules))

    def broken_for_one_rule(session: Session, target: Target, rule_name: str, action: dict[str, Any], now: datetime) -> str:
        """A forward handler that fails for one rule (as a plug-in action type with a bug would)."""
        if rule_name == "a-broken":
            raise RuntimeError("handler bug")
        return forward_action(session, target, rule_name, action, now)

    dispatcher.handlers["forward"] = broken_for_one_rule
    for path in write_datasets([chest_dx(64, 64, seed=i) for i in range(2)], tmp_path / "dx", "DX"):
        _store(db, path)
    caplog.set_level(logging.ERROR, "dicom_node")
    assert dispatcher.route_instances() is False
    with db.session() as session:
        assert sorted(d.rule_name for d in session.scalars(select(Delivery))) == ["b-works", "b-works"]
        assert queries.instances_awaiting_instance_rules(session) == 0  # marked: not tried again at every sweep
    assert _errors(caplog, "instance rule a-broken on 1 object(s)") == 2  # one line per series, not per sweep
    caplog.clear()
    dispatcher.route_instances()
    assert caplog.records == []


def test_findings_of_a_job_that_cannot_be_read_are_skipped_once(node, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config, db = node
    dispatcher = Dispatcher(config, db, FixedRules(valid_rules(SERIES_FORWARD)))
    series_id = _store(db, write_datasets(chest_ct_series(1, 32, seed=7), tmp_path / "ct", "CT")[0])
    bad_result = {"results": [{"kind": "classification", "label": "x", "probability": "not a number"}]}
    with db.write() as session:
        session.add(Job(id=1, series_id=series_id, rule_name="r", action={"model": "m"}, state="done", created_at=T0, result=bad_result))
        session.add(Job(id=2, series_id=series_id, rule_name="r", action={"model": "m"}, state="done", created_at=T0, result=None))
    caplog.set_level(logging.ERROR, "dicom_node")
    dispatcher.apply_findings()
    with db.session() as session:
        jobs = {j.id: (j.findings_applied, j.error) for j in session.scalars(select(Job))}
    assert jobs[2] == (True, None)
    assert jobs[1][0] is True and jobs[1][1] is not None and jobs[1][1].startswith("findings rules not applied: ValueError")
    assert _errors(caplog, "job 1: findings rules not applied") == 1
    caplog.clear()
    dispatcher.apply_findings()
    assert caplog.records == []


def test_migration_adds_failure_reasons_to_series_and_studies(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    command.upgrade(alembic_config(url), "0005_instance_digest")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO studies (id, study_instance_uid, state, first_received_at, last_received_at, run_count) "
                          "VALUES (1, '1.2', 'receiving', '2026-12-01 10:00:00', '2026-12-01 10:00:00', 0)"))
    engine.dispose()
    command.upgrade(alembic_config(url), "head")
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT state, failure_reason FROM studies")).one() == ("receiving", None)
        assert "failure_reason" in {row[1] for row in conn.execute(text("PRAGMA table_info(series)"))}
    engine.dispose()
    command.downgrade(alembic_config(url), "0005_instance_digest")
    engine = create_engine(url)
    with engine.connect() as conn:
        assert "failure_reason" not in {row[1] for row in conn.execute(text("PRAGMA table_info(studies)"))}
    engine.dispose()


@dataclass
class RaisingFor:
    """Rules whose evaluation raises for one object (as a regex over its time budget would, issue 15 item 6)."""

    ruleset: RuleSet
    series_uid: str

    @property
    def rules(self) -> Any:
        return self.ruleset.rules

    def evaluate(self, view: Any, **kwargs: Any) -> Any:
        if view.series_uid == self.series_uid:
            raise TimeoutError("regex time budget exceeded")
        return self.ruleset.evaluate(view, **kwargs)

    def current(self) -> RaisingFor:
        return self


def test_an_object_the_rules_cannot_judge_does_not_hold_the_others(node, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config, db = node
    paths = write_datasets([chest_dx(64, 64, seed=i) for i in range(3)], tmp_path / "dx", "DX")
    for path in paths:
        _store(db, path)
    rules = RaisingFor(valid_rules(DX_NOW.format(name="dx-now")), str(pydicom.dcmread(paths[0]).SeriesInstanceUID))
    dispatcher = Dispatcher(config, db, rules)
    caplog.set_level(logging.ERROR, "dicom_node")
    dispatcher.route_instances()
    with db.session() as session:
        assert len(session.scalars(select(Delivery)).all()) == 2
        assert queries.instances_awaiting_instance_rules(session) == 0
    assert _errors(caplog, "instance rules cannot judge") == 1


def test_read_ahead_logs_an_unreadable_file_once_and_dispatch_gets_its_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good, bad = (str(p) for p in write_datasets(chest_ct_series(2, 32, seed=8), tmp_path / "ct", "CT"))
    Path(bad).write_bytes(b"damaged")
    readahead = HeaderReadahead(budget_seconds=60)
    caplog.set_level(logging.ERROR, "dicom_node")
    for _ in range(5):  # one sweep after another during the quiet period
        readahead.read_ahead({3: [good, bad]})
    read = readahead.take(3, [good, bad])
    assert len(read.datasets) == 1 and list(read.unreadable) == [bad] and "InvalidDicomError" in read.unreadable[bad]
    assert _errors(caplog, "cannot read header of") == 1
