"""Derived images: the erased radiograph and the header-corrected copy."""
from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from ai_models.results import Box, Classification, Detection
from dicom_node.ops.synthetic import chest_ct_series, chest_dx
from dicom_node.outputs.derived import build_erased_images, build_header_fix_copy
from tests.outputs.dicom_checks import UID_ROOT, dciodvfy, foreign_uids

PIXEL_ATTRIBUTES = ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                    "PhotometricInterpretation", "SamplesPerPixel", "ImagerPixelSpacing", "Modality", "SOPClassUID")


def _serialised(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _erase(ds: Dataset, box: tuple[int, int, int, int]) -> np.ndarray:
    """Fill the box with the median of the image: a stand-in for the node's eraser."""
    pixels = ds.pixel_array.copy()
    x0, y0, x1, y1 = box
    pixels[y0:y1, x0:x1] = np.median(pixels)
    return pixels


def _detection(images: list[Dataset]) -> Detection:
    boxes = [Box(*(float(v) for v in ds.synthetic_marker_box), "left", 0.95, str(ds.SOPInstanceUID)) for ds in images]
    return Detection("lr-mark", "1.0.0", boxes, [str(ds.SOPInstanceUID) for ds in images])


@pytest.mark.parametrize("monochrome1", [False, True])
def test_erased_images_are_valid_derived_instances_of_one_new_series(tmp_path: Path, monochrome1: bool) -> None:
    images = [chest_dx(256, 256, seed=s, monochrome1=monochrome1) for s in (1, 2)]
    before = [_serialised(ds) for ds in images]
    erased = {str(ds.SOPInstanceUID): _erase(ds, ds.synthetic_marker_box) for ds in images}
    out = build_erased_images(images, _detection(images), erased, uid_root=UID_ROOT)

    assert [_serialised(ds) for ds in images] == before  # originals untouched
    assert len(out) == 2 and len({ds.SeriesInstanceUID for ds in out}) == 1
    for source, derived in zip(images, out):
        errors, _ = dciodvfy(derived, tmp_path, f"erased_{derived.InstanceNumber}_{source.SOPInstanceUID[-6:]}")
        assert errors == []
        back = pydicom.dcmread(tmp_path / f"erased_{derived.InstanceNumber}_{source.SOPInstanceUID[-6:]}.dcm")
        np.testing.assert_array_equal(back.pixel_array, erased[str(source.SOPInstanceUID)])
        for keyword in PIXEL_ATTRIBUTES:
            assert back.get(keyword) == source.get(keyword), keyword
        assert back.SOPInstanceUID.startswith(UID_ROOT + ".") and back.SeriesInstanceUID.startswith(UID_ROOT + ".")
        assert back.SeriesInstanceUID != source.SeriesInstanceUID and back.StudyInstanceUID == source.StudyInstanceUID
        assert list(back.ImageType) == ["DERIVED", "SECONDARY"]
        (reference,) = back.SourceImageSequence
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert reference.ReferencedSOPClassUID == source.SOPClassUID
        assert reference.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
        assert back.DerivationCodeSequence[0].CodeValue == "113047"
        assert "lr-mark 1.0.0" in back.DerivationDescription and "left (0.95)" in back.DerivationDescription
        assert back.SeriesDescription == "CHEST PA [L/R marker erased]"
        assert source.BurnedInAnnotation == "YES" and back.BurnedInAnnotation == "NO"
        assert back.Manufacturer == "dicom-node" and back.ManufacturerModelName == "lr-mark"
        assert back.ContributingEquipmentSequence[0].Manufacturer == "SYNTHETIC"
        assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
        assert foreign_uids(back, images) == set()


def test_image_type_values_beyond_two_are_kept() -> None:
    dx = chest_dx(64, 64, seed=3, marker=None)
    dx.ImageType = ["ORIGINAL", "PRIMARY", "LATERALITY"]
    result = Detection("lr-mark", "1.0.0", [], [str(dx.SOPInstanceUID)])
    (out,) = build_erased_images([dx], result, {str(dx.SOPInstanceUID): dx.pixel_array}, uid_root=UID_ROOT)
    assert list(out.ImageType) == ["DERIVED", "SECONDARY", "LATERALITY"]


def test_burned_in_annotation_stays_when_a_marker_was_not_erased() -> None:
    dx = chest_dx(256, 256, seed=4)
    uid = str(dx.SOPInstanceUID)
    erased_one = _erase(dx, dx.synthetic_marker_box)
    second = Box(200.0, 200.0, 230.0, 230.0, "right", 0.9, uid)  # detected, left in place
    result = Detection("lr-mark", "1.0.0", [*_detection([dx]).boxes, second], [uid])
    (out,) = build_erased_images([dx], result, {uid: erased_one}, uid_root=UID_ROOT)
    assert out.BurnedInAnnotation == "YES"


@pytest.mark.parametrize(
    ("pixels", "message"),
    [(np.zeros((10, 10), np.uint16), "shape"), (np.full((64, 64), 5000, np.uint16), "12-bit range"),
     (np.zeros((64, 64), np.float32), "integer")],
)
def test_bad_erased_pixels_are_refused(pixels: np.ndarray, message: str) -> None:
    dx = chest_dx(64, 64, seed=5, marker=None)
    result = Detection("lr-mark", "1.0.0", [], [str(dx.SOPInstanceUID)])
    with pytest.raises(ValueError, match=message):
        build_erased_images([dx], result, {str(dx.SOPInstanceUID): pixels}, uid_root=UID_ROOT)


def test_erased_pixels_for_an_unexamined_image_are_refused() -> None:
    dx, other = chest_dx(64, 64, seed=6, marker=None), chest_dx(64, 64, seed=7, marker=None)
    result = Detection("lr-mark", "1.0.0", [], [str(dx.SOPInstanceUID)])
    with pytest.raises(ValueError, match="did not examine"):
        build_erased_images([dx, other], result, {str(other.SOPInstanceUID): other.pixel_array}, uid_root=UID_ROOT)


def test_contrast_header_fix_copy(tmp_path: Path) -> None:
    ct = chest_ct_series(4, 64, contrast=True, seed=2)
    before = [_serialised(ds) for ds in ct]
    result = Classification("enhancement", "1.0.0", "Non-Enhanced", {"Non-Enhanced": 0.91, "Enhanced": 0.09},
                            [str(ds.SOPInstanceUID) for ds in ct], header_value="IODINE", agrees_with_header=False)
    out = build_header_fix_copy(ct, result, attribute_values={"ContrastBolusAgent": None}, uid_root=UID_ROOT)

    assert [_serialised(ds) for ds in ct] == before
    assert len(out) == 4 and len({ds.SeriesInstanceUID for ds in out}) == 1
    for index, (source, fixed) in enumerate(zip(ct, out)):
        errors, _ = dciodvfy(fixed, tmp_path, f"fixed_ct_{index}")
        assert errors == []
        assert "ContrastBolusAgent" in source and "ContrastBolusAgent" not in fixed
        assert fixed.PixelData == source.PixelData
        assert list(fixed.ImageType) == list(source.ImageType)  # pixels are still the acquisition's
        assert fixed.SOPInstanceUID.startswith(UID_ROOT + ".") and fixed.SeriesInstanceUID != source.SeriesInstanceUID
        assert fixed.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert fixed.FrameOfReferenceUID == source.FrameOfReferenceUID
        assert fixed.SeriesDescription == "CHEST WITH CONTRAST [header corrected]"
        description = fixed.DerivationDescription
        assert "ContrastBolusAgent 'IODINE' -> removed" in description
        assert "enhancement 1.0.0" in description and "Non-Enhanced (p=0.910)" in description
        assert "disagreed" in description
        assert foreign_uids(fixed, ct) == set()


def test_view_header_fix_copy_with_companion_code(tmp_path: Path) -> None:
    dx = chest_dx(128, 128, seed=8, view="PA")
    result = Classification("chest-view", "1.0.0", "Lateral", {"PA": 0.04, "Lateral": 0.9, "Others": 0.06},
                            [str(dx.SOPInstanceUID)], header_value="PA", agrees_with_header=False)
    lateral = Dataset()
    lateral.CodeValue, lateral.CodingSchemeDesignator, lateral.CodeMeaning = "399173006", "SCT", "left lateral"
    (fixed,) = build_header_fix_copy([dx], result, uid_root=UID_ROOT, attribute_values={
        "ViewPosition": "LL", "ViewCodeSequence": DicomSequence([lateral]), "PatientOrientation": ["P", "F"]})
    errors, _ = dciodvfy(fixed, tmp_path, "fixed_dx")
    assert errors == []
    assert (fixed.ViewPosition, dx.ViewPosition) == ("LL", "PA")
    assert fixed.ViewCodeSequence[0].CodeValue == "399173006"
    assert "ViewPosition 'PA' -> 'LL'" in fixed.DerivationDescription
    assert fixed.PixelData == dx.PixelData


@pytest.mark.parametrize(("values", "message"), [
    ({"NotAKeyword": 1}, "not a DICOM attribute keyword"),
    ({"SOPInstanceUID": "1.2.3"}, "may not change SOPInstanceUID"),
    ({"PixelData": b""}, "may not change PixelData"),
    ({}, "nothing to correct"),
])
def test_header_fix_refuses_bad_attribute_values(values: dict, message: str) -> None:
    dx = chest_dx(64, 64, seed=9, marker=None)
    result = Classification("chest-view", "1.0.0", "PA", {"PA": 1.0}, [str(dx.SOPInstanceUID)])
    with pytest.raises(ValueError, match=message):
        build_header_fix_copy([dx], result, attribute_values=values, uid_root=UID_ROOT)
