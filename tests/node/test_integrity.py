"""Data integrity (issue 16): every object sent is one stored copy, corrections stay corrected, no silent resends."""
from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from alembic import command
from alembic.migration import MigrationContext
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import event, select
from sqlalchemy.exc import OperationalError

from dicom_node.clock import utcnow
from dicom_node.config import NodeConfig, load_config
from dicom_node.db import Database, Delivery, DeliveryItem, Instance
from dicom_node.db.engine import alembic_config
from dicom_node.db.states import DeliveryItemState, DeliveryState
from dicom_node.delivery import workers
from dicom_node.delivery.queue import claim_next, enqueue
from dicom_node.delivery.workers import DeliveryWorkers, run_deliveries
from dicom_node.ops.synthetic import chest_ct_series, write_datasets
from dicom_node.receive.file_meta import received_file_meta
from dicom_node.receive.ingest import InstanceHeader, record_instance
from dicom_node.receive.spool import Spool
from tests.node.conftest import forward_rule
from tests.peers import NodeProcess, free_port, node_db_rows, storescu, wait_for, wait_port, wait_until_settled

SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


class RecordingSCP:
    """An in-process storage SCP keeping, per C-STORE, the UID, the context's transfer syntax and the raw bytes."""

    def __init__(self, on_store: Callable[[int], None] | None = None) -> None:
        self.received: list[tuple[str, str, bytes]] = []
        self.on_store = on_store
        ae = AE(ae_title="RECORDER")
        ae.add_supported_context(CTImageStorage, SYNTAXES)
        self.port = free_port()
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event: evt.Event) -> int:
        self.received.append((str(event.request.AffectedSOPInstanceUID), str(event.context.transfer_syntax),
                              bytes(event.request.DataSet.getvalue())))
        if self.on_store is not None:
            self.on_store(len(self.received))
        return 0x0000

    def copies(self) -> collections.Counter[str]:
        return collections.Counter(uid for uid, _, _ in self.received)

    def stop(self) -> None:
        self.server.shutdown()


