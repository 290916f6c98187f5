"""DICOM SEG from a :class:`ai_models.results.Segmentation`.

One BINARY (or FRACTIONAL) Segmentation instance per result, one segment per
label, each with SNOMED CT coded category and type from :data:`SEGMENT_CODES`.
Frame ``i`` of the mask is placed on the source instance whose SOP Instance
UID is ``seg.source_sop_instance_uids[i]``, whatever order the sources come
in; highdicom then writes the per-frame Derivation Image references and,
for sources with a Frame of Reference, the plane positions copied from those
very instances.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from ai_models.results import Segmentation
from dicom_node.outputs.common import (
    MANUFACTURER,
    SOFTWARE_VERSION,
    acquisition_equipment,
    device_serial_number,
    new_uid,
    projection_spacing,
    seg_algorithm,
    sources_in_order,
    text,
    usable_spacing,
)

SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"
DEFAULT_SEG_SERIES_NUMBER = 900
# Not in pydicom's dictionary; SNOMED CT 41329004 "Polyp (morphologic abnormality)".
POLYP = Code("41329004", "SCT", "Polyp")


@dataclass(frozen=True)
class SegmentCodes:
    """How one label is coded in a SEG (CID 7150 category, CID 7151 type, optional anatomic region)."""

    category: Code
    type: Code
    anatomic_region: Code | None = None


_ORGAN = codes.SCT.AnatomicalStructure  # SCT 91723000
_ABNORMAL = codes.SCT.MorphologicallyAbnormalStructure  # SCT 49755003

# Label name (normalised: lower case, single spaces, "tumour" -> "tumor") -> codes.
SEGMENT_CODES: dict[str, SegmentCodes] = {
    "lung": SegmentCodes(_ORGAN, codes.SCT.Lung),  # SCT 39607008
    "kidney": SegmentCodes(_ORGAN, codes.SCT.Kidney),  # SCT 64033007
    "kidney tumor": SegmentCodes(_ABNORMAL, codes.SCT.Neoplasm, codes.SCT.Kidney),  # SCT 108369006 in kidney
    "liver": SegmentCodes(_ORGAN, codes.SCT.Liver),  # SCT 10200004
    "brain": SegmentCodes(_ORGAN, codes.SCT.Brain),  # SCT 12738006
    "polyp": SegmentCodes(_ABNORMAL, POLYP),
    "blood vessel": SegmentCodes(_ORGAN, codes.SCT.BloodVessel),  # SCT 59820001
}
_ALIASES = {"vessel": "blood vessel", "vessels": "blood vessel", "lungs": "lung", "kidneys": "kidney",
            "renal tumor": "kidney tumor"}


def normalise_label(name: str) -> str:
    key = re.sub(r"[\s_\-]+", " ", name.strip().lower()).replace("tumour", "tumor")
    return _ALIASES.get(key, key)


def segment_codes(name: str) -> SegmentCodes:
    """The codes for a label name; an unknown name is an error (a SEG segment needs real codes)."""
    key = normalise_label(name)
    if key not in SEGMENT_CODES:
        known = ", ".join(sorted(SEGMENT_CODES))
        raise ValueError(f"no SEG codes for label {name!r}; known labels: {known} (add it to SEGMENT_CODES)")
    return SEGMENT_CODES[key]


def _has_frame_of_reference(ds: Dataset) -> bool:
    return bool(ds.get("FrameOfReferenceUID")) and "ImagePositionPatient" in ds


def _check_sources(ordered: list[Dataset], seg: Segmentation) -> None:
    if len(set(seg.source_sop_instance_uids)) != len(seg.source_sop_instance_uids):
        raise ValueError("each mask frame must lie on its own single-frame source instance; multi-frame sources are not supported")
    for ds in ordered:
        if int(ds.get("NumberOfFrames", 1) or 1) != 1:
            raise ValueError(f"source {ds.SOPInstanceUID} is multi-frame; only single-frame sources are supported")
        if (int(ds.Rows), int(ds.Columns)) != seg.mask.shape[1:]:
            raise ValueError(
                f"mask frames are {seg.mask.shape[1:]} but source {ds.SOPInstanceUID} is {(int(ds.Rows), int(ds.Columns))}"
            )
    if len({str(ds.SeriesInstanceUID) for ds in ordered}) != 1:
        raise ValueError("all source instances of one SEG must belong to one series")
    if len(ordered) > 1 and not all(_has_frame_of_reference(ds) for ds in ordered):
        raise ValueError("several source images without a Frame of Reference cannot share one SEG; build one per image")


def _projection_pixel_measures(source: Dataset) -> hd.PixelMeasuresSequence | None:
    """Pixel measures for an image without a Frame of Reference (DX, CR, ...).

    highdicom copies only PixelSpacing, and its reader then rejects the SEG for
    lacking SliceThickness; a nominal 1 mm thickness (a projection has none)
    keeps it readable.  Without a usable PixelSpacing, ImagerPixelSpacing
    (spacing at the detector) is used: OHIF 3 cannot open a SEG without Pixel
    Measures, and the SEG overlays the same pixel grid as its source, so the
    detector spacing is what a viewer would use for the source image too.  A
    zero spacing (``0\\0``, as some CR writers send) means unknown: with no
    usable spacing the SEG has no Pixel Measures rather than false ones.
    """
    spacing = projection_spacing(source)
    if spacing.row_mm is None or spacing.column_mm is None:
        return None
    return hd.PixelMeasuresSequence(pixel_spacing=[spacing.row_mm, spacing.column_mm], slice_thickness=1.0)


def _drop_unusable_pixel_measures(result: hd.seg.Segmentation) -> None:
    """Remove Pixel Measures that highdicom copied from a zero source spacing (Type 1C without a Frame of Reference)."""
    shared = result.SharedFunctionalGroupsSequence[0]
    measures = shared.get("PixelMeasuresSequence")
    if measures and usable_spacing(measures[0].get("PixelSpacing")) is None:
        del shared.PixelMeasuresSequence


def _add_projection_orientation(result: hd.seg.Segmentation) -> None:
    """Identity Plane Orientation for a radiograph SEG.

    The SEG IOD does not require it without a Frame of Reference, but OHIF 3's
    labelmap builder reads it unconditionally (and assumes the identity for
    radiographs itself), so without it the SEG fails to open there.
    """
    shared = result.SharedFunctionalGroupsSequence[0]
    if "PlaneOrientationSequence" not in shared:
        item = Dataset()
        item.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        shared.PlaneOrientationSequence = [item]


def _segments(seg: Segmentation, algorithm: hd.AlgorithmIdentificationSequence, uid_root: str
              ) -> tuple[list[int], list[hd.seg.SegmentDescription]]:
    """Labels present in ``label_names`` (sorted) and their descriptions, numbered 1..N."""
    labels = sorted(label for label in seg.label_names if label != 0)
    if not labels:
        raise ValueError("the segmentation names no foreground labels")
    unnamed = sorted(set(np.unique(seg.mask).tolist()) - set(labels) - {0})
    if unnamed:
        raise ValueError(f"mask holds label value(s) {unnamed} that label_names does not name")
    descriptions = []
    for number, label in enumerate(labels, start=1):
        name = seg.label_names[label]
        coded = segment_codes(name)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=text(name, 64),
                segmented_property_category=coded.category,
                segmented_property_type=coded.type,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_uid=new_uid(uid_root),
                tracking_id=text(f"{seg.model} {name}", 64),
                anatomic_regions=[coded.anatomic_region] if coded.anatomic_region else None,
            )
        )
    return labels, descriptions


def _reroot_dimension_organization(result: hd.seg.Segmentation, uid_root: str) -> None:
    """highdicom draws the Dimension Organization UID from its own root; put it under ours."""
    uid = new_uid(uid_root)
    for item in result.get("DimensionOrganizationSequence", []):
        item.DimensionOrganizationUID = uid
    for item in result.get("DimensionIndexSequence", []):
        if "DimensionOrganizationUID" in item:
            item.DimensionOrganizationUID = uid


def build_seg(
    sources: list[Dataset],
    seg: Segmentation,
    *,
    uid_root: str,
    algorithm_name: str | None = None,
    algorithm_version: str | None = None,
    algorithm_family: Code | hd.sr.CodedConcept = codes.DCM.ArtificialIntelligence,
    omit_empty_frames: bool = False,
    fractional: np.ndarray | None = None,
    series_number: int = DEFAULT_SEG_SERIES_NUMBER,
    series_description: str | None = None,
    instance_number: int = 1,
) -> hd.seg.Segmentation:
    """A DICOM SEG of ``seg`` on ``sources`` (any order; the source instances it names must be there).

    ``omit_empty_frames`` is False by default: a frame is written for every
    source image and segment, even when empty, because SEGs with omitted empty
    frames have shown up as shifted overlays in OHIF.  With ``fractional`` (a
    float array of shape (frames, rows, cols, segments) in [0, 1], segments in
    the order of sorted label values) the SEG is FRACTIONAL/PROBABILITY
    instead of BINARY.
    """
    ordered = sources_in_order(sources, seg.source_sop_instance_uids, "the segmentation")
    _check_sources(ordered, seg)
    algorithm = seg_algorithm(algorithm_name or seg.model, algorithm_version or seg.model_version, algorithm_family)
    labels, descriptions = _segments(seg, algorithm, uid_root)

    if fractional is None:
        pixels = np.stack([seg.mask == label for label in labels], axis=-1).astype(np.uint8)
        segmentation_type = hd.seg.SegmentationTypeValues.BINARY
    else:
        if fractional.shape != (*seg.mask.shape, len(labels)):
            raise ValueError(f"fractional must have shape {(*seg.mask.shape, len(labels))}, got {fractional.shape}")
        if not np.all((fractional >= 0) & (fractional <= 1)):
            raise ValueError("fractional values must lie in [0, 1]")
        pixels = fractional.astype(np.float32)
        segmentation_type = hd.seg.SegmentationTypeValues.FRACTIONAL

    first = ordered[0]
    projection = not _has_frame_of_reference(first)
    equipment = acquisition_equipment(first)
    result = hd.seg.Segmentation(
        source_images=ordered,
        pixel_array=pixels,
        segmentation_type=segmentation_type,
        segment_descriptions=descriptions,
        series_instance_uid=new_uid(uid_root),
        series_number=series_number,
        sop_instance_uid=new_uid(uid_root),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=text(seg.model, 64),
        software_versions=SOFTWARE_VERSION,
        device_serial_number=device_serial_number(),
        content_description=text(f"{seg.model} {seg.model_version} segmentation", 64),
        content_label=re.sub(r"[^A-Z0-9_ ]", "_", seg.model.upper())[:16] or "SEGMENTATION",
        pixel_measures=_projection_pixel_measures(first) if projection else None,
        omit_empty_frames=omit_empty_frames,
        contributing_equipment=[equipment] if equipment else None,
        series_description=text(series_description or f"{seg.model} SEG", 64),
    )
    if projection and "PatientOrientation" in first:
        # dciodvfy requires it (General Image, Type 2C) for images without a Frame of Reference.
        result.PatientOrientation = first.PatientOrientation
    if projection:
        _drop_unusable_pixel_measures(result)
        _add_projection_orientation(result)
    _reroot_dimension_organization(result, uid_root)
    return result
