"""The receiver's directly encoded File Meta Information equals pydicom's, byte for byte."""
from __future__ import annotations

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom.dsutils import create_file_meta, encode_file_meta

from dicom_node.receive.file_meta import received_file_meta


@pytest.mark.parametrize(
    "sop_class,sop_uid,syntax,ae",
    [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5", ExplicitVRLittleEndian, "STORESCU"),  # odd UID: NUL pad
        ("1.2.840.10008.5.1.4.1.1.1.1", "1.2.3.4.56", ImplicitVRLittleEndian, "MODALITY1"),  # odd AE: space pad
        ("1.2.840.10008.5.1.4.1.1.4", "2.25." + "9" * 59, JPEG2000Lossless, "A" * 16),  # maximum lengths
    ],
)
def test_matches_pydicom_encoding(sop_class, sop_uid, syntax, ae):
    meta = create_file_meta(sop_class_uid=sop_class, sop_instance_uid=sop_uid, transfer_syntax=syntax)
    meta.SourceApplicationEntityTitle = ae
    assert received_file_meta(sop_class, sop_uid, str(syntax), ae) == encode_file_meta(meta)


@pytest.mark.parametrize(
    "args",
    [
        ("1.2.840.10008.5.1.4.1.1.2", "1." + "2" * 70, ExplicitVRLittleEndian, "X"),  # UID over 64
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3", ExplicitVRLittleEndian, "TOO_LONG_AE_TITLE"),  # AE over 16
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3", ExplicitVRLittleEndian, "SÉNDER"),  # not ASCII
    ],
)
def test_unwritable_values_are_refused(args):
    with pytest.raises(ValueError, match="cannot be written"):
        received_file_meta(*args)
