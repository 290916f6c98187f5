"""Bad input gets a precise DICOM answer and a log line; the node keeps working."""
from __future__ import annotations

import io
import shutil
import sqlite3
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config, build_context
from pynetdicom.sop_class import CTImageStorage, Verification

from dicom_node.ops.synthetic import chest_ct_series, write_datasets
from tests.peers import storescu

pytestmark = pytest.mark.peers


def associate(port: int, *, calling: str = "DICOM_NODE_SCU", called: str = "DICOM_NODE", contexts=None):  # type: ignore[no-untyped-def]
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae.associate("127.0.0.1", port, ae_title=called, contexts=contexts or [build_context(CTImageStorage, ExplicitVRLittleEndian), build_context(Verification)])


def send_raw(port: int, meta: pydicom.dataset.FileMetaDataset, body: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """C-STORE an arbitrary dataset body (the bytes after the file meta) without pydicom checking it.

    pynetdicom sends a file's bytes as they are only with its process-wide
    chunked-send switch on; monkeypatch turns it off again after the test.
    """
    from pynetdicom.dsutils import encode_file_meta

    path = tmp_path / "raw.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + encode_file_meta(meta) + body)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    assoc = associate(port)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
    finally:
        assoc.release()
    return int(status.Status)


@pytest.fixture
def node(make_node):  # type: ignore[no-untyped-def]
    return make_node()


def db_count(node, table: str) -> int:  # type: ignore[no-untyped-def]
    with sqlite3.connect(node.workdir / "node.db") as conn:
        return conn.execute(f"select count(*) from {table}").fetchone()[0]


def test_unknown_calling_ae_is_rejected_and_logged(node, tmp_path) -> None:
    files = write_datasets(chest_ct_series(2, 32), tmp_path / "ct")
    result = storescu(node.port, files, calling="INTRUDER")
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stderr or "rejected" in result.stderr.lower()
    assert "calling AE title 'INTRUDER' not allowed" in node.log_text()
    assert db_count(node, "instances") == 0


def test_wrong_called_ae_is_rejected(node, tmp_path) -> None:
    assoc = associate(node.port, called="NOT_US")
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x07)
    assert "called AE title 'NOT_US' is not one of ours" in node.log_text()


def test_not_dicom_dataset_answers_cannot_understand(node, tmp_path, monkeypatch) -> None:
    ds = chest_ct_series(1, 32)[0]
    status = send_raw(node.port, ds.file_meta, b"\xff\xfe this is not a DICOM dataset at all \x00\x01" * 3, tmp_path, monkeypatch)
    assert 0xC000 <= status <= 0xCFFF
    assert db_count(node, "instances") == 0
    assert "refused" in node.log_text()


def test_truncated_dataset_is_refused(node, tmp_path, monkeypatch) -> None:
    ds = chest_ct_series(1, 32)[0]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    from pynetdicom.dsutils import encode_file_meta

    body = buffer.getvalue()[132 + len(encode_file_meta(ds.file_meta)):]
    cut = body[: body.find(b"\x08\x00\x18\x00") + 20]  # stops inside the SOP Instance UID element
    status = send_raw(node.port, ds.file_meta, cut, tmp_path, monkeypatch)
    assert status != 0x0000
    assert db_count(node, "instances") == 0


def test_unsupported_sop_class_context_is_refused(node) -> None:
    private = "1.2.3.4.5.6.7.8.9.12345"  # no storage SOP class of that UID exists
    assoc = associate(node.port, contexts=[build_context(private, ExplicitVRLittleEndian), build_context(Verification)])
    assert assoc.is_established
    assert all(cx.abstract_syntax != private for cx in assoc.accepted_contexts)
    assoc.release()


def test_sop_class_filter_answers_refused(make_node, tmp_path) -> None:
    node = make_node(extra_config="")
    node.stop()
    text = node.config_path.read_text().replace(
        'allowed_hosts = ["127.0.0.1"]', 'allowed_hosts = ["127.0.0.1"]\nsop_classes = ["1.2.840.10008.5.1.4.1.1.1.1"]'
    )
    node.config_path.write_text(text)
    node.start()
    ds = chest_ct_series(1, 32)[0]
    assoc = associate(node.port)
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0x0122
    assert "not accepted by DICOM_NODE" in node.log_text()


def test_missing_uids_answer_cannot_understand(node) -> None:
    ds = chest_ct_series(1, 32)[0]
    del ds.SeriesInstanceUID
    assoc = associate(node.port)
    status = assoc.send_c_store(ds)
    assoc.release()
    assert 0xC000 <= status.Status <= 0xCFFF


def test_unwritable_spool_answers_out_of_resources_then_recovers(node) -> None:
    tmp = node.workdir / "spool" / ".pool"
    shutil.rmtree(tmp, ignore_errors=True)  # a fresh node has no slots yet; be sure
    tmp.write_text("a file where the slot folder should be")  # every write now fails (root ignores chmod)
    ds = chest_ct_series(1, 32)[0]
    assoc = associate(node.port)
    status = assoc.send_c_store(ds)
    assert status.Status == 0xA700
    tmp.unlink()
    tmp.mkdir()
    assert assoc.send_c_store(ds).Status == 0x0000  # same association, fixed spool
    assoc.release()
    assert "spool write failed" in node.log_text()


def test_full_disk_refuses_new_associations_with_congestion(make_node, tmp_path) -> None:
    node = make_node(extra_config="")
    node.stop()
    node.config_path.write_text(node.config_path.read_text().replace("min_free_mb = 10", "min_free_mb = 1e12"))
    node.start()
    assoc = associate(node.port)
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x01)
    assert "high-water mark" in node.log_text()
