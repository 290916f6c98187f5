"""The job result: written by the job, read back by the dispatcher for findings rules, old rows included.

Driven directly (SQLite, the real dispatcher, synthetic CT files on disk):
a done job's stored result is what ``finding.<model>.<key>`` fields see.
"""
from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from sqlalchemy import select

from ai_models.results import Box, Classification, Detection, Segmentation
from dicom_node.clock import utcnow
from dicom_node.db import Database, Dispatch, Job, Series
from dicom_node.db.states import JobState, SeriesState
from dicom_node.jobs.results import ClassificationSummary, JobResult, OutputRef, summarize
from dicom_node.ops.synthetic import chest_ct_series, write_datasets
from dicom_node.receive.ingest import InstanceHeader, record_instance
from dicom_node.routing.actions import NODE_ACTIONS
from dicom_node.routing.dispatcher import Dispatcher
from routing_rules import parse_rules_text
from tests.node.in_process import FixedRules, pacs_config

MODEL = "enhancement-hu"


def findings_rule(name: str, condition: str) -> str:
    return f"""
[[rule]]
name = "{name}"
[rule.match]
{condition}
[[rule.actions]]
type = "forward"
destinations = ["pacs"]
"""


RULES = "".join([
    findings_rule("by-class-probability", f'"finding.{MODEL}.probabilities.enhanced" = {{ gt = 0.5 }}'),
    findings_rule("by-probability", f'"finding.{MODEL}.probability" = {{ ge = 0.8 }}'),
    findings_rule("by-label", f'"finding.{MODEL}.label" = "enhanced"'),
    findings_rule("other-class", f'"finding.{MODEL}.probabilities.non-enhanced" = {{ gt = 0.5 }}'),
])

# A classification as the job stored it before dicom_node.jobs.results existed.
OLD_ROW = {
    "results": [{"kind": "classification", "label": "Enhanced", "confidence": 0.93,
                 "probabilities": {"Non-Enhanced": 0.07, "Enhanced": 0.93}, "header_value": None, "agrees_with_header": False}],
    "outputs": [{"sop_instance_uid": "1.2.3", "modality": "SR"}], "model": MODEL, "model_version": "1.0",
}


def enhanced(probability: float = 0.93) -> Classification:
    return Classification(model=MODEL, model_version="1.0", label="Enhanced",
                          probabilities={"Non-Enhanced": 1 - probability, "Enhanced": probability},
                          source_sop_instance_uids=[], agrees_with_header=False)



@pytest.fixture
def node(tmp_path: Path):  # type: ignore[no-untyped-def]
    config = pacs_config(tmp_path)
    db = Database(config.database_url)
    rules = parse_rules_text(RULES, destinations={"pacs"}, registry=NODE_ACTIONS, known_models={MODEL})
    assert not rules.errors, [str(e) for e in rules.errors]
    yield config, db, Dispatcher(config, db, FixedRules(rules))
    db.dispose()


def _dispatched_series(db: Database, folder: Path) -> int:
    """A stored CT series whose series-level rules have run (run 1), as the dispatcher leaves it."""
    then = utcnow() - timedelta(hours=1)
    for path in write_datasets(chest_ct_series(2, 32, seed=3), folder, "CT"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        header = InstanceHeader(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID,
                                str(ds.file_meta.TransferSyntaxUID), ds.Modality, None)
        with db.write() as session:
            record_instance(session, header, path=str(path), size=path.stat().st_size, association_id=None,
                            called_ae="DICOM_NODE", calling_ae="MOD", late_policy="ignore", now=then)
    with db.write() as session:
        series = session.scalars(select(Series)).one()
        series.state, series.run_count = SeriesState.DISPATCHED, 1
        return series.id


def _fired_by_findings(db: Database, dispatcher: Dispatcher, series_id: int, result: dict[str, Any]) -> list[str]:
    with db.write() as session:
        study_id = session.get(Series, series_id).study_id  # type: ignore[union-attr]
        session.add(Job(series_id=series_id, study_id=study_id, rule_name="check", action={"type": "model", "model": MODEL},
                        state=JobState.DONE, run_number=1, attempts=1, created_at=utcnow(), result=result))
    dispatcher.apply_findings()
    with db.session() as session:
        return sorted(session.scalars(select(Dispatch.rule_name)).all())  # one per fired rule


def test_findings_rules_see_what_the_job_wrote(node, tmp_path: Path) -> None:
    """The class probabilities rules may name (docs/rules.md) reach them; the old reader dropped them."""
    _config, db, dispatcher = node
    series_id = _dispatched_series(db, tmp_path / "ct")
    written = JobResult(summarize([enhanced()]), (), MODEL, "1.0").to_json()
    assert _fired_by_findings(db, dispatcher, series_id, written) == ["by-class-probability", "by-label", "by-probability"]


def test_a_row_written_before_the_typed_result_reads_the_same(node, tmp_path: Path) -> None:
    _config, db, dispatcher = node
    series_id = _dispatched_series(db, tmp_path / "ct")
    assert _fired_by_findings(db, dispatcher, series_id, OLD_ROW) == ["by-class-probability", "by-label", "by-probability"]
    old = JobResult.from_json(OLD_ROW)
    assert old.classification == ClassificationSummary("Enhanced", 0.93, {"Non-Enhanced": 0.07, "Enhanced": 0.93}, None, False)
    assert old.outputs == (OutputRef("1.2.3", "SR"),) and (old.model, old.model_version) == (MODEL, "1.0")


def test_every_kind_of_result_survives_the_json_column() -> None:
    """What the job stores reads back equal, so the dispatcher and the CLI see what the job saw."""
    mask = np.zeros((2, 4, 4), dtype=np.uint8)
    mask[0, :2, :2] = 1
    results = [
        enhanced(0.812345),
        Detection(model="lr-mark", model_version="1", boxes=[Box(1.04, 2.0, 3.0, 4.0, "right", 0.876543)], source_sop_instance_uids=[]),
        Segmentation(model="lung", model_version="1", mask=mask, label_names={1: "lung"}, source_sop_instance_uids=["a", "b"],
                     volumes_ml={"lung": 0.5}),
    ]
    stored = JobResult(summarize(results), (OutputRef("1.2", "SEG"),), "lung", "1")
    again = JobResult.from_json(json.loads(json.dumps(stored.to_json())))
    assert again == stored
    assert again.classification is not None and again.classification.probability == 0.8123
    assert stored.to_json()["results"][1] == {"kind": "detection", "source_sop_instance_uids": [],
                                              "boxes": [{"label": "right", "score": 0.8765, "box": [1.0, 2.0, 3.0, 4.0], "sop_instance_uid": ""}]}
    assert stored.to_json()["results"][2]["voxels"] == {"lung": 4}
    assert JobResult.from_json(None) == JobResult()
