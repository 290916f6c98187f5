"""The receiver's identifying-attribute reader gives what pydicom gives, or hands over to pydicom."""
from __future__ import annotations

import warnings
from io import BytesIO
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.sequence import Sequence
from pynetdicom.dsutils import encode

from dicom_node.receive.file_meta import file_info
from dicom_node.receive.identifiers import read_identifiers

BUNDLED_FILES = Path(pydicom.data.__file__).parent / "test_files"  # in the wheel: no download attempts


def _expected(ds: Dataset) -> tuple[str | None, ...]:
    def text(keyword: str) -> str | None:
        return str(ds.get(keyword, "") or "") or None

    return tuple(text(k) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality", "SeriesDescription"))


def _got(raw: bytes, implicit: bool) -> tuple[str | None, ...] | None:
    ids = read_identifiers(raw, implicit_vr=implicit, little_endian=True)
    return None if ids is None else (ids.study_uid, ids.series_uid, ids.sop_uid, ids.modality, ids.series_description)


def test_agrees_with_pydicom_on_the_bundled_files() -> None:
    compared, handed_over = 0, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in map(str, sorted(BUNDLED_FILES.rglob("*.dcm"))):
            try:
                info = file_info(path)
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - files without file meta, or deliberately broken ones
                continue
            syntax = info.transfer_syntax
            if syntax.is_deflated or not syntax.is_little_endian or ds.get("SOPInstanceUID") is None:
                continue
            with open(path, "rb") as handle:
                raw = handle.read()[info.dataset_offset:]
            got = _got(raw, syntax.is_implicit_VR)
            if got is None:  # handed over to pydicom
                handed_over.append(Path(path).name)
                continue
            assert got == _expected(ds), path
            compared += 1
    assert compared >= 50
    assert handed_over == ["SC_rgb_jpeg.dcm"]  # declares explicit VR, is encoded implicit: pydicom's guesswork


@pytest.mark.parametrize("implicit", [True, False])
def test_steps_over_nested_sequences_of_undefined_length(implicit: bool) -> None:
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator = "T-D3000", "SRT"
    inner_sequence = Sequence([inner])
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    item.ReferencedSOPInstanceUID = "1.2.3.99"
    item.AnatomicRegionSequence = inner_sequence
    item["AnatomicRegionSequence"].is_undefined_length = True
    item.is_undefined_length_sequence_item = True
    outer = Sequence([item, Dataset()])
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4.5"  # odd length: NUL padded
    ds.Modality = "CT"
    ds.ReferencedStudySequence = outer  # (0008,1110), between Modality and Series Description
    ds["ReferencedStudySequence"].is_undefined_length = True
    ds.SeriesDescription = "chest"  # odd length: space padded
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.InstanceNumber = 7
    raw = encode(ds, implicit, True)
    assert b"\xfe\xff\xdd\xe0" in raw  # a sequence delimiter really is in the bytes
    assert _got(raw, implicit) == ("1.2.3", "1.2.3.4", "1.2.3.4.5", "CT", "chest")
    assert _got(raw, implicit) == _expected(read_dataset(BytesIO(raw), implicit, True))


def test_hands_over_what_it_does_not_handle() -> None:
    ds = Dataset()
    ds.SOPInstanceUID, ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4.5", "CT", "1.2.3", "1.2.3.4"
    ds.SeriesDescription = "Thorax natív"
    ds.SpecificCharacterSet = "ISO_IR 100"
    raw = encode(ds, False, True)
    assert _got(raw, False) is None  # non-ASCII text: pydicom decodes the character set
    assert read_identifiers(raw, implicit_vr=False, little_endian=False) is None
    assert _got(raw[:30], False) is None  # truncated inside an element
    assert _got(b"\x08\x00\x18\x00\x01\x02" + b"\x00" * 20, False) is None  # no VR where one must be
    empty = _got(b"", True)
    assert empty == (None, None, None, None, None)  # nothing there: the receiver answers "missing identifiers"
