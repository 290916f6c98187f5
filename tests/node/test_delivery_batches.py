"""Due deliveries to one destination share one association, and each still ends in its own state."""
from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage

from dicom_node.clock import utcnow
from dicom_node.config import load_config
from dicom_node.db import Database, Delivery
from dicom_node.delivery.queue import claim_next, enqueue
from dicom_node.delivery.workers import run_deliveries
from dicom_node.ops.synthetic import chest_ct_series, write_datasets
from tests.peers import free_port


class CountingSCP:
    """A pynetdicom storage SCP that counts associations; ``abort_at``: abort on that C-STORE (1-based)."""

    def __init__(self, abort_at: int | None = None) -> None:
        self.associations = 0
        self.stored: list[str] = []
        self.abort_at = abort_at
        ae = AE(ae_title="COUNTER")
        ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
        self.port = free_port()
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[
            (evt.EVT_ESTABLISHED, self._established), (evt.EVT_C_STORE, self._store)])

    def _established(self, event: evt.Event) -> None:
        self.associations += 1

    def _store(self, event: evt.Event) -> int:
        if self.abort_at is not None and len(self.stored) + 1 == self.abort_at:
            threading.Thread(target=event.assoc.abort).start()
            return 0xA700
        self.stored.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000


@pytest.fixture
def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    def make(scp: CountingSCP, series_sizes: list[int]) -> tuple[Database, object, list[int]]:
        config_path = tmp_path / "node.toml"
        config_path.write_text(
            f"[database]\nurl = 'sqlite:///{tmp_path / 'node.db'}'\n"
            f"[destinations.counter]\ntype = 'dicom'\nae_title = 'COUNTER'\nhost = '127.0.0.1'\nport = {scp.port}\ntimeout_seconds = 10\n"
            "[delivery]\nmax_attempts = 3\n"
        )
        config = load_config(config_path)
        db = Database(config.database_url)
        ids = []
        now = utcnow() - timedelta(seconds=1)
        with db.write() as session:
            for n, size in enumerate(series_sizes):
                files = write_datasets(chest_ct_series(size, 32, seed=n), tmp_path / f"s{n}", "CT")
                items = [(f"uid-{n}-{i}", str(path), 1) for i, path in enumerate(files)]
                ids.append(enqueue(session, dispatch_key=f"k{n}", destination="counter", rule_name="r", items=items, now=now).id)
        return db, config, ids
    return make


def test_due_deliveries_to_one_destination_go_over_one_association(setup) -> None:
    scp = CountingSCP()
    try:
        db, config, ids = setup(scp, [1, 1, 2, 1])  # e.g. four radiograph series
        claimed = claim_next(db, "w", config.delivery.batch_size)
        assert claimed == ids
        assert claim_next(db, "w", config.delivery.batch_size) == []  # all taken
        assert run_deliveries(db, config, claimed) == ["delivered"] * 4
        assert scp.associations == 1 and len(scp.stored) == 5
    finally:
        scp.server.shutdown()


def test_an_association_lost_mid_batch_leaves_finished_deliveries_delivered(setup) -> None:
    scp = CountingSCP(abort_at=3)  # the first delivery (2 objects) gets through, then the peer aborts
    try:
        db, config, ids = setup(scp, [2, 1, 1])
        assert run_deliveries(db, config, claim_next(db, "w", config.delivery.batch_size)) == ["delivered", "pending", "pending"]
        with db.session() as session:
            second = session.get(Delivery, ids[1])
            assert "ended mid-batch" in second.last_error and second.attempts == 1
    finally:
        scp.server.shutdown()
