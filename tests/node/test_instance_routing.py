"""Instance-level rules: each stored object is forwarded once per copy, before its series completes.

The pass is driven directly (dispatcher + SQLite) for the bookkeeping
cases, and end to end with dcmtk storescu as the modality and storescp as
the destination to show that objects arrive while the series still waits
out a long quiet period.
"""
from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicom_node.db import Database, Delivery, DeliveryItem, Dispatch, Instance, Series
from dicom_node.ops.synthetic import chest_ct_series, chest_dx, write_datasets
from dicom_node.receive.ingest import InstanceHeader, record_instance
from dicom_node.routing.dispatcher import Dispatcher
from tests.node.in_process import FixedRules, pacs_config, valid_rules
from tests.peers import have, node_db_rows, storescu, wait_for

T0 = datetime(2026, 12, 3, 12, 0, 0)

DX_NOW = """
[[rule]]
name = "dx-now"
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
    rules = FixedRules(valid_rules(DX_NOW))
    yield config, db, rules, Dispatcher(config, db, rules)
    db.dispose()


def _store(db: Database, path: Path, now: datetime, late_policy: str = "ignore") -> None:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    header = InstanceHeader(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID,
                            str(ds.file_meta.TransferSyntaxUID), ds.Modality, None)
    with db.write() as session:
        record_instance(session, header, path=str(path), size=path.stat().st_size, association_id=None,
                        called_ae="DICOM_NODE", calling_ae="MOD", late_policy=late_policy, now=now)


def _queued(db: Database) -> list[tuple[str, str, int]]:
    with db.session() as session:
        return sorted(session.execute(
            select(Delivery.dispatch_key, DeliveryItem.sop_instance_uid, DeliveryItem.instance_version)
            .join(DeliveryItem, DeliveryItem.delivery_id == Delivery.id)
        ).all())


def _unrouted(db: Database) -> int:
    with db.session() as session:
        return len(session.scalars(select(Instance.id).where(Instance.routed_version.is_(None))).all())


def test_matching_objects_are_queued_once_per_copy(node, tmp_path: Path) -> None:
    config, db, rules, dispatcher = node
    dx = write_datasets([chest_dx(64, 64, seed=i) for i in range(3)], tmp_path / "dx", "DX")
    ct = write_datasets(chest_ct_series(2, 32, seed=1), tmp_path / "ct", "CT")
    for path in dx + ct:
        _store(db, path, T0)
    assert _unrouted(db) == 5

    assert dispatcher.route_instances() is False  # all taken in one pass
    queued = _queued(db)
    dx_uids = sorted(str(pydicom.dcmread(p).SOPInstanceUID) for p in dx)
    assert sorted(uid for _, uid, _ in queued) == dx_uids and {v for _, _, v in queued} == {1}
    assert _unrouted(db) == 0  # the CT objects too: judged, nothing to do
    with db.session() as session:
        states = set(session.scalars(select(Series.state)).all())
        dispatches = session.scalars(select(Dispatch)).all()
    assert states == {"receiving"}  # nothing waited for completion
    assert {d.level for d in dispatches} == {"instance"} and len(dispatches) == 3  # one per DX series (one image each)
    assert all(d.reasons[0] == "1 object(s) as stored" for d in dispatches)

    dispatcher.route_instances()
    assert _queued(db) == queued  # nothing twice

    _store(db, dx[0], T0 + timedelta(seconds=5))  # the modality sends a corrected copy: version 2
    assert _unrouted(db) == 1
    dispatcher.route_instances()
    again = [row for row in _queued(db) if row not in queued]
    assert [(uid, v) for _, uid, v in again] == [(str(pydicom.dcmread(dx[0]).SOPInstanceUID), 2)]


def test_a_late_object_of_a_dispatched_series_is_still_forwarded(node, tmp_path: Path) -> None:
    config, db, rules, dispatcher = node
    first, late = write_datasets([chest_dx(64, 64, seed=7), chest_dx(64, 64, seed=7)], tmp_path / "dx", "DX")
    ds = pydicom.dcmread(late)
    ds.SeriesInstanceUID = pydicom.dcmread(first).SeriesInstanceUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(late)
    _store(db, first, T0)
    dispatcher.route_instances()
    with db.write() as session:
        session.scalars(select(Series)).one().state = "dispatched"
    _store(db, late, T0 + timedelta(minutes=5), late_policy="ignore")  # the series stays dispatched
    dispatcher.route_instances()
    assert len(_queued(db)) == 2
    with db.session() as session:
        assert session.scalars(select(Series.state)).one() == "dispatched"


def test_objects_stored_while_no_instance_rule_exists_are_not_forwarded_by_a_later_one(node, tmp_path: Path) -> None:
    config, db, rules, dispatcher = node
    rules.ruleset = valid_rules("")
    old = write_datasets([chest_dx(64, 64, seed=11)], tmp_path / "old", "DX")
    _store(db, old[0], T0)
    dispatcher.route_instances()
    assert _unrouted(db) == 0 and _queued(db) == []
    rules.ruleset = valid_rules(DX_NOW)
    new = write_datasets([chest_dx(64, 64, seed=12)], tmp_path / "new", "DX")
    _store(db, new[0], T0 + timedelta(seconds=1))
    dispatcher.route_instances()
    assert [uid for _, uid, _ in _queued(db)] == [str(pydicom.dcmread(new[0]).SOPInstanceUID)]


def test_an_unreadable_file_is_logged_once_and_not_retried(node, tmp_path: Path, caplog) -> None:
    config, db, rules, dispatcher = node
    (path,) = write_datasets([chest_dx(64, 64, seed=3)], tmp_path / "dx", "DX")
    _store(db, path, T0)
    path.write_bytes(b"not DICOM any more")
    with caplog.at_level(logging.ERROR, logger="dicom_node.routing.dispatcher"):
        dispatcher.route_instances()
        dispatcher.route_instances()
    assert len([r for r in caplog.records if "cannot read header" in r.getMessage()]) == 1
    assert _unrouted(db) == 0 and _queued(db) == []


@pytest.mark.skipif(not (have("storescu") and have("storescp")), reason="dcmtk not installed")
def test_objects_reach_the_destination_while_the_series_waits_out_its_quiet_period(make_node, storescp, tmp_path: Path) -> None:
    node = make_node(
        destinations={"pacs": {"type": "dicom", "ae_title": storescp.aet, "host": "127.0.0.1", "port": storescp.port}},
        rules={"10-now.toml": DX_NOW},
        quiet_seconds=60.0,
    )
    dx = write_datasets([chest_dx(128, 128, seed=i) for i in range(4)], tmp_path / "dx", "DX")
    ct = write_datasets(chest_ct_series(3, 32, seed=2), tmp_path / "ct", "CT")
    result = storescu(node.port, dx + ct)
    assert result.returncode == 0, result.stderr
    arrived = wait_for(lambda: storescp.files() if len(storescp.files()) >= len(dx) else None, timeout=30)
    assert sorted(str(pydicom.dcmread(p).SOPInstanceUID) for p in arrived) == sorted(
        str(pydicom.dcmread(p).SOPInstanceUID) for p in dx)  # the DX only, byte checks are the forwarding tests' job
    # Forwarded long before any series could complete (60 s quiet period).
    assert {row[0] for row in node_db_rows(node, "select state from series")} == {"receiving"}
    assert node_db_rows(node, "select count(*) from dispatches where level = 'instance'")[0][0] == len(dx)
    assert "instance rules: series" in node.log_text()
    status = node.cli("status", "--json")
    assert status.returncode == 0
    assert json.loads(status.stdout)["counts"]["instances_awaiting_instance_rules"] == 0
