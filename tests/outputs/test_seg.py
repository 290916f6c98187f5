"""DICOM SEG: frames land on the right source instances, codes are right, the file is valid."""
from __future__ import annotations

import copy
import random
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from ai_models.results import Segmentation
from dicom_node.ops.synthetic import chest_ct_series, chest_dx
from dicom_node.outputs.seg import SEGMENT_CODES, build_seg, segment_codes
from tests.outputs.dicom_checks import UID_ROOT, dciodvfy, foreign_uids, l_shaped_mask

N_SLICES, SIZE = 10, 64


def _serialised(ds: pydicom.Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def ct() -> list[pydicom.Dataset]:
    return chest_ct_series(N_SLICES, SIZE, seed=3)


@pytest.fixture(scope="module")
def kidney_result(ct: list[pydicom.Dataset]) -> Segmentation:
    """Kidney (an L on slices 2-5) and tumour (a square on slices 3-4), frames listed in a shuffled order."""
    labels = l_shaped_mask(N_SLICES, SIZE, range(2, 6))
    labels[3:5, 40:48, 44:52] = 2
    order = list(range(N_SLICES))
    random.Random(7).shuffle(order)
    return Segmentation(
        model="kidney", model_version="1.0.0", mask=labels[order],
        label_names={1: "kidney", 2: "kidney tumour"},
        source_sop_instance_uids=[str(ct[i].SOPInstanceUID) for i in order],
    )


def _expected(ct: list[pydicom.Dataset], result: Segmentation, label: int) -> dict[str, np.ndarray]:
    """Ground truth per source SOP instance UID."""
    return {uid: result.mask[i] == label for i, uid in enumerate(result.source_sop_instance_uids)}


def test_ct_seg_frames_reference_the_right_slices(tmp_path: Path, ct: list[pydicom.Dataset], kidney_result: Segmentation) -> None:
    shuffled = ct[:]
    random.Random(11).shuffle(shuffled)  # input order differs from both slice order and mask order
    before = [_serialised(ds) for ds in ct]
    seg = build_seg(shuffled, kidney_result, uid_root=UID_ROOT, series_description="kidney test")

    errors, _ = dciodvfy(seg, tmp_path, "seg_ct")
    assert errors == []
    assert [_serialised(ds) for ds in ct] == before  # sources untouched

    back = hd.seg.segread(tmp_path / "seg_ct.dcm")
    uids = [str(ds.SOPInstanceUID) for ds in ct]
    pixels = back.get_pixels_by_source_instance(uids)  # (slices, rows, cols, segments)
    for number, label in ((1, 1), (2, 2)):
        truth = _expected(ct, kidney_result, label)
        for k, uid in enumerate(uids):
            np.testing.assert_array_equal(pixels[k, :, :, number - 1], truth[uid])

    # Independent of highdicom's reader: every frame's reference and position agree with its mask.
    raw = pydicom.dcmread(tmp_path / "seg_ct.dcm")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in ct}
    frames = raw.pixel_array
    assert len(raw.PerFrameFunctionalGroupsSequence) == N_SLICES * 2  # no frame omitted by default
    for index, item in enumerate(raw.PerFrameFunctionalGroupsSequence):
        ref = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert position == pytest.approx([float(v) for v in by_uid[ref].ImagePositionPatient])
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        np.testing.assert_array_equal(frames[index].astype(bool), _expected(ct, kidney_result, segment)[ref])

    assert raw.FrameOfReferenceUID == ct[0].FrameOfReferenceUID
    assert raw.StudyInstanceUID == ct[0].StudyInstanceUID
    assert raw.SeriesInstanceUID != ct[0].SeriesInstanceUID
    assert raw.SeriesDescription == "kidney test"
    assert raw.Manufacturer == "dicom-node" and raw.ManufacturerModelName == "kidney"
    assert raw.ContributingEquipmentSequence[0].Manufacturer == "SYNTHETIC"
    assert foreign_uids(raw, ct) == set()


def test_ct_seg_segments_are_coded_with_sct(ct: list[pydicom.Dataset], kidney_result: Segmentation) -> None:
    seg = build_seg(ct, kidney_result, uid_root=UID_ROOT)
    kidney, tumour = seg.SegmentSequence
    assert kidney.SegmentLabel == "kidney" and tumour.SegmentLabel == "kidney tumour"
    assert kidney.SegmentedPropertyTypeCodeSequence[0].CodeValue == "64033007"
    assert kidney.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    assert tumour.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"
    assert tumour.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert tumour.AnatomicRegionSequence[0].CodeValue == "64033007"
    for item in (kidney, tumour):
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        assert item.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
        family = item.SegmentationAlgorithmIdentificationSequence[0].AlgorithmFamilyCodeSequence[0]
        assert (family.CodeValue, family.CodingSchemeDesignator) == ("123110", "DCM")
        assert item.TrackingUID.startswith(UID_ROOT + ".")


