"""The spool writes atomically and never lets a UID escape its folder."""
from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pynetdicom.dsutils import encode_file_meta

from dicom_node.spool import Spool, SpoolError, safe_component
from dicom_node.synthetic import chest_ct_series


def test_written_file_is_valid_part10_with_dataset_bytes_unchanged(tmp_path: Path) -> None:
    from io import BytesIO

    ds = chest_ct_series(1, 32)[0]
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    raw = buffer.getvalue()
    meta_end = 132 + len(encode_file_meta(ds.file_meta))
    spool = Spool(tmp_path / "spool")
    target = spool.path_for(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    stored = spool.write(target, encode_file_meta(ds.file_meta), raw[meta_end:])
    assert stored.path.read_bytes()[-len(raw) + meta_end:] == raw[meta_end:]
    back = pydicom.dcmread(stored.path)
    assert back.SOPInstanceUID == ds.SOPInstanceUID
    assert list(spool.tmp.iterdir()) == []
    again = spool.write(target, encode_file_meta(ds.file_meta), raw[meta_end:])
    assert again.replaced and not stored.replaced


@pytest.mark.parametrize("uid", ["../../etc/passwd", "1.2/3", "", "1.2.3 ", "1." * 40])
def test_malformed_uids_are_hashed_not_used_as_paths(uid: str) -> None:
    component = safe_component(uid)
    assert "/" not in component and ".." not in component and component.startswith("x")
    assert safe_component(uid) == component  # stable


def test_valid_uid_kept() -> None:
    assert safe_component("1.2.840.10008.1") == "1.2.840.10008.1"


def test_unwritable_spool_raises_spool_error(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.tmp.rmdir()
    spool.tmp.write_text("not a directory")  # every temp write now fails with ENOTDIR
    with pytest.raises(SpoolError):
        spool.write(tmp_path / "spool" / "a" / "b.dcm", b"", b"data")


def test_clean_tmp_removes_partial_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    (spool.tmp / "abc.part").write_bytes(b"half")
    assert spool.clean_tmp() == 1
    assert not any(spool.tmp.iterdir())
