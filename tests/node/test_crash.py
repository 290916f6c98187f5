"""SIGKILL during reception and during delivery loses nothing acknowledged and delivers once."""
from __future__ import annotations

import collections
import os
import sqlite3
import threading
from collections.abc import Callable

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_context
from pynetdicom.sop_class import CTImageStorage

from dicom_node.ops.synthetic import chest_ct_series, write_datasets
from tests.node.conftest import forward_rule
from tests.peers import StoreSCP, node_db_rows, storescu, wait_for, wait_port, wait_until_settled

pytestmark = pytest.mark.peers






def arrivals(scp: StoreSCP) -> collections.Counter:
    """SOP Instance UID -> number of copies storescp wrote (files still being written are skipped)."""
    counts: collections.Counter = collections.Counter()
    for path in scp.files():
        try:
            counts[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] += 1
        except (AttributeError, OSError, pydicom.errors.InvalidDicomError):
            continue
    return counts


@pytest.fixture
def scp(tmp_path):  # type: ignore[no-untyped-def]
    peer = StoreSCP(tmp_path / "scp-in", unique_names=True).start()
    yield peer
    peer.stop()


def restart(node) -> None:  # type: ignore[no-untyped-def]
    node.start()
    wait_port(node.port, 60, node.proc)


def send_and_kill(node, series: list, kill_when: Callable[[list[str]], bool]) -> list[str]:  # type: ignore[no-untyped-def]
    """Send ``series`` on one association; SIGKILL the node once ``kill_when(acknowledged UIDs)``. Returns those UIDs."""
    acked: list[str] = []
    killed = threading.Event()

    def sender() -> None:
        ae = AE(ae_title="DICOM_NODE_SCU")
        assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOM_NODE", contexts=[build_context(CTImageStorage, ExplicitVRLittleEndian)])
        for ds in series:
            try:
                status = assoc.send_c_store(ds)
            except Exception:  # noqa: BLE001 - the peer died under us
                break
            if status and status.get("Status") == 0:
                acked.append(str(ds.SOPInstanceUID))
            else:
                break
            if not killed.is_set() and kill_when(acked):
                node.kill()  # SIGKILL the whole node mid-association
                killed.set()
        if assoc.is_established:
            assoc.abort()

    thread = threading.Thread(target=sender)
    thread.start()
    thread.join(120)
    assert killed.is_set() and len(acked) < len(series)
    return acked


def test_sigkill_during_reception_keeps_every_acknowledged_instance(make_node, scp) -> None:
    node = make_node(destinations={"scp": {"type": "dicom", "ae_title": scp.aet, "host": "127.0.0.1", "port": scp.port}},
                     rules={"f.toml": forward_rule("scp")})
    series = chest_ct_series(80, 128, seed=7)
    acked = send_and_kill(node, series, lambda acked: len(acked) == 25)

    restart(node)
    stored = {row[0] for row in node_db_rows(node, "select sop_instance_uid from instances")}
    assert set(acked) <= stored, "an acknowledged instance was lost"
    assert "node-restart" in {row[0] for row in node_db_rows(node, "select end_reason from associations")}
    # the modality sends the whole series again, as it would after an aborted association
    assert storescu(node.port, write_datasets(series, node.workdir / "resend")).returncode == 0
    wait_for(lambda: len(arrivals(scp)) == len(series), timeout=60, what="every object at the destination")
    wait_until_settled(node)  # anything still to be sent would show up as an extra copy
    counts = arrivals(scp)
    assert set(counts) == {str(d.SOPInstanceUID) for d in series}
    duplicates = sum(n - 1 for n in counts.values())
    possible = sum(r[0] for r in node_db_rows(node, "select possible_duplicates from deliveries"))
    assert duplicates <= possible, f"{duplicates} duplicate(s) at the destination, {possible} counted"


def test_sigkill_while_forwarding_as_stored_forwards_every_stored_object_once(make_node, scp) -> None:
    """Instance-level rule: objects are forwarded during reception, so the kill lands amid routing and sending."""
    node = make_node(destinations={"scp": {"type": "dicom", "ae_title": scp.aet, "host": "127.0.0.1", "port": scp.port}},
                     rules={"f.toml": forward_rule("scp", level="instance")},
                     quiet_seconds=60.0)
    series = chest_ct_series(80, 256, seed=9)
    # killed amid routing and sending: after the first forwarded objects are at the destination
    acked = send_and_kill(node, series, lambda acked: len(acked) >= 10 and bool(scp.files()))

    restart(node)
    stored = {row[0] for row in node_db_rows(node, "select sop_instance_uid from instances")}
    assert set(acked) <= stored, "an acknowledged instance was lost"
    wait_for(lambda: set(arrivals(scp)) >= stored, timeout=60, what="every stored object at the destination")
    wait_until_settled(node, completion=False)  # anything still to be sent would show up as an extra copy
    counts = arrivals(scp)
    assert set(counts) == stored  # every stored object, nothing that was not stored
    duplicates = sum(n - 1 for n in counts.values())
    possible = sum(r[0] for r in node_db_rows(node, "select possible_duplicates from deliveries"))
    assert duplicates <= possible, f"{duplicates} duplicate(s) at the destination, {possible} counted"
    assert node_db_rows(node, "select count(*) from instances where routed_version is null") == [(0,)]


