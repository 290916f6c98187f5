"""Every kind of object the builders write is accepted by a real Orthanc over C-STORE."""
from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from ai_models.results import Box, Classification, Detection, Segmentation
from dicom_node.ops.synthetic import chest_ct_series, chest_dx
from dicom_node.outputs import build_erased_images, build_header_fix_copy, build_seg, build_sr
from tests.outputs.dicom_checks import UID_ROOT, l_shaped_mask

pytestmark = pytest.mark.peers


def _all_outputs() -> tuple[list[Dataset], dict[str, list[Dataset]]]:
    """The sources and one or more objects of every kind the builders make, from the same study."""
    ct = chest_ct_series(10, 64, contrast=True, seed=1)
    dx = chest_dx(256, 256, seed=2, study_uid=str(ct[0].StudyInstanceUID))
    ct_uids = [str(ds.SOPInstanceUID) for ds in ct]
    dx_uid = str(dx.SOPInstanceUID)

    kidney = Segmentation("kidney", "1.0.0", l_shaped_mask(10, 64, range(2, 6)), {1: "kidney"}, ct_uids)
    lung_mask = np.zeros((1, 256, 256), np.uint8)
    lung_mask[0, 40:200, 30:110] = 1
    lung = Segmentation("lung", "1.0.0", lung_mask, {1: "lung"}, [dx_uid], spacing_mm=(1.0, 0.2, 0.2))
    seg_ct = build_seg(ct, kidney, uid_root=UID_ROOT)
    seg_dx = build_seg([dx], lung, uid_root=UID_ROOT)
    enhancement = Classification("enhancement", "1.0.0", "Non-Enhanced", {"Non-Enhanced": 0.9, "Enhanced": 0.1},
                                 ct_uids, header_value="IODINE", agrees_with_header=False)
    view = Classification("chest-view", "1.0.0", "Lateral", {"PA": 0.1, "Lateral": 0.85, "Others": 0.05},
                          [dx_uid], header_value="PA", agrees_with_header=False)
    x0, y0, x1, y1 = dx.synthetic_marker_box
    markers = Detection("lr-mark", "1.0.0", [Box(x0, y0, x1, y1, "left", 0.97, dx_uid)], [dx_uid])
    erased_pixels = dx.pixel_array.copy()
    erased_pixels[y0:y1, x0:x1] = int(np.median(erased_pixels))

    outputs = {
        "seg": [seg_ct, seg_dx],
        "sr": [
            build_sr(ct, enhancement, uid_root=UID_ROOT),
            build_sr([dx], view, uid_root=UID_ROOT),
            build_sr([dx], markers, uid_root=UID_ROOT),
            build_sr(ct, kidney, uid_root=UID_ROOT, seg=seg_ct),
            build_sr([dx], lung, uid_root=UID_ROOT, seg=seg_dx),
        ],
        "erased": build_erased_images([dx], markers, {dx_uid: erased_pixels}, uid_root=UID_ROOT),
        "header fix": [
            *build_header_fix_copy(ct, enhancement, attribute_values={"ContrastBolusAgent": None}, uid_root=UID_ROOT),
            *build_header_fix_copy([dx], view, attribute_values={"ViewPosition": "LL"}, uid_root=UID_ROOT),
        ],
    }
    return [*ct, dx], outputs


def test_orthanc_stores_every_output_kind(orthanc) -> None:  # type: ignore[no-untyped-def]
    sources, outputs = _all_outputs()
    everything = [*sources, *(ds for group in outputs.values() for ds in group)]
    ae = AE(ae_title="DICOM_NODE")
    for sop_class in sorted({str(ds.SOPClassUID) for ds in everything}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    association = ae.associate("127.0.0.1", orthanc.dicom_port, ae_title=orthanc.aet)
    assert association.is_established
    try:
        statuses = {str(ds.SOPInstanceUID): association.send_c_store(ds).Status for ds in everything}
    finally:
        association.release()

    assert all(status == 0x0000 for status in statuses.values()), {k: hex(v) for k, v in statuses.items() if v}
    stored = orthanc.sop_uids()
    for kind, group in outputs.items():
        for ds in group:
            assert str(ds.SOPInstanceUID) in stored, f"{kind} {ds.SOPClassUID} not stored"
    assert len(stored) == len(everything)
