"""One object the main process cannot read must not stop routing: its series is marked failed, the others go on.

Against a running node: the poison object arrives over DICOM (a malformed
sequence after Series Instance UID, which the receiver's identifier reader
steps over) or is a stored copy damaged on disk; a good series sent after
it must still be forwarded, also after a restart, and the operator retries
or dismisses the failed series with the CLI.
"""
from __future__ import annotations

import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config, build_context
from pynetdicom.sop_class import CTImageStorage

from dicom_node.ops.synthetic import chest_ct_series, write_datasets
from dicom_node.receive.identifiers import element_header
from tests.node.conftest import forward_rule
from tests.peers import NodeProcess, node_db_rows, storescu, wait_for

pytestmark = pytest.mark.peers

_SEQUENCE_AT = 0x00400260  # Performed Protocol Code Sequence: after Series Instance UID, before the image group


def poison_dataset(seed: int) -> tuple[bytes, bytes, str]:
    """(file meta, dataset bytes, series UID) of a CT slice with an undefined-length sequence whose item runs past the end."""
    ds = chest_ct_series(1, 32, seed=seed)[0]
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    body = fp.getvalue()
    offset = 0
    while True:  # the first top-level element after the place of the sequence
        tag, length, value_at, _ = element_header(body, offset, False)
        if tag > _SEQUENCE_AT:
            break
        offset = value_at + length
    code = struct.pack("<HH2sH", 0x0008, 0x0100, b"SH", 4) + b"ABC "
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0x7FFFFFF0) + code  # item length far beyond the end of the file
    sequence = struct.pack("<HH2sHI", 0x0040, 0x0260, b"SQ", 0, 0xFFFFFFFF) + item + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta)
    return b"\0" * 128 + b"DICM" + meta.getvalue(), body[:offset] + sequence + body[offset:], str(ds.SeriesInstanceUID)


def send_bytes(port: int, path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """C-STORE a file's bytes as they are (pynetdicom's chunked send does not decode them); the status."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="STORESCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_NODE", contexts=[build_context(CTImageStorage, ExplicitVRLittleEndian)])
    assert assoc.is_established
    try:
        status = assoc.send_c_store(str(path))
    finally:
        assoc.release()
    return int(status.Status)


def series_state(node: NodeProcess, uid: str) -> tuple[int, str, str | None] | None:
    rows = node_db_rows(node, f"select id, state, failure_reason from series where series_instance_uid = '{uid}'")
    return tuple(rows[0]) if rows else None  # type: ignore[return-value]


def forwarded(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def _node(make_node, tmp_path: Path, quiet: float = 1.0) -> tuple[NodeProcess, Path]:  # type: ignore[no-untyped-def]
    out = tmp_path / "pacs"
    node = make_node(destinations={"pacs": {"type": "folder", "path": str(out)}}, rules={"10-forward.toml": forward_rule("pacs")},
                     quiet_seconds=quiet)
    return node, out


def _send_good(node: NodeProcess, folder: Path, seed: int, count: int = 3) -> str:
    files = write_datasets(chest_ct_series(count, 32, seed=seed), folder / f"good{seed}", "CT")
    result = storescu(node.port, files)
    assert result.returncode == 0, result.stderr
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


def test_malformed_sequence_after_series_uid_does_not_stop_routing(make_node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node, out = _node(make_node, tmp_path)
    meta, body, poison_uid = poison_dataset(seed=41)
    path = tmp_path / "poison.dcm"
    path.write_bytes(meta + body)
    status = send_bytes(node.port, path, monkeypatch)
    # Acknowledged before the receiver's structural walk (issue 15 item 4); refused (0xC2xx) after it. Either way routing goes on.
    assert status == 0x0000 or 0xC000 <= status <= 0xCFFF, hex(status)

    good_uid = _send_good(node, tmp_path, seed=42)
    wait_for(lambda: forwarded(out) == 3, timeout=60, what="the good series forwarded after the poison object")
    assert wait_for(lambda: (series_state(node, good_uid) or (0, ""))[1] == "dispatched", timeout=30)
    if status == 0x0000:
        sid, state, reason = wait_for(lambda: (s := series_state(node, poison_uid)) and s[1] == "failed" and s, timeout=30,
                                      what="the poison series marked failed")
        assert reason and "can be read" in reason
        assert node.log_text().count("cannot be dispatched, marked failed") == 1  # once, not at every sweep
        report = node.cli("status")
        assert report.returncode == 0 and f"series {sid} {poison_uid}" in report.stdout and "can be read" in report.stdout


def test_damaged_stored_copy_fails_its_series_alone_until_retried_or_dismissed(make_node, tmp_path: Path) -> None:
    node, out = _node(make_node, tmp_path, quiet=3.0)
    files = write_datasets(chest_ct_series(1, 32, seed=51), tmp_path / "bad", "CT")
    assert storescu(node.port, files).returncode == 0
    (stored,), = node_db_rows(node, "select path from instances")
    Path(stored).write_bytes(b"damaged on disk")  # within the quiet period: read at dispatch
    bad_uid = str(node_db_rows(node, "select series_instance_uid from series")[0][0])
    assert series_state(node, bad_uid)[1] == "receiving", "the series completed before the copy was damaged: quiet period too short"

    good_uid = _send_good(node, tmp_path, seed=52)
    wait_for(lambda: forwarded(out) == 3, timeout=60, what="the good series forwarded")
    sid, state, reason = wait_for(lambda: (s := series_state(node, bad_uid)) and s[1] == "failed" and s, timeout=30)
    assert "InvalidDicomError" in (reason or "")
    assert series_state(node, good_uid)[1] == "dispatched"

    # the failed series stays failed across a restart, and the node still routes the next series
    node.stop()
    node.start()
    assert storescu(node.port, write_datasets(chest_ct_series(2, 32, seed=53), tmp_path / "after", "CT")).returncode == 0
    wait_for(lambda: forwarded(out) == 5, timeout=60, what="a series sent after the restart forwarded")
    assert series_state(node, bad_uid)[1] == "failed"

    # retry: the next sweep tries again; still unreadable, so failed again (one more log line)
    retried = node.cli("retry", "--series", str(sid))
    assert retried.returncode == 0, retried.stderr
    wait_for(lambda: "cannot be dispatched, marked failed" in node.log_text(), timeout=30, what="failed again after the retry")
    assert series_state(node, bad_uid)[1] == "failed"
    # dismiss: dispatched with nothing queued, the reason kept with the note; its study goes on
    dismissed = node.cli("dismiss", "--series", str(sid), "--note", "copy damaged")
    assert dismissed.returncode == 0, dismissed.stderr
    _, state, reason = series_state(node, bad_uid)
    assert state == "dispatched" and reason is not None and reason.startswith("dismissed by cli") and "copy damaged" in reason
    wait_for(lambda: node_db_rows(node, "select count(*) from studies where state != 'dispatched'")[0][0] == 0, timeout=30,
             what="every study dispatched once the failed series is dismissed")
    assert forwarded(out) == 5  # nothing of the dismissed series was sent
    assert node.cli("dismiss", "--series", str(sid)).returncode == 1  # no longer failed
