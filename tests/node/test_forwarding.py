"""Receive with dcmtk storescu, forward to a real Orthanc and dcmtk storescp, compare bytes."""
from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

from dicom_node.ops.synthetic import chest_ct_series, chest_dx, write_datasets
from tests.node.conftest import forward_rule
from tests.peers import storescu_as_stored, wait_for

pytestmark = pytest.mark.peers

# pydicom's bundled files in the transfer syntaxes a PACS sends (all offline in the wheel)
BUNDLED = [
    "CT_small.dcm",                    # explicit VR little endian
    "rtplan.dcm",                      # implicit VR little endian, a non-image storage class
    "image_dfl.dcm",                   # deflated explicit VR little endian
    "ExplVR_BigEnd.dcm",               # explicit VR big endian (retired, still sent by old modalities)
    "693_J2KI.dcm",                    # JPEG 2000
    "GDCMJ2K_TextGBR.dcm",             # JPEG 2000 lossless
    "MR_small_jpeg_ls_lossless.dcm",   # JPEG-LS lossless
    "SC_rgb_dcmtk_+eb+cr.dcm",         # JPEG baseline
    "SC_rgb_jpeg_gdcm.dcm",            # JPEG lossless SV1
]  # one file per SOP Instance UID: several bundled files share UIDs


def dataset_bytes(path: Path | str) -> bytes:
    """The encoded dataset after the File Meta Information: what must arrive unchanged."""
    raw = Path(path).read_bytes()
    meta = pydicom.filereader.read_file_meta_info(path)
    start = 132 + 12 + int(meta.FileMetaInformationGroupLength)
    return raw[start:]




@pytest.fixture
def sample_files(tmp_path: Path) -> list[Path]:
    ct = write_datasets(chest_ct_series(12, 64, seed=3), tmp_path / "in" / "ct", "CT")
    dx = write_datasets([chest_dx(256, 200, seed=i) for i in range(3)], tmp_path / "in" / "dx", "DX")
    rle = chest_ct_series(1, 64, seed=4)[0]
    rle.compress(RLELossless, generate_instance_uid=False)  # RLE from our own encoder: the bundled RLE files reuse other files' UIDs
    rle_path = tmp_path / "in" / "rle.dcm"
    rle.save_as(rle_path, enforce_file_format=True)
    bundled = [Path(get_testdata_file(name)) for name in BUNDLED] + [rle_path]
    assert all(p.exists() for p in bundled)
    return ct + dx + bundled


def test_storescu_to_node_to_orthanc_and_storescp_byte_for_byte(make_node, orthanc, storescp, sample_files, tmp_path) -> None:
    node = make_node(
        destinations={
            "pacs": {"type": "dicom", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port},
            "scp": {"type": "dicom", "ae_title": storescp.aet, "host": "127.0.0.1", "port": storescp.port},
        },
        rules={"10-forward.toml": forward_rule("pacs", "scp")},
    )
    # each file goes in its own transfer syntax, as a PACS auto-forward sends it
    for result in storescu_as_stored(node.port, sample_files):
        assert result.returncode == 0, result.stderr

    # What the node acknowledged must be what it forwards, byte for byte. storescu
    # re-encodes some bundled files on the way in (it drops group lengths), so the
    # reference is the node's spool copy; for our synthetic files it is also the original.
    originals = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in sample_files}
    expected = {}
    for path in (node.workdir / "spool").rglob("*.dcm"):
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        expected[uid] = dataset_bytes(path)
    assert expected.keys() == originals.keys()
    for uid, path in originals.items():
        if "/in/" in str(path):
            assert expected[uid] == dataset_bytes(path), f"synthetic {path.name} changed on the way in"

    arrived = wait_for(lambda: (lambda uids: uids if set(expected) <= set(uids) else None)(orthanc.sop_uids()), timeout=60)
    for uid, orthanc_id in arrived.items():
        tmp = tmp_path / "from-orthanc.dcm"
        tmp.write_bytes(orthanc.instance_file(orthanc_id))
        sent = next((node.workdir / "spool").rglob(f"{uid}.dcm"))
        if pydicom.dcmread(sent).file_meta.TransferSyntaxUID != DeflatedExplicitVRLittleEndian:
            assert dataset_bytes(tmp) == expected[uid], f"dataset of {uid} changed on the way to Orthanc"
        else:  # Orthanc re-deflates what it stores: the inflated content must match
            assert pydicom.dcmread(tmp) == pydicom.dcmread(sent), f"content of {uid} changed on the way to Orthanc"

    files = wait_for(lambda: storescp.files() if len(storescp.files()) >= len(expected) else None, timeout=60)
    seen = {}
    for path in files:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        seen[uid] = dataset_bytes(path)
    assert seen.keys() == expected.keys()
    for uid, data in seen.items():
        assert data == expected[uid], f"dataset of {uid} changed on the way to storescp"

    status = node.cli("status", "--json")
    assert status.returncode == 0
    import json

    report = json.loads(status.stdout)
    assert report["counts"]["instances"] == len(expected)
    assert report["counts"]["deliveries"] == {"delivered": 2 * report["counts"]["series"]["dispatched"]}