def test_sigkill_during_delivery_resumes_and_delivers_once(make_node, scp, tmp_path) -> None:
    node = make_node(destinations={"scp": {"type": "dicom", "ae_title": scp.aet, "host": "127.0.0.1", "port": scp.port}},
                     rules={"f.toml": forward_rule("scp")})
    series = chest_ct_series(150, 256, seed=8)
    assert storescu(node.port, write_datasets(series, tmp_path / "ct")).returncode == 0
    wait_for(lambda: len(scp.files()) >= 10, interval=0.02)
    node.kill()
    before = len(scp.files())
    assert before < len(series), "delivery finished before the kill; make the series bigger"
    assert node_db_rows(node, "select state from deliveries") == [("sending",)]

    restart(node)
    wait_for(lambda: node_db_rows(node, "select state from deliveries") == [("delivered",)], timeout=90)
    counts = arrivals(scp)
    assert set(counts) == {str(d.SOPInstanceUID) for d in series}
    duplicates = sum(n - 1 for n in counts.values())
    possible = node_db_rows(node, "select possible_duplicates from deliveries")[0][0]
    assert possible == 1 and duplicates <= 1, f"{duplicates} duplicate(s); the node counted {possible} possible"


def test_completion_timer_survives_a_restart(make_node, scp, tmp_path) -> None:
    node = make_node(destinations={"scp": {"type": "dicom", "ae_title": scp.aet, "host": "127.0.0.1", "port": scp.port}},
                     rules={"f.toml": forward_rule("scp")}, quiet_seconds=3.0)
    series = chest_ct_series(5, 32, seed=9)
    assert storescu(node.port, write_datasets(series, tmp_path / "ct")).returncode == 0
    node.kill()  # inside the quiet period: nothing dispatched yet
    assert node_db_rows(node, "select state from series") == [("receiving",)]
    restart(node)
    wait_for(lambda: len(scp.files()) == 5, timeout=30)
    assert node_db_rows(node, "select state, run_count from series") == [("dispatched", 1)]


def test_power_cut_that_undid_renames_and_commits_loses_nothing(make_node, tmp_path) -> None:
    """What a power cut can leave that SIGKILL cannot: renames and a WAL commit that never reached the disk.

    The node flushes each object once, under a durable slot name, and does not
    flush the rename to its final path (docs: dicom_node/receive/spool.py).  Here two
    acknowledged objects are put back under slot names and their rows deleted,
    as the cut would leave them, and a third slot is cut off mid-write; the
    restarted node must put both objects in place, index them, and remove the
    torn slot.
    """
    node = make_node(quiet_seconds=60)
    series = chest_ct_series(5, 64, seed=21)
    assert storescu(node.port, write_datasets(series, tmp_path / "in")).returncode == 0
    rows = dict(node_db_rows(node, "select sop_instance_uid, path from instances"))
    assert len(rows) == 5
    node.kill()
    pool = node.workdir / "spool" / ".pool"
    undone = [str(d.SOPInstanceUID) for d in series[:2]]
    for n, uid in enumerate(undone):
        os.rename(rows[uid], pool / f"undone-{n}.slot")
    torn = pool / "torn.slot"
    torn.write_bytes((pool / "undone-0.slot").read_bytes()[:3000])
    with sqlite3.connect(node.workdir / "node.db") as conn:
        conn.execute(f"delete from instances where sop_instance_uid in ({','.join('?' * len(undone))})", undone)

    restart(node)
    after = dict(node_db_rows(node, "select sop_instance_uid, path from instances"))
    assert set(after) == set(rows)
    for uid in undone:
        assert pydicom.dcmread(after[uid]).SOPInstanceUID == uid
    assert not list(pool.glob("undone-*")) and not torn.exists()
    assert "torn_slots_removed=1" in node.log_text() and "slots_moved_into_place=2" in node.log_text()
