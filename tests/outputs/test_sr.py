"""TID 1500 SR for every result kind: valid, readable by highdicom, saying what the model said."""
from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from ai_models.results import Box, Classification, Detection, Segmentation, SliceEvidence
from dicom_node.ops.synthetic import chest_ct_series, chest_dx
from dicom_node.outputs.common import HEADER_AGREEMENT, HEADER_VALUE
from dicom_node.outputs.seg import build_seg
from dicom_node.outputs.sr import build_classification_sr, build_sr
from tests.outputs.dicom_checks import UID_ROOT, dciodvfy, foreign_uids, l_shaped_mask

N_SLICES, SIZE = 10, 64


@pytest.fixture(scope="module")
def ct() -> list[pydicom.Dataset]:
    return chest_ct_series(N_SLICES, SIZE, contrast=True, seed=1)


@pytest.fixture(scope="module")
def dx() -> pydicom.Dataset:
    return chest_dx(256, 256, seed=2)


def _uids(datasets: list[pydicom.Dataset]) -> list[str]:
    return [str(ds.SOPInstanceUID) for ds in datasets]


def _written(sr: pydicom.Dataset, tmp_path: Path, name: str) -> hd.sr.ComprehensiveSR:
    errors, _ = dciodvfy(sr, tmp_path, name)
    assert errors == []
    return hd.sr.srread(tmp_path / f"{name}.dcm")


def _qualitative(group) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {item.name.meaning: item.value.meaning for item in group.get_qualitative_evaluations()}


def _header_values(group) -> list[str]:  # type: ignore[no-untyped-def]
    return [item.TextValue for item in group[0].ContentSequence
            if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == HEADER_VALUE.value]


def _observer_name(sr: hd.sr.ComprehensiveSR) -> str:
    (context,) = [item for item in sr.ContentSequence
                  if item.ConceptNameCodeSequence[0].CodeValue == codes.DCM.DeviceObserverName.value]
    return context.TextValue


