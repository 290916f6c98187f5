"""Outputs on radiographs as modalities write them: the real RG1 CR, and CRs with optional spacing absent or present.

RG1 has ``PixelSpacing = 0\\0`` and no Imager Pixel Spacing (both Type 3 in
the CR IOD): the SR used to fail in highdicom's image library, the SEG got
Pixel Measures [0, 0] and the area 0 mm2 (issue 17, items 1 and 2).
"""
from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from ai_models.results import Box, Detection, Segmentation
from dicom_node.jobs.outputs import RunContext, build_outputs
from dicom_node.outputs import build_seg, build_sr
from tests.outputs.dicom_checks import UID_ROOT, foreign_uids, new_warnings
from tests.outputs.radiographs import SPACING_VARIANTS, floats, rg1, synthetic_cr, with_marker

CONTEXT = RunContext(UID_ROOT, "cr-lr-marker", "1.0.0", 1, False)


def _sources() -> list[tuple[str, pydicom.Dataset, tuple[int, int, int, int]]]:
    marked, box = with_marker(rg1())
    crs = [(label, synthetic_cr(ps, ips)) for label, ps, ips in SPACING_VARIANTS]
    return [("rg1", marked, box), *[(label, ds, ds.synthetic_marker_box) for label, ds in crs]]


SOURCES = _sources()


@pytest.mark.parametrize(("label", "source", "box"), SOURCES, ids=[s[0] for s in SOURCES])
def test_sr_and_erased_image_for_every_radiograph(tmp_path: Path, label: str, source: pydicom.Dataset,
                                                  box: tuple[int, int, int, int]) -> None:
    uid = str(source.SOPInstanceUID)
    detection = Detection("lr-mark-classic", "1.0.0", [Box(*floats(box), "right", 0.97, uid)], [uid])
    out = build_outputs([source], [detection], {"outputs": ["sr", "erased"]}, CONTEXT)

    assert sorted(str(ds.Modality) for ds in out) == ["CR", "SR"]
    for ds in out:
        errors, added = new_warnings(ds, source, tmp_path, f"{label}_{ds.Modality}")
        assert errors == [] and added == [], ds.Modality
        assert foreign_uids(ds, [source]) == set()
    sr = hd.sr.srread(tmp_path / f"{label}_SR.dcm")
    (group,) = sr.content.get_planar_roi_measurement_groups()
    assert group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == uid
    erased = pydicom.dcmread(tmp_path / f"{label}_CR.dcm")
    assert erased.SourceImageSequence[0].ReferencedSOPInstanceUID == uid
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = source.get(keyword)
        if value is not None and all(float(v) > 0 for v in value):
            assert erased[keyword].value == value, keyword  # a real spacing is kept
        else:
            assert keyword not in erased, keyword  # a zero one means unknown: not copied


def _stated_spacing(group) -> str:  # type: ignore[no-untyped-def]
    (item,) = [i for i in group[0].ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == codes.DCM.CalibrationMethod.value]
    return str(item.TextValue)


# label -> (area per pixel in mm2 or None for pixels, what the report says it used)
EXPECTED_SPACING = {
    "rg1": (None, "no usable pixel spacing"),
    "no-spacing": (None, "no usable pixel spacing"),
    "imager-only": (0.15 * 0.15, "Imager Pixel Spacing (0018,1164): spacing at the detector plane"),
    "pixel-only": (0.14 * 0.14, "Pixel Spacing (0028,0030)"),
    "both": (0.14 * 0.14, "Pixel Spacing (0028,0030)"),
    "pixel-zero-imager": (0.15 * 0.15, "Imager Pixel Spacing (0018,1164): spacing at the detector plane"),
}


@pytest.mark.parametrize(("label", "source", "box"), SOURCES, ids=[s[0] for s in SOURCES])
@pytest.mark.parametrize("with_seg", [True, False], ids=["seg", "no-seg"])
def test_area_says_which_spacing_it_used(tmp_path: Path, label: str, source: pydicom.Dataset,
                                         box: tuple[int, int, int, int], with_seg: bool) -> None:
    mask = np.zeros((1, int(source.Rows), int(source.Columns)), dtype=np.uint8)
    mask[0, 40:200, 30:110] = 1
    # The lung model copies the header's spacing, a zero one included.
    spacing = source.get("PixelSpacing") or source.get("ImagerPixelSpacing")
    result = Segmentation("lung", "1.0.0", mask, {1: "lung"}, [str(source.SOPInstanceUID)],
                          spacing_mm=(1.0, float(spacing[0]), float(spacing[1])) if spacing else None)
    seg = build_seg([source], result, uid_root=UID_ROOT) if with_seg else None
    errors, added = new_warnings(build_sr([source], result, uid_root=UID_ROOT, seg=seg), source, tmp_path, "area")
    assert errors == [] and added == []
    back = hd.sr.srread(tmp_path / "area.dcm")
    (group,) = back.content.get_planar_roi_measurement_groups() if with_seg else back.content.get_image_measurement_groups()
    (area,) = group.get_measurements()
    per_pixel, stated = EXPECTED_SPACING[label]
    assert area.name == codes.SCT.Area
    if per_pixel is None:
        assert area.unit.value == "{pixels}" and area.value == pytest.approx(160 * 80)
    else:
        assert area.unit.value == "mm2" and area.value == pytest.approx(160 * 80 * per_pixel)
    assert _stated_spacing(group).startswith(stated)
    if "Imager" in stated:
        assert "magnification" in _stated_spacing(group)


@pytest.mark.parametrize(("label", "source", "box"), [s for s in SOURCES if s[0] in ("rg1", "pixel-zero-imager")],
                         ids=["rg1", "pixel-zero-imager"])
def test_seg_on_a_zero_spacing_source_has_no_zero_pixel_measures(tmp_path: Path, label: str, source: pydicom.Dataset,
                                                                 box: tuple[int, int, int, int]) -> None:
    mask = np.zeros((1, int(source.Rows), int(source.Columns)), dtype=np.uint8)
    mask[0, 40:200, 30:110] = 1
    seg = build_seg([source], Segmentation("lung", "1.0.0", mask, {1: "lung"}, [str(source.SOPInstanceUID)]),
                    uid_root=UID_ROOT)
    errors, added = new_warnings(seg, source, tmp_path, f"seg_{label}")
    assert errors == [] and added == []
    measures = pydicom.dcmread(tmp_path / f"seg_{label}.dcm").SharedFunctionalGroupsSequence[0].get("PixelMeasuresSequence")
    if label == "rg1":
        assert measures is None  # no spacing known: none claimed
    else:
        assert [float(v) for v in measures[0].PixelSpacing] == [0.15, 0.15]  # the detector's, not the zero one
    back = hd.seg.segread(tmp_path / f"seg_{label}.dcm")
    np.testing.assert_array_equal(back.get_pixels_by_source_instance([str(source.SOPInstanceUID)])[0, :, :, 0], mask[0] > 0)
