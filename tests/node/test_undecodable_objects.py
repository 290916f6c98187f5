"""Objects that do not parse are refused before they are stored (issue 15, item 4).

Each malformed dataset goes to a running node as raw bytes (the node's own
C-STORE SCU sends them as they are) and must get 0xC210 (0xA900 for a SOP
Class UID that is not the request's) with nothing stored; a broken copy of an
instance already stored must leave the good copy in place.
"""
from __future__ import annotations

import sqlite3
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit
from pynetdicom import build_context
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, SecondaryCaptureImageStorage

from dicom_node.delivery.store_scu import StoreAssociation
from dicom_node.ops.synthetic import chest_ct_series
from dicom_node.receive.structure import MalformedDataset, walk

pytestmark = pytest.mark.peers

CANNOT_UNDERSTAND = 0xC210
SOP_CLASS_MISMATCH = 0xA900


def encode(ds: Dataset, *, implicit: bool = False) -> bytes:
    """The dataset's bytes as a C-STORE carries them (no file meta)."""
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = implicit, True
    write_dataset(buffer, ds)
    return buffer.getvalue()


def ct(rows: int = 64) -> Dataset:
    return chest_ct_series(1, rows)[0]


def send(port: int, body: bytes, *, sop_class: str, sop_uid: str, syntax: str = ExplicitVRLittleEndian) -> int:
    with StoreAssociation.open(
        "127.0.0.1", port, calling_ae="DICOM_NODE_SCU", called_ae="DICOM_NODE",
        contexts=[build_context(sop_class, syntax)], timeout=10,
    ) as assoc:
        return assoc.store(assoc.accepted[(sop_class, syntax)], sop_class, sop_uid, body).status


def stored(node) -> list[tuple[str, int, str]]:  # type: ignore[no-untyped-def]
    with sqlite3.connect(node.workdir / "node.db") as conn:
        return conn.execute("select sop_instance_uid, version, path from instances").fetchall()


def element_offset(body: bytes, group: int, element: int) -> int:
    offset = body.find(struct.pack("<HH", group, element))
    assert offset >= 0
    return offset


def length_past_the_end(ds: Dataset) -> bytes:
    """Study Description's 16-bit length says 60000: far past the end of a 64x64 slice."""
    ds.StudyDescription = "CHEST"
    body = bytearray(encode(ds))
    at = element_offset(bytes(body), 0x0008, 0x1030)
    body[at + 6:at + 8] = struct.pack("<H", 60000)
    return bytes(body)


def truncated_in_pixel_data(ds: Dataset) -> bytes:
    body = encode(ds)
    return body[: len(body) - 1000]


def pixel_data_shorter_than_image(ds: Dataset) -> bytes:
    """Consistent element lengths, but half the pixels: a truncated image re-wrapped by a broken writer."""
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    return encode(ds)


def pixel_length_2gb_with_64_bytes(ds: Dataset) -> bytes:
    body = encode(ds)
    at = element_offset(body, 0x7FE0, 0x0010)
    return body[:at] + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, 0x80000000) + b"\0" * 64


MALFORMED = {
    "element length past the end": length_past_the_end,
    "truncated inside pixel data": truncated_in_pixel_data,
    "pixel data shorter than its image": pixel_data_shorter_than_image,
    "pixel data length 2 GB, 64 bytes present": pixel_length_2gb_with_64_bytes,
}


@pytest.fixture(scope="module")
def node(tmp_path_factory):  # type: ignore[no-untyped-def]
    from tests.peers import NodeProcess

    proc = NodeProcess(tmp_path_factory.mktemp("undecodable") / "node")
    proc.write_config()
    proc.start()
    yield proc
    proc.stop()


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_dataset_is_refused_and_not_stored(node, name) -> None:
    ds = ct()
    body = MALFORMED[name](ds)
    with pytest.raises(MalformedDataset):
        walk(body, implicit_vr=False, little_endian=True)
    assert send(node.port, body, sop_class=CTImageStorage, sop_uid=ds.SOPInstanceUID) == CANNOT_UNDERSTAND
    assert ds.SOPInstanceUID not in {uid for uid, _, _ in stored(node)}
    assert f"C-STORE {ds.SOPInstanceUID} refused: dataset does not parse" in node.log_text()


def test_jpeg_dataset_with_a_corrupt_element_is_refused(node) -> None:
    """An unknown tag whose length is larger than the remaining bytes, in the middle of a JPEG object."""
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    body = bytearray(encode(ds))
    at = element_offset(bytes(body), 0x0028, 0x0030) if "PixelSpacing" in ds else element_offset(bytes(body), 0x0028, 0x0100)
    body[at:at + 12] = b"\x17\x63\xa2\x44OB\x00\x00\xff\xff\x00\x70"
    status = send(node.port, bytes(body), sop_class=SecondaryCaptureImageStorage, sop_uid=ds.SOPInstanceUID, syntax=JPEGBaseline8Bit)
    assert status == CANNOT_UNDERSTAND
    assert ds.SOPInstanceUID not in {uid for uid, _, _ in stored(node)}


def test_sop_class_of_the_dataset_must_be_the_requests(node) -> None:
    ds = ct()
    ds.SOPClassUID = MRImageStorage
    assert send(node.port, encode(ds), sop_class=CTImageStorage, sop_uid=ds.SOPInstanceUID) == SOP_CLASS_MISMATCH
    assert ds.SOPInstanceUID not in {uid for uid, _, _ in stored(node)}
    assert "differs from the request's" in node.log_text()


def test_a_broken_copy_never_replaces_the_good_one(node) -> None:
    ds = ct()
    good = encode(ds)
    assert send(node.port, good, sop_class=CTImageStorage, sop_uid=ds.SOPInstanceUID) == 0x0000
    [(_, version, path)] = [row for row in stored(node) if row[0] == ds.SOPInstanceUID]
    before = Path(path).read_bytes()
    assert send(node.port, truncated_in_pixel_data(ds), sop_class=CTImageStorage, sop_uid=ds.SOPInstanceUID) == CANNOT_UNDERSTAND
    assert [row for row in stored(node) if row[0] == ds.SOPInstanceUID] == [(ds.SOPInstanceUID, version, path)]
    assert Path(path).read_bytes() == before


def test_good_objects_of_every_encoding_still_pass(node) -> None:
    """Implicit VR, sequences of undefined length, encapsulated JPEG: the walk accepts what is well formed."""
    implicit = ct()
    assert send(node.port, encode(implicit, implicit=True), sop_class=CTImageStorage, sop_uid=implicit.SOPInstanceUID,
                syntax=ImplicitVRLittleEndian) == 0x0000
    jpeg = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    jpeg.SOPInstanceUID = pydicom.uid.generate_uid()
    assert send(node.port, encode(jpeg), sop_class=SecondaryCaptureImageStorage, sop_uid=jpeg.SOPInstanceUID, syntax=JPEGBaseline8Bit) == 0x0000
    assert {implicit.SOPInstanceUID, jpeg.SOPInstanceUID} <= {uid for uid, _, _ in stored(node)}