def test_enhancement_sr_records_answer_probability_and_header(tmp_path: Path, ct: list[pydicom.Dataset]) -> None:
    uids = _uids(ct)
    used = set(uids[3:7])
    result = Classification(
        model="enhancement", model_version="1.0.0", label="Non-Enhanced",
        probabilities={"Non-Enhanced": 0.83, "Enhanced": 0.17}, source_sop_instance_uids=uids,
        evidence=[SliceEvidence(u, {"Non-Enhanced": 0.8, "Enhanced": 0.2}, used=u in used) for u in uids],
        header_value="IODINE", agrees_with_header=False,
    )
    sr = build_sr(ct, result, uid_root=UID_ROOT)
    back = _written(sr, tmp_path, "sr_enhancement")

    (group,) = back.content.get_image_measurement_groups()
    assert _qualitative(group) == {"Contrast administered": "No", "Header agreement": "No"}
    (probability,) = group.get_measurements()
    assert probability.name == codes.DCM.Probability
    assert probability.value == pytest.approx(0.83) and probability.unit.value == "1"
    assert _header_values(group) == ["ContrastBolusAgent=IODINE"]
    referenced = {item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                  for item in group[0].ContentSequence if item.ValueType == "IMAGE"}
    assert referenced == used  # the slices the model used, not the whole series
    assert _observer_name(back) == "enhancement 1.0.0"
    assert back.Manufacturer == "dicom-node" and back.ManufacturerModelName == "enhancement"
    assert back.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99DCMNODE"
    evidence = {item.ReferencedSOPInstanceUID for study in back.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    assert evidence == set(uids)
    assert foreign_uids(back, ct) == set()


def test_baseline_labels_and_missing_header_are_understood(tmp_path: Path, ct: list[pydicom.Dataset]) -> None:
    result = Classification(
        model="enhancement-hu", model_version="0.1.0", label="enhanced",
        probabilities={"non-enhanced": 0.1, "enhanced": 0.9}, source_sop_instance_uids=_uids(ct),
        header_value=None, agrees_with_header=None,
    )
    (group,) = _written(build_sr(ct, result, uid_root=UID_ROOT), tmp_path, "sr_hu").content.get_image_measurement_groups()
    assert _qualitative(group) == {"Contrast administered": "Yes", "Header agreement": "Undetermined"}
    assert _header_values(group) == ["ContrastBolusAgent absent or empty"]
    assert group.get_measurements()[0].value == pytest.approx(0.9)


@pytest.mark.parametrize(("label", "view_code"), [("Lateral", codes.SCT.Lateral), ("PA", codes.SCT.PosteroAnterior)])
def test_chest_view_sr(tmp_path: Path, dx: pydicom.Dataset, label: str, view_code) -> None:  # type: ignore[no-untyped-def]
    probabilities = {"PA": 0.05, "Lateral": 0.05, "Others": 0.05} | {label: 0.9}
    result = Classification(
        model="chest-view", model_version="1.0.0", label=label, probabilities=probabilities,
        source_sop_instance_uids=[str(dx.SOPInstanceUID)], header_value="PA", agrees_with_header=label == "PA",
    )
    back = _written(build_sr([dx], result, uid_root=UID_ROOT), tmp_path, f"sr_view_{label}")
    (group,) = back.content.get_image_measurement_groups()
    evaluations = {item.name.value: item.value for item in group.get_qualitative_evaluations()}
    assert evaluations[codes.DCM.ImageView.value] == view_code
    assert evaluations[HEADER_AGREEMENT.value] == (codes.SCT.Yes if label == "PA" else codes.SCT.No)
    assert _header_values(group) == ["ViewPosition=PA"]


def test_unrecognised_classification_needs_a_question(ct: list[pydicom.Dataset]) -> None:
    result = Classification("x", "1", "cat", {"cat": 0.6, "dog": 0.4}, _uids(ct))
    with pytest.raises(ValueError, match="pass question="):
        build_sr(ct, result, uid_root=UID_ROOT)
    with pytest.raises(ValueError, match="unknown question"):
        build_classification_sr(ct, result, uid_root=UID_ROOT, question="breed")


def test_lr_marker_boxes_become_closed_rectangles(tmp_path: Path, dx: pydicom.Dataset) -> None:
    uid = str(dx.SOPInstanceUID)
    boxes = [Box(12.5, 20.0, 40.0, 61.0, "left", 0.93, uid), Box(200.0, 15.0, 230.0, 50.0, "right", 0.88, uid)]
    result = Detection("lr-mark", "1.0.0", boxes, [uid])
    back = _written(build_sr([dx], result, uid_root=UID_ROOT), tmp_path, "sr_lr")

    groups = back.content.get_planar_roi_measurement_groups()
    assert len(groups) == 2
    for group, box in zip(groups, boxes):
        region = group.roi
        assert region.GraphicType == "POLYLINE"
        points = np.asarray(region.value).reshape(-1, 2)
        expected = [[box.x0, box.y0], [box.x1, box.y0], [box.x1, box.y1], [box.x0, box.y1], [box.x0, box.y0]]
        np.testing.assert_allclose(points, expected)
        assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == uid
        assert _qualitative(group) == {"Laterality": box.label.capitalize()}
        assert group.get_measurements()[0].value == pytest.approx(box.score)
        finding = [i for i in group[0].ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == codes.DCM.Finding.value]
        assert finding[0].ConceptCodeSequence[0].CodeValue == codes.SCT.OpaqueMarker.value
    assert "CodingSchemeIdentificationSequence" not in back  # no local codes used here


def test_images_without_boxes_say_the_marker_is_absent(tmp_path: Path, dx: pydicom.Dataset) -> None:
    other = chest_dx(256, 256, marker=None, seed=4)
    uid = str(dx.SOPInstanceUID)
    result = Detection("lr-mark", "1.0.0", [Box(12.0, 20.0, 40.0, 61.0, "right", 0.9, uid)], [uid, str(other.SOPInstanceUID)])
    back = _written(build_sr([dx, other], result, uid_root=UID_ROOT), tmp_path, "sr_lr_absent")
    assert len(back.content.get_planar_roi_measurement_groups()) == 1
    (group,) = back.content.get_image_measurement_groups()
    assert _qualitative(group) == {"Presence of property": "Absent"}
    (image,) = [item for item in group[0].ContentSequence if item.ValueType == "IMAGE"]
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == other.SOPInstanceUID

    nothing = Detection("lr-mark", "1.0.0", [], [uid])
    empty = _written(build_sr([dx], nothing, uid_root=UID_ROOT), tmp_path, "sr_lr_none")
    assert empty.content.get_planar_roi_measurement_groups() == []
    assert len(empty.content.get_image_measurement_groups()) == 1


def _kidney(ct: list[pydicom.Dataset], volumes: dict[str, float] | None = None) -> Segmentation:
    labels = l_shaped_mask(N_SLICES, SIZE, range(2, 6))
    labels[3:5, 40:48, 44:52] = 2
    return Segmentation("kidney", "1.0.0", labels, {1: "kidney", 2: "kidney tumor"}, _uids(ct),
                        volumes_ml=volumes or {})


def test_volumes_reference_the_seg_segments(tmp_path: Path, ct: list[pydicom.Dataset]) -> None:
    result = _kidney(ct)
    seg = build_seg(ct, result, uid_root=UID_ROOT)
    back = _written(build_sr(ct, result, uid_root=UID_ROOT, seg=seg), tmp_path, "sr_volumes")

    spacing = float(ct[0].PixelSpacing[0])
    voxel_ml = spacing * spacing * float(ct[0].SliceThickness) / 1000.0  # slices are SliceThickness apart
    groups = back.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 2
    for group, (label, number) in zip(groups, ((1, 1), (2, 2))):
        (volume,) = group.get_measurements()
        assert volume.name == codes.SCT.Volume and volume.unit.value == "ml"
        assert volume.value == pytest.approx(np.count_nonzero(result.mask == label) * voxel_ml)
        (image,) = [item for item in group.referenced_segment if item.ValueType == "IMAGE"]
        assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert image.ReferencedSOPSequence[0].ReferencedSegmentNumber == number
    assert seg.SOPInstanceUID in {item.ReferencedSOPInstanceUID for study in back.CurrentRequestedProcedureEvidenceSequence
                                  for series in study.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    assert foreign_uids(back, [*ct, seg]) == set()


def test_reported_volumes_are_used_and_source_series_referenced_without_seg(tmp_path: Path, ct: list[pydicom.Dataset]) -> None:
    result = _kidney(ct, volumes={"kidney": 151.25, "kidney tumor": 3.5})
    back = _written(build_sr(ct, result, uid_root=UID_ROOT), tmp_path, "sr_volumes_noseg")
    groups = back.content.get_image_measurement_groups()
    assert [g.get_measurements()[0].value for g in groups] == [pytest.approx(151.25), pytest.approx(3.5)]
    for group in groups:
        images = {item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                  for item in group[0].ContentSequence if item.ValueType == "IMAGE"}
        assert images == set(_uids(ct))
    findings = [group.finding_type.value for group in groups]
    assert findings == [codes.SCT.Kidney.value, codes.SCT.Neoplasm.value]


def test_dx_lung_area_references_the_seg_frame(tmp_path: Path, dx: pydicom.Dataset) -> None:
    mask = np.zeros((1, 256, 256), dtype=np.uint8)
    mask[0, 40:200, 30:110] = 1
    result = Segmentation("lung", "1.0.0", mask, {1: "lung"}, [str(dx.SOPInstanceUID)], spacing_mm=(1.0, 0.2, 0.2))
    seg = build_seg([dx], result, uid_root=UID_ROOT)
    back = _written(build_sr([dx], result, uid_root=UID_ROOT, seg=seg), tmp_path, "sr_lung_area")
    (group,) = back.content.get_planar_roi_measurement_groups()
    (area,) = group.get_measurements()
    assert area.name == codes.SCT.Area and area.unit.value == "mm2"
    assert area.value == pytest.approx(160 * 80 * 0.04)
    reference = group.referenced_segmentation_frame
    (seg_ref,) = [item for item in reference if item.ConceptNameCodeSequence[0].CodeValue == "121214"]
    assert seg_ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg.SOPInstanceUID
    assert [int(v) for v in np.atleast_1d(seg_ref.ReferencedSOPSequence[0].ReferencedFrameNumber)] == [1]


def test_build_sr_refuses_other_objects(ct: list[pydicom.Dataset]) -> None:
    with pytest.raises(TypeError, match="no SR for a dict"):
        build_sr(ct, {}, uid_root=UID_ROOT)  # type: ignore[arg-type]