class Node:
    """The node's database and spool in-process: receive (as the receiver records) and queue forwards."""

    def __init__(self, tmp_path: Path, scp_port: int, workers_count: int = 1) -> None:
        config_path = tmp_path / "node.toml"
        config_path.write_text(
            f"[database]\nurl = 'sqlite:///{tmp_path / 'node.db'}'\n"
            f"[destinations.pacs]\ntype = 'dicom'\nae_title = 'RECORDER'\nhost = '127.0.0.1'\nport = {scp_port}\ntimeout_seconds = 10\n"
            f"[delivery]\nmax_attempts = 5\nretry_initial_seconds = 0.2\nretry_max_seconds = 0.5\nworkers = {workers_count}\npoll_seconds = 0.05\n"
        )
        self.config: NodeConfig = load_config(config_path)
        self.db = Database(self.config.database_url)
        self.spool = Spool(tmp_path / "spool", fsync=False)

    def receive(self, ds: Dataset, ts: str) -> bytes:
        """Store ``ds`` encoded in ``ts`` as the receiver does (spool write, then the row); returns the dataset bytes."""
        data = encode(ds, ts == ImplicitVRLittleEndian, True)
        assert data is not None
        path = self.spool.path_for(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        stored = self.spool.write(path, received_file_meta(ds.SOPClassUID, ds.SOPInstanceUID, ts, "TEST"), data)
        header = InstanceHeader(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID, ts, "CT", None)
        with self.db.write() as session:
            record_instance(session, header, path=str(path), size=stored.size, association_id=None, called_ae="NODE",
                            calling_ae="TEST", late_policy="ignore", now=utcnow(), digest=stored.digest)
        return data

    def forward(self, key: str, uids: list[str]) -> int:
        """Queue the current copy of each instance for the destination, as an instance-level forward does."""
        with self.db.write() as session:
            rows = session.scalars(select(Instance).where(Instance.sop_instance_uid.in_(uids)).order_by(Instance.id)).all()
            delivery = enqueue(session, dispatch_key=key, destination="pacs", rule_name="r",
                               items=[(r.sop_instance_uid, r.path, r.version) for r in rows], now=utcnow())
            assert delivery is not None
            return delivery.id

    def delivery(self, delivery_id: int) -> Delivery:
        with self.db.session() as session:
            row = session.get(Delivery, delivery_id)
            assert row is not None
            return row


def ct(n: int) -> Dataset:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{n}"
    return ds


@pytest.fixture
def scp() -> Iterator[RecordingSCP]:
    peer = RecordingSCP()
    yield peer
    peer.stop()


# -- 1. a spool file replaced while its delivery runs ------------------------------------------------

def test_a_copy_replaced_mid_batch_is_sent_as_itself_and_never_after_its_successor(tmp_path: Path, scp: RecordingSCP) -> None:
    node = Node(tmp_path, scp.port)
    first, second = ct(1), ct(2)
    node.receive(first, ExplicitVRLittleEndian)
    node.receive(second, ExplicitVRLittleEndian)
    old = node.forward("v1", [first.SOPInstanceUID, second.SOPInstanceUID])
    replaced: dict[str, bytes] = {}

    def resend_second(count: int) -> None:
        # while the batch is under way (after its meta was read), the modality resends the second object in
        # another transfer syntax and instance-level forwarding queues that copy on its own
        if count == 1:
            replaced["data"] = node.receive(second, ImplicitVRLittleEndian)
            node.forward("v2", [second.SOPInstanceUID])

    scp.on_store = resend_second
    assert run_deliveries(node.db, node.config, claim_next(node.db, "w", 32)) == ["delivered"]
    assert run_deliveries(node.db, node.config, claim_next(node.db, "w", 32)) == ["delivered"]

    assert scp.copies() == {first.SOPInstanceUID: 1, second.SOPInstanceUID: 1}
    uid, ts, data = scp.received[1]
    assert (uid, ts) == (second.SOPInstanceUID, ImplicitVRLittleEndian) and data == replaced["data"]
    for _, ts, data in scp.received:  # every object decodes under its label
        ds = read_dataset(BytesIO(data), ts == ImplicitVRLittleEndian, True)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ts
        assert (ds.pixel_array == first.pixel_array).all()
    with node.db.session() as session:
        states = dict(session.execute(select(DeliveryItem.sop_instance_uid, DeliveryItem.state)
                                      .where(DeliveryItem.delivery_id == old)).all())
    assert states == {first.SOPInstanceUID: DeliveryItemState.SENT, second.SOPInstanceUID: DeliveryItemState.SUPERSEDED}


# -- 4. database errors in a delivery worker ----------------------------------------------------------

def fail_once(db: Database, matches: Callable[[str], bool], error: BaseException | None = None) -> list[str]:
    """Make the first statement that ``matches`` raise; returns a list that gets one entry when it did."""
    fired: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not fired and matches(statement):
            fired.append(statement)
            raise error or OperationalError(statement, None, Exception("injected database failure"))

    event.listen(db.engine, "before_cursor_execute", before)
    return fired


def run_workers(node: Node, delivery_id: int) -> Delivery:
    pool = DeliveryWorkers(node.db, node.config)
    pool.start()
    try:
        wait_for(lambda: node.delivery(delivery_id).state == DeliveryState.DELIVERED, timeout=30, what="the delivery delivered")
        assert all(thread.is_alive() for thread in pool._threads)
    finally:
        pool.stop()
    return node.delivery(delivery_id)


def queue_three(node: Node) -> tuple[int, list[str]]:
    uids = []
    for n in range(3):
        ds = ct(n)
        node.receive(ds, ExplicitVRLittleEndian)
        uids.append(ds.SOPInstanceUID)
    return node.forward("k", uids), uids


def test_a_failed_commit_after_the_peer_accepted_does_not_resend(tmp_path: Path, scp: RecordingSCP) -> None:
    node = Node(tmp_path, scp.port)
    delivery_id, uids = queue_three(node)
    fired = fail_once(node.db, lambda sql: sql.startswith("UPDATE delivery_items"))
    delivery = run_workers(node, delivery_id)
    assert fired
    assert scp.copies() == {uid: 1 for uid in uids}
    assert delivery.possible_duplicates == 0


def test_a_database_error_finishing_a_batch_neither_kills_the_worker_nor_hides_a_duplicate(tmp_path: Path, scp: RecordingSCP) -> None:
    node = Node(tmp_path, scp.port)
    delivery_id, uids = queue_three(node)
    item_failed = fail_once(node.db, lambda sql: sql.startswith("UPDATE delivery_items"))
    finish_failed = fail_once(node.db, lambda sql: sql.startswith("UPDATE deliveries") and "finished_at" in sql)
    delivery = run_workers(node, delivery_id)
    assert item_failed and finish_failed
    duplicates = sum(n - 1 for n in scp.copies().values())
    assert set(scp.copies()) == set(uids)
    assert delivery.possible_duplicates == duplicates == 1


class _ThreadKiller(BaseException):
    """Not an Exception: gets past every handler, as a bug in the loop itself would."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_worker_thread_is_restarted(tmp_path: Path, scp: RecordingSCP) -> None:
    node = Node(tmp_path, scp.port)
    delivery_id, uids = queue_three(node)
    restarts = workers.worker_restarts
    fired = fail_once(node.db, lambda sql: sql.startswith("UPDATE deliveries"), _ThreadKiller())
    delivery = run_workers(node, delivery_id)
    assert fired and workers.worker_restarts == restarts + 1
    assert delivery.state == DeliveryState.DELIVERED and scp.copies() == {uid: 1 for uid in uids}


# -- 5. read-only commands never migrate -------------------------------------------------------------

def revision(url: str) -> str | None:
    db = Database(url, migrate=False)
    try:
        with db.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        db.dispose()


def test_status_and_retry_leave_an_older_schema_alone(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node")
    node.write_config()
    url = f"sqlite:///{node.workdir / 'node.db'}"
    Database(url).dispose()
    command.downgrade(alembic_config(url), "0004")
    for args in (["status"], ["status", "--json"], ["retry", "--all-failed"]):
        result = node.cli(*args)
        assert result.returncode != 0, result.stdout
        assert "schema is at revision 0004" in result.stderr and "dicom-node serve" in result.stderr
        assert revision(url) == "0004"
    command.upgrade(alembic_config(url), "head")
    assert node.cli("status").returncode == 0


# -- 2 and 3: against a running node --------------------------------------------------------------

@pytest.fixture
def pacs() -> Iterator[RecordingSCP]:
    """The destination: it keeps every copy it receives (storescp would overwrite a second one)."""
    peer = RecordingSCP()
    yield peer
    peer.stop()


def destination(peer: RecordingSCP) -> dict[str, Any]:
    return {"pacs": {"type": "dicom", "ae_title": "RECORDER", "host": "127.0.0.1", "port": peer.port}}


@pytest.mark.peers
def test_restarts_never_undo_a_correction_to_another_series(make_node: Any, pacs: RecordingSCP, tmp_path: Path) -> None:
    node = make_node(destinations=destination(pacs),
                     rules={"f.toml": forward_rule("pacs")})
    series_a = chest_ct_series(3, 32, seed=3)
    assert storescu(node.port, write_datasets(series_a, tmp_path / "a")).returncode == 0
    wait_until_settled(node)
    outdated = {path: Path(path).read_bytes() for (path,) in node_db_rows(node, "select path from instances")}
    series_b = [pydicom.dcmread(path) for path in write_datasets(series_a, tmp_path / "b-src")]
    corrected = generate_uid()
    for ds in series_b:
        ds.SeriesInstanceUID = corrected
    assert storescu(node.port, write_datasets(series_b, tmp_path / "b")).returncode == 0
    wait_until_settled(node)
    assert not any(Path(path).exists() for path in outdated), "the superseded copies are left in the spool"

    def state() -> tuple[set[str], int]:
        series = {row[0] for row in node_db_rows(
            node, "select s.series_instance_uid from instances i join series s on s.id = i.series_id")}
        return series, node_db_rows(node, "select count(*) from delivery_items")[0][0]

    expected = ({corrected}, 6)
    assert state() == expected
    for restart in range(2):
        node.stop()
        if restart == 1:  # as if the node died between committing series B and removing the old copies
            for path, data in outdated.items():
                Path(path).write_bytes(data)
        node.start()
        wait_port(node.port, 60, node.proc)
        wait_until_settled(node)
        assert state() == expected, f"restart {restart + 1} changed the rows"
    assert not any(Path(path).exists() for path in outdated)
    assert sum(pacs.copies().values()) == 6


@pytest.mark.peers
def test_an_identical_resend_is_counted_and_not_forwarded_again(make_node: Any, pacs: RecordingSCP, tmp_path: Path) -> None:
    node = make_node(destinations=destination(pacs),
                     rules={"f.toml": forward_rule("pacs")})
    files = write_datasets(chest_ct_series(5, 32, seed=5), tmp_path / "five")
    for _ in range(2):
        assert storescu(node.port, files).returncode == 0
        wait_until_settled(node)
    assert set(pacs.copies().values()) == {1} and len(pacs.copies()) == 5
    assert node_db_rows(node, "select sum(duplicate_count) from series") == [(5,)]
    assert node_db_rows(node, "select max(version) from instances") == [(1,)]
    assert node_db_rows(node, "select count(*) from delivery_items")[0][0] == 5
    changed = pydicom.dcmread(files[0])
    changed.ImageComments = "corrected"
    changed.save_as(tmp_path / "changed.dcm", enforce_file_format=True)
    assert storescu(node.port, [tmp_path / "changed.dcm"]).returncode == 0
    wait_for(lambda: pacs.copies()[str(changed.SOPInstanceUID)] == 2, timeout=60, what="the changed copy sent again")
    wait_until_settled(node)
    assert sum(pacs.copies().values()) == 6

