"""What a job builds from a model result: consistent corrected copies, boxes tied to their instances, errors with context."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from ai_models.results import Box, Classification, Detection
from dicom_node.jobs.outputs import OutputError, RunContext, build_outputs
from dicom_node.jobs.results import JobResult, summarize
from dicom_node.ops.synthetic import chest_ct_series, chest_dx
from dicom_node.outputs import CONTRAST_BOLUS_MODULE
from tests.outputs.dicom_checks import UID_ROOT, new_warnings
from tests.outputs.radiographs import floats, rg1

CONTEXT = RunContext(UID_ROOT, "rule", "1.0.0", 1, False)


def _contrast_ct() -> list[pydicom.Dataset]:
    """A contrast CT whose header records the whole Contrast/Bolus module, as injector-linked scanners write it."""
    ct = chest_ct_series(3, 64, contrast=True, seed=4)
    for ds in ct:
        ds.ContrastBolusRoute = "IV"
        ds.ContrastBolusVolume = 80
        ds.ContrastBolusStartTime = "101010"
        ds.ContrastBolusStopTime = "101040"
        ds.ContrastBolusTotalDose = 28
        ds.ContrastFlowRate = [3.0]
        ds.ContrastFlowDuration = [27]
        ds.ContrastBolusIngredient = "IODINE"
        ds.ContrastBolusIngredientConcentration = 350
    return ct


def test_a_non_enhanced_finding_removes_the_whole_contrast_bolus_module(tmp_path: Path) -> None:
    ct = _contrast_ct()
    finding = Classification("enhancement-hu", "1.0.0", "non-enhanced", {"non-enhanced": 0.95, "enhanced": 0.05},
                             [str(ds.SOPInstanceUID) for ds in ct], header_value="IODINE", agrees_with_header=False)
    copies = build_outputs(ct, [finding], {"outputs": ["corrected-copy"]}, CONTEXT)

    assert len(copies) == len(ct)
    for index, (source, fixed) in enumerate(zip(ct, copies)):
        assert [k for k in CONTRAST_BOLUS_MODULE if k in fixed] == []  # nothing left that claims contrast
        errors, added = new_warnings(fixed, source, tmp_path, f"fixed_{index}")
        assert errors == [] and added == []
        assert "ContrastBolusRoute 'IV' -> removed" in fixed.DerivationDescription
        assert "ContrastBolusAgentSequence" not in fixed.DerivationDescription  # absent in the source: no change to tell


def test_an_agent_alone_is_removed_without_describing_absent_attributes() -> None:
    ct = chest_ct_series(2, 64, contrast=True, seed=5)
    finding = Classification("enhancement-hu", "1.0.0", "non-enhanced", {"non-enhanced": 0.95, "enhanced": 0.05},
                             [str(ds.SOPInstanceUID) for ds in ct], header_value="IODINE", agrees_with_header=False)
    (first, _) = build_outputs(ct, [finding], {"outputs": ["corrected-copy"]}, CONTEXT)
    assert "ContrastBolusAgent" not in first
    assert "ContrastBolusAgent 'IODINE' -> removed. Model" in first.DerivationDescription


def _two_image_detection() -> tuple[list[pydicom.Dataset], Detection]:
    images = [chest_dx(256, 256, seed=s, marker="R") for s in (1, 2)]
    second = images[1]
    box = Box(*floats(second.synthetic_marker_box), "right", 0.9, str(second.SOPInstanceUID))
    return images, Detection("lr-mark-classic", "1.0.0", [box], [str(ds.SOPInstanceUID) for ds in images])


def test_the_job_result_names_each_boxs_instance() -> None:
    images, detection = _two_image_detection()
    stored = JobResult(summarize([detection]), (), "lr-mark-classic", "1.0.0").to_json()
    (summary,) = stored["results"]
    assert [b["sop_instance_uid"] for b in summary["boxes"]] == [str(images[1].SOPInstanceUID)]
    assert summary["source_sop_instance_uids"] == [str(ds.SOPInstanceUID) for ds in images]
    assert JobResult.from_json(stored).results == summarize([detection])


def test_a_single_image_box_without_a_uid_gets_the_images() -> None:
    dx = chest_dx(128, 128, seed=3)
    detection = Detection("lr-mark", "1.0.0", [Box(1, 2, 30, 40, "left", 0.8)], [str(dx.SOPInstanceUID)])
    (summary,) = JobResult(summarize([detection])).to_json()["results"]
    assert summary["boxes"][0]["sop_instance_uid"] == str(dx.SOPInstanceUID)


def test_the_sr_and_erased_image_follow_the_boxs_instance() -> None:
    images, detection = _two_image_detection()
    out = build_outputs(images, [detection], {"outputs": ["sr", "erased"]}, CONTEXT)
    (sr,) = [ds for ds in out if ds.Modality == "SR"]
    (erased,) = [ds for ds in out if ds.Modality == "DX"]
    assert erased.SourceImageSequence[0].ReferencedSOPInstanceUID == images[1].SOPInstanceUID

    def region_refs(item: pydicom.Dataset) -> list[str]:
        found = [str(r.ReferencedSOPInstanceUID) for r in item.get("ReferencedSOPSequence", []) if item.ValueType == "IMAGE"]
        return found + [uid for child in item.get("ContentSequence", []) for uid in region_refs(child)]

    (roi,) = [g for g in sr.ContentSequence[-1].ContentSequence if any(i.ValueType == "SCOORD" for i in g.ContentSequence)]
    assert region_refs(roi) == [str(images[1].SOPInstanceUID)]


def test_a_box_naming_no_instance_among_several_is_not_erased_everywhere() -> None:
    images, detection = _two_image_detection()
    detection.boxes = [Box(10, 10, 40, 40, "left", 0.9)]  # which image? the builder must not guess
    with pytest.raises(OutputError, match=r"outputs/erased for .*: ValueError: box .* names no SOP instance"):
        build_outputs(images, [detection], {"outputs": ["erased"]}, CONTEXT)


def test_an_output_error_names_step_source_and_missing_attribute_without_values() -> None:
    source = rg1()
    del source.Columns
    uid = str(source.SOPInstanceUID)
    detection = Detection("lr-mark-classic", "1.0.0", [Box(10, 10, 40, 40, "right", 0.9, uid)], [uid])
    with pytest.raises(OutputError) as caught:
        build_outputs([source], [detection], {"outputs": ["sr"]}, CONTEXT)
    assert str(caught.value) == f"outputs/sr for {uid}: Columns absent"
    assert "RG1" not in str(caught.value)  # the patient's name is CompressedSamples^RG1


def test_a_missing_spacing_is_told_with_the_state_of_the_other() -> None:
    from dicom_node.jobs.outputs import _cause

    source = rg1()
    message = _cause(AttributeError("'FileDataset' object has no attribute 'ImagerPixelSpacing'"), source)
    assert message == "ImagerPixelSpacing absent and PixelSpacing zero"
    assert np.all(np.asarray(source.PixelSpacing, dtype=float) == 0)
