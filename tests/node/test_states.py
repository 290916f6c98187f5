"""Every value the node writes into a ``state`` column is a member of its StrEnum (dicom_node.db.states).

The pipeline is driven in-process (receive, complete, dispatch, claim, send
to a port where nothing listens, recover, self test), and after every step
each state column is read back with plain SQL, as an operator would.
"""
from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from pathlib import Path

import pydicom
from sqlalchemy import text

from dicom_node.clock import utcnow
from dicom_node.config import load_config
from dicom_node.db import Database
from dicom_node.db.admin_models import SelfTestRun
from dicom_node.db.models import Delivery, DeliveryItem, Job, Series, Study
from dicom_node.db.states import DeliveryItemState, DeliveryState, JobState, SelfTestState, SeriesState, StudyState
from dicom_node.delivery.queue import claim_next
from dicom_node.delivery.workers import run_deliveries
from dicom_node.jobs.queue import claim_next_job, recover, retry_jobs
from dicom_node.ops import selftest
from dicom_node.ops.synthetic import chest_ct_series, write_datasets
from dicom_node.receive.ingest import InstanceHeader, record_instance
from dicom_node.routing.actions import NODE_ACTIONS
from dicom_node.routing.dispatcher import Dispatcher
from routing_rules import parse_rules_text
from tests.node.in_process import FixedRules

COLUMNS: dict[str, type[StrEnum]] = {
    "studies": StudyState, "series": SeriesState, "jobs": JobState, "deliveries": DeliveryState,
    "delivery_items": DeliveryItemState, "selftest_runs": SelfTestState,
}
RULES = """
[[rule]]
name = "ct-to-pacs-and-check"
[rule.match]
Modality = "CT"
[[rule.actions]]
type = "forward"
destinations = ["pacs"]
[[rule.actions]]
type = "model"
model = "enhancement-hu"
outputs = ["sr"]
destinations = ["pacs"]

[[rule]]
name = "study-copy"
level = "study"
[rule.match]
Modality = "CT"
[[rule.actions]]
type = "forward"
destinations = ["pacs"]
"""


def _snapshot(db: Database, seen: dict[str, set[str]]) -> None:
    with db.session() as session:
        for table in COLUMNS:
            seen[table] |= set(session.execute(text(f"SELECT DISTINCT state FROM {table}")).scalars())


def test_every_state_written_by_a_run_is_a_member(tmp_path: Path) -> None:
    (tmp_path / "node.toml").write_text(
        f"[database]\nurl = 'sqlite:///{tmp_path / 'node.db'}'\n[delivery]\nmax_attempts = 1\n"
        "[destinations.pacs]\ntype = 'dicom'\nae_title = 'PACS'\nhost = '127.0.0.1'\nport = 9\n"
    )
    config = load_config(tmp_path / "node.toml")
    db = Database(config.database_url)
    seen: dict[str, set[str]] = {table: set() for table in COLUMNS}
    rules = parse_rules_text(RULES, destinations={"pacs"}, registry=NODE_ACTIONS)
    assert not rules.errors, [str(e) for e in rules.errors]
    try:
        then = utcnow() - timedelta(hours=1)  # quiet long enough: the first sweep completes and dispatches
        for path in write_datasets(chest_ct_series(2, 32, seed=5), tmp_path / "ct", "CT"):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            header = InstanceHeader(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID,
                                    str(ds.file_meta.TransferSyntaxUID), ds.Modality, None)
            with db.write() as session:
                record_instance(session, header, path=str(path), size=path.stat().st_size, association_id=None,
                                called_ae="DICOM_NODE", calling_ae="MOD", late_policy="ignore", now=then)
        _snapshot(db, seen)
        dispatcher = Dispatcher(config, db, FixedRules(rules))
        dispatcher.sweep()  # series complete -> dispatched, then the study
        dispatcher.sweep()
        _snapshot(db, seen)
        claimed = claim_next(db, "test", 10)
        assert claimed
        _snapshot(db, seen)
        run_deliveries(db, config, claimed)  # nothing listens on port 9: failed after its one attempt
        job_id = claim_next_job(db, "worker:1")
        assert job_id is not None
        _snapshot(db, seen)
        recover(db, max_attempts=1)  # interrupted with no attempt left: failed
        _snapshot(db, seen)
        retry_jobs(db, [job_id])
        selftest.create_run(config, db, rules, "ct-to-pacs-and-check", "pacs", author="test")
        _snapshot(db, seen)
    finally:
        db.dispose()
    for table, enum in COLUMNS.items():
        assert seen[table] <= {m.value for m in enum}, (table, seen[table])
    assert seen == {
        "studies": {"receiving", "dispatched"}, "series": {"receiving", "dispatched"},
        "jobs": {"pending", "running", "failed"}, "deliveries": {"pending", "sending", "failed"},
        "delivery_items": {"pending"}, "selftest_runs": {"waiting"},
    }


def test_the_models_default_to_members() -> None:
    """A row inserted without a state starts in its machine's first state."""
    for model, first in ((Study, StudyState.RECEIVING), (Series, SeriesState.RECEIVING), (Job, JobState.PENDING),
                         (Delivery, DeliveryState.PENDING), (DeliveryItem, DeliveryItemState.PENDING), (SelfTestRun, SelfTestState.WAITING)):
        assert model.__table__.c.state.default.arg == first, model
