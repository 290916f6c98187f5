"""Duplicates, late instances, completion observability, a destination that is down, many senders."""
from __future__ import annotations

import json
import subprocess

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_context
from pynetdicom.sop_class import CTImageStorage

from dicom_node.ops.synthetic import chest_ct_series, write_datasets
from tests.node.conftest import forward_rule
from tests.peers import DCMTK_ENV, Orthanc, StoreSCP, free_port, node_db_rows, storescu, wait_for, wait_until_settled

pytestmark = pytest.mark.peers






def status(node) -> dict:  # type: ignore[no-untyped-def]
    result = node.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def uids_at(scp: StoreSCP) -> list[str]:
    return [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in scp.files()]


@pytest.fixture
def scp(tmp_path):  # type: ignore[no-untyped-def]
    peer = StoreSCP(tmp_path / "scp-in", unique_names=True).start()
    yield peer
    peer.stop()


def scp_destination(scp: StoreSCP) -> dict:
    return {"scp": {"type": "dicom", "ae_title": scp.aet, "host": "127.0.0.1", "port": scp.port}}


def test_duplicate_sop_instance_keeps_newest_copy_and_counts(make_node, scp, tmp_path) -> None:
    node = make_node(destinations=scp_destination(scp), rules={"f.toml": forward_rule("scp")})
    series = chest_ct_series(3, 32, seed=1)
    files = write_datasets(series, tmp_path / "a")
    changed = series[0].copy()
    changed.SeriesDescription = "CORRECTED"  # same SOP Instance UID, new content
    changed_path = write_datasets([changed], tmp_path / "b")[0]
    assert storescu(node.port, files).returncode == 0
    assert storescu(node.port, [changed_path]).returncode == 0
    wait_for(lambda: len(scp.files()) >= 3)
    rows = node_db_rows(node, "select version from instances order by version desc")
    assert [r[0] for r in rows] == [2, 1, 1]
    assert node_db_rows(node, "select duplicate_count, instance_count from series") == [(1, 3)]
    stored = next((node.workdir / "spool").rglob(f"{series[0].SOPInstanceUID}.dcm"))
    assert pydicom.dcmread(stored).SeriesDescription == "CORRECTED"
    wait_until_settled(node)  # a second send would be queued by now
    assert sorted(uids_at(scp)) == sorted(str(d.SOPInstanceUID) for d in series)  # each sent once, newest copy
    sent = next(p for p in scp.files() if pydicom.dcmread(p).SOPInstanceUID == series[0].SOPInstanceUID)
    assert pydicom.dcmread(sent).SeriesDescription == "CORRECTED"


@pytest.mark.parametrize("policy", ["rerun", "ignore"])
def test_late_instances_follow_the_policy(make_node, scp, tmp_path, policy) -> None:
    node = make_node(destinations=scp_destination(scp), rules={"f.toml": forward_rule("scp")},
                     extra_config="")
    node.stop()
    node.config_path.write_text(node.config_path.read_text().replace("[completion]", f"[completion]\nlate_instances = \"{policy}\""))
    node.start()
    series = chest_ct_series(4, 32, seed=2)
    first = write_datasets(series[:3], tmp_path / "first")
    late = write_datasets(series[3:], tmp_path / "late")
    assert storescu(node.port, first).returncode == 0
    wait_for(lambda: len(scp.files()) == 3)
    wait_for(lambda: node_db_rows(node, "select state from deliveries") == [("delivered",)])
    assert storescu(node.port, late).returncode == 0
    assert node_db_rows(node, f"select late from instances where sop_instance_uid = '{series[3].SOPInstanceUID}'") == [(1,)]
    if policy == "rerun":
        wait_for(lambda: len(scp.files()) == 4)
        assert node_db_rows(node, "select run_count, late_count, state from series") == [(2, 1, "dispatched")]
        wait_until_settled(node)
        assert sorted(uids_at(scp)) == sorted(str(d.SOPInstanceUID) for d in series)  # only the new one was sent again
    else:
        # A series sent after the late instance has its quiet period end later; once the node has
        # routed it, a re-run of the late instance's series would have been queued too.
        after = chest_ct_series(1, 32, seed=3)
        assert storescu(node.port, write_datasets(after, tmp_path / "after")).returncode == 0
        wait_for(lambda: node_db_rows(node, "select count(*) from series where state = 'dispatched'") == [(2,)], what="the later series routed")
        wait_until_settled(node)
        assert sorted(uids_at(scp)) == sorted(str(d.SOPInstanceUID) for d in series[:3] + after)  # the late one never
        late_series = node_db_rows(node, f"select run_count, late_count from series where series_instance_uid = '{series[0].SeriesInstanceUID}'")
        assert late_series == [(1, 1)]


