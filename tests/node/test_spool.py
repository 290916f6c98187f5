"""The spool writes atomically and never lets a UID escape its folder."""
from __future__ import annotations

import copy
import os
import shutil
import uuid
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode_file_meta

from dicom_node.defaults import SPOOL_SLOT_BATCH
from dicom_node.ops.synthetic import chest_ct_series
from dicom_node.receive.spool import Spool, SpoolError, read_spool_preamble, safe_component


def test_written_file_is_valid_part10_with_dataset_bytes_unchanged(tmp_path: Path) -> None:
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
    assert read_spool_preamble(stored.path) is not None
    assert read_spool_preamble(stored.path)[0] == stored.size == stored.path.stat().st_size
    again = spool.write(target, encode_file_meta(ds.file_meta), raw[meta_end:])
    assert again.replaced and not stored.replaced
    assert len(list(spool.pool.glob("*.slot"))) == SPOOL_SLOT_BATCH - 2  # one durable slot per object written


@pytest.mark.parametrize("uid", ["../../etc/passwd", "1.2/3", "", "1.2.3 ", "1." * 40])
def test_malformed_uids_are_hashed_not_used_as_paths(uid: str) -> None:
    component = safe_component(uid)
    assert "/" not in component and ".." not in component and component.startswith("x")
    assert safe_component(uid) == component  # stable


def test_valid_uid_kept() -> None:
    assert safe_component("1.2.840.10008.1") == "1.2.840.10008.1"


@pytest.mark.parametrize("fsync,folder", [(True, ".pool"), (False, ".tmp")])
def test_unwritable_spool_raises_spool_error(tmp_path: Path, fsync: bool, folder: str) -> None:
    spool = Spool(tmp_path / "spool", fsync=fsync)
    shutil.rmtree(spool.root / folder, ignore_errors=True)
    (spool.root / folder).write_text("not a directory")  # every write now fails with ENOTDIR
    with pytest.raises(SpoolError):
        spool.write(tmp_path / "spool" / "a" / "b.dcm", b"", b"data")
    (spool.root / folder).unlink()
    (spool.root / folder).mkdir()
    assert spool.write(tmp_path / "spool" / "a" / "b.dcm", b"", b"data").path.exists()  # fixed: writes again


def test_clean_tmp_removes_partial_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    (spool.tmp / "abc.part").write_bytes(b"half")
    assert spool.clean_tmp() == 1
    assert not any(spool.tmp.iterdir())


def _object(spool: Spool, seed: int, description: str = "", base: Dataset | None = None) -> tuple[Path, bytes, bytes]:
    """(final path, file meta, dataset bytes) of a small synthetic CT object; a copy of ``base`` if given."""
    ds = copy.deepcopy(base) if base is not None else chest_ct_series(1, 16, seed=seed)[0]
    if description:
        ds.SeriesDescription = description
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    raw = buffer.getvalue()
    meta = encode_file_meta(ds.file_meta)
    return spool.path_for(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID), meta, raw[132 + len(meta):]


def _undo_rename(spool: Spool, path: Path) -> Path:
    """What a power cut does to a rename that had not reached the disk: the file is back under a slot name."""
    slot = spool.pool / f"{uuid.uuid4().hex}.slot"
    os.rename(path, slot)
    return slot


def test_recover_pool_puts_complete_objects_in_place_and_drops_torn_ones(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    lost, meta, data = _object(spool, 1)
    spool.write(lost, meta, data)
    expected = lost.read_bytes()
    _undo_rename(spool, lost)

    kept, meta2, data2 = _object(spool, 2)
    spool.write(kept, meta2, data2)
    torn = _undo_rename(spool, kept)
    with open(torn, "r+b") as handle:  # cut off mid-write: fewer bytes than its preamble records
        handle.truncate(torn.stat().st_size - 100)

    report = Spool(tmp_path / "spool").recover_pool()  # a fresh process after the power cut
    assert (report.moved, report.torn, report.empty) == (1, 1, SPOOL_SLOT_BATCH - 2)
    assert lost.read_bytes() == expected
    assert not kept.exists()  # never acknowledged: gone, the sender will send it again
    assert list(spool.pool.iterdir()) == []
    assert {p.name for p in spool.iter_files()} == {lost.name}


def test_recover_pool_keeps_the_newest_copy_of_an_instance(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    base = chest_ct_series(1, 16, seed=3)[0]
    target, meta, data = _object(spool, 3, "first copy", base)
    spool.write(target, meta, data)
    first = _undo_rename(spool, target)
    _, meta_b, data_b = _object(spool, 3, "second copy", base)  # same UIDs, newer copy
    spool.write(target, meta_b, data_b)
    second = _undo_rename(spool, target)
    _, meta_c, data_c = _object(spool, 3, "third copy", base)
    spool.write(target, meta_c, data_c)  # the newest one's rename survived
    newest = target.read_bytes()

    report = Spool(tmp_path / "spool").recover_pool()
    assert (report.moved, report.superseded) == (0, 2)
    assert target.read_bytes() == newest
    assert not first.exists() and not second.exists()

    # and when the rename of the newest copy is the one lost, it replaces the older copy in place
    _, meta_d, data_d = _object(spool, 3, "fourth copy", base)
    spool.write(target, meta_d, data_d)
    fourth = target.read_bytes()
    _undo_rename(spool, target)
    spool = Spool(tmp_path / "spool")  # the first recovery removed the old object's unused slots
    spool.write(target, meta_c, data_c)  # a copy in place again...
    with open(target, "r+b") as handle:  # ...stamped as written before the fourth
        handle.seek(24)
        handle.write((1).to_bytes(8, "little"))
    report = Spool(tmp_path / "spool").recover_pool()
    assert report.moved == 1 and pydicom.dcmread(target).SeriesDescription == "fourth copy"
    assert target.read_bytes() == fourth