def test_omitting_empty_frames_keeps_the_placement(tmp_path: Path, ct: list[pydicom.Dataset], kidney_result: Segmentation) -> None:
    seg = build_seg(ct, kidney_result, uid_root=UID_ROOT, omit_empty_frames=True)
    non_empty = sum(int((kidney_result.mask == label).any(axis=(1, 2)).sum()) for label in (1, 2))
    assert seg.NumberOfFrames == non_empty < N_SLICES * 2
    errors, _ = dciodvfy(seg, tmp_path, "seg_ct_omit")
    assert errors == []
    back = hd.seg.segread(tmp_path / "seg_ct_omit.dcm")
    uids = [str(ds.SOPInstanceUID) for ds in ct]
    pixels = back.get_pixels_by_source_instance(uids, assert_missing_frames_are_empty=True)
    truth = _expected(ct, kidney_result, 1)
    for k, uid in enumerate(uids):
        np.testing.assert_array_equal(pixels[k, :, :, 0], truth[uid])


def test_fractional_seg_round_trips_probabilities(tmp_path: Path, ct: list[pydicom.Dataset]) -> None:
    uids = [str(ds.SOPInstanceUID) for ds in ct]
    rng = np.random.default_rng(0)
    probability = rng.random((N_SLICES, SIZE, SIZE, 1)).astype(np.float32)
    result = Segmentation("liver", "0.1", (probability[..., 0] > 0.5).astype(np.uint8), {1: "liver"}, uids)
    seg = build_seg(ct, result, uid_root=UID_ROOT, fractional=probability)
    assert seg.SegmentationType == "FRACTIONAL"
    errors, _ = dciodvfy(seg, tmp_path, "seg_fractional")
    assert errors == []
    back = hd.seg.segread(tmp_path / "seg_fractional.dcm").get_pixels_by_source_instance(uids)
    np.testing.assert_allclose(back[..., 0], probability[..., 0], atol=0.5 / 255 + 1e-6)


def _lung_result(dx: pydicom.Dataset) -> Segmentation:
    mask = np.zeros((1, 256, 256), dtype=np.uint8)
    mask[0, 40:200, 30:110] = 1  # patient's right lung, tall
    mask[0, 60:170, 150:230] = 1  # left lung, shorter: a left-right flip is visible
    return Segmentation("lung", "1.0.0", mask, {1: "lung"}, [str(dx.SOPInstanceUID)])


@pytest.mark.parametrize("with_pixel_spacing", [False, True])
def test_dx_lung_seg_is_valid_and_readable(tmp_path: Path, with_pixel_spacing: bool) -> None:
    dx = chest_dx(256, 256, seed=5)
    if with_pixel_spacing:
        dx.PixelSpacing = [0.2, 0.2]
    result = _lung_result(dx)
    seg = build_seg([dx], result, uid_root=UID_ROOT)

    assert "FrameOfReferenceUID" not in seg
    assert seg.PatientOrientation == dx.PatientOrientation
    errors, _ = dciodvfy(seg, tmp_path, "seg_dx")
    assert errors == []
    back = hd.seg.segread(tmp_path / "seg_dx.dcm")
    pixels = back.get_pixels_by_source_instance([str(dx.SOPInstanceUID)])
    np.testing.assert_array_equal(pixels[0, :, :, 0], result.mask[0].astype(bool))
    measures = back.SharedFunctionalGroupsSequence[0].get("PixelMeasuresSequence")
    if with_pixel_spacing:
        assert [float(v) for v in measures[0].PixelSpacing] == [0.2, 0.2] and float(measures[0].SliceThickness) > 0
    assert back.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "39607008"
    assert foreign_uids(back, [dx]) == set()


def test_label_table_codes_match_pydicoms_dictionary() -> None:
    expected = {
        "lung": codes.SCT.Lung, "kidney": codes.SCT.Kidney, "liver": codes.SCT.Liver, "brain": codes.SCT.Brain,
        "kidney tumor": codes.SCT.Neoplasm, "blood vessel": codes.SCT.BloodVessel,
    }
    for name, code in expected.items():
        assert SEGMENT_CODES[name].type == code
    assert segment_codes("Kidney_Tumour").type == codes.SCT.Neoplasm
    assert segment_codes("vessel").type == codes.SCT.BloodVessel
    assert segment_codes("polyp").category == codes.SCT.MorphologicallyAbnormalStructure
    assert all(c.type.scheme_designator == "SCT" and c.category.scheme_designator == "SCT" for c in SEGMENT_CODES.values())


def test_unknown_label_is_a_clear_error(ct: list[pydicom.Dataset]) -> None:
    uids = [str(ds.SOPInstanceUID) for ds in ct]
    result = Segmentation("x", "1", np.ones((N_SLICES, SIZE, SIZE), np.uint8), {1: "spleen"}, uids)
    with pytest.raises(ValueError, match="no SEG codes for label 'spleen'.*known labels"):
        build_seg(ct, result, uid_root=UID_ROOT)


def test_mask_naming_a_missing_source_is_refused(ct: list[pydicom.Dataset], kidney_result: Segmentation) -> None:
    with pytest.raises(ValueError, match="not among the sources"):
        build_seg(ct[:-1], kidney_result, uid_root=UID_ROOT)


def test_unnamed_label_value_is_refused(ct: list[pydicom.Dataset], kidney_result: Segmentation) -> None:
    only_kidney = copy.copy(kidney_result)
    only_kidney.label_names = {1: "kidney"}
    with pytest.raises(ValueError, match=r"label value\(s\) \[2\]"):
        build_seg(ct, only_kidney, uid_root=UID_ROOT)