def test_waiting_series_says_why_and_when(make_node) -> None:
    node = make_node(quiet_seconds=4.0)  # long enough for two `status` runs on a loaded machine
    ae = AE(ae_title="DICOM_NODE_SCU")
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOM_NODE", contexts=[build_context(CTImageStorage, ExplicitVRLittleEndian)])
    assert assoc.send_c_store(chest_ct_series(1, 32)[0]).Status == 0
    waiting = status(node)["waiting_series"]
    assert len(waiting) == 1 and waiting[0]["open_associations"] == 1
    assert "still open" in waiting[0]["reason"] and waiting[0]["fires_at"] is None
    assoc.release()
    wait_for(lambda: node_db_rows(node, "select count(*) from associations where ended_at is null") == [(0,)],
             what="the node recording the release")
    waiting = status(node)["waiting_series"]
    assert "quiet period" in waiting[0]["reason"] and waiting[0]["fires_at"]
    wait_for(lambda: not status(node)["waiting_series"])
    assert node_db_rows(node, "select state, completion_reason from series") == [("dispatched", "quiet")]


def test_destination_down_then_up_delivery_completes(make_node, tmp_path) -> None:
    orthanc = Orthanc(tmp_path / "late-orthanc")
    node = make_node(
        destinations={"pacs": {"type": "dicom", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}},
        rules={"f.toml": forward_rule("pacs")},
    )
    files = write_datasets(chest_ct_series(3, 32, seed=5), tmp_path / "ct")
    assert storescu(node.port, files).returncode == 0
    failed = wait_for(lambda: [d for d in status(node)["recent_deliveries"] if d["attempts"] >= 1 and d["last_error"]], timeout=20)
    assert "cannot connect" in failed[0]["last_error"] and failed[0]["state"] in ("pending", "sending")  # retrying
    orthanc.start()
    try:
        wait_for(lambda: node_db_rows(node, "select state from deliveries") == [("delivered",)], timeout=30)
        assert len(orthanc.instances()) == 3
    finally:
        orthanc.stop()


def test_exhausted_retries_end_failed_and_retry_command_requeues(make_node, tmp_path) -> None:
    port = free_port()
    node = make_node(destinations={"gone": {"type": "dicom", "ae_title": "GONE", "host": "127.0.0.1", "port": port}},
                     rules={"f.toml": forward_rule("gone")})
    node.stop()
    node.config_path.write_text(node.config_path.read_text().replace("max_attempts = 5", "max_attempts = 2"))
    node.start()
    assert storescu(node.port, write_datasets(chest_ct_series(2, 32), tmp_path / "ct")).returncode == 0
    wait_for(lambda: node_db_rows(node, "select state, attempts from deliveries") == [("failed", 2)], timeout=30)
    text = node.cli("status")
    assert "failed" in text.stdout and "cannot connect" in text.stdout
    scp = StoreSCP(tmp_path / "back", aet="GONE", port=port).start()
    try:
        result = node.cli("retry", "--all-failed")
        assert result.returncode == 0 and "1 delivery queued again" in result.stdout
        wait_for(lambda: node_db_rows(node, "select state from deliveries") == [("delivered",)], timeout=20)
        assert len(scp.files()) == 2
    finally:
        scp.stop()
    assert node.cli("retry").returncode == 2  # says which


def test_many_senders_at_once_lose_nothing(make_node, scp, tmp_path) -> None:
    node = make_node(destinations=scp_destination(scp), rules={"f.toml": forward_rule("scp")})
    senders = ["STORESCU", "SENDER2", "SENDER3", "SENDER4"]
    expected: set[str] = set()
    procs = []
    for i, calling in enumerate(senders):
        series = chest_ct_series(25, 64, seed=10 + i)
        expected |= {str(d.SOPInstanceUID) for d in series}
        files = write_datasets(series, tmp_path / f"s{i}")
        procs.append(subprocess.Popen(
            ["storescu", "-aet", calling, "-aec", "DICOM_NODE", "127.0.0.1", str(node.port), *map(str, files)],
            env=DCMTK_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        ))
    for proc in procs:
        assert proc.wait(120) == 0, proc.stderr.read()
    assert node_db_rows(node, "select count(*) from instances") == [(100,)]
    wait_for(lambda: len(scp.files()) >= 100, timeout=60)
    wait_until_settled(node)
    assert sorted(uids_at(scp)) == sorted(expected)
    # each association's count is recorded when the node handles its release, which may follow storescu's exit
    wait_for(lambda: node_db_rows(node, "select count(*), sum(instances_received) from associations where ended_at is not null") == [(4, 100)],
             what="the node recording the four releases")
    assert node_db_rows(node, "select count(*) from associations") == [(4,)]
