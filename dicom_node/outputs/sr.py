"""DICOM SR (TID 1500 Measurement Report) for classifications, detections and segmentations.

Every report is a Comprehensive SR (the SR class OHIF was checked with, see
VIEWER_CHECK.md; nothing here needs 3D coordinates) whose observer is the
model as a device.  One measurement group per finding:

* header checks (contrast enhancement, chest view): an image-level group
  (TID 1501) with the model's answer as a coded qualitative evaluation, its
  probability as a numeric measurement (UCUM "1"), whether the header agrees,
  and the header value itself as a coded-question/text-answer item;
* L/R marker boxes: a planar ROI group (TID 1410) per box, a closed
  rectangle POLYLINE on the source image, laterality left/right and score;
  an image examined without a box gets a group saying the marker is absent;
* segmentations: a group per segment with its volume in ml (TID 1411,
  referencing the SEG segment) or, on a single projection image, its area in
  mm2 (TID 1410, referencing the SEG frame); without a SEG, an image-level
  group referencing the source images.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from ai_models.results import Box, Classification, Detection, Result, Segmentation
from dicom_node.outputs.common import (
    HEADER_AGREEMENT,
    HEADER_VALUE,
    LOCAL_SCHEME,
    LOCAL_SCHEME_NAME,
    MANUFACTURER,
    OTHER_VIEW,
    SOFTWARE_VERSION,
    UNIT_ML,
    UNIT_MM2,
    UNIT_ONE,
    UNIT_PIXELS,
    PlanarSpacing,
    box_source_uid,
    device_observer,
    device_serial_number,
    new_uid,
    projection_spacing,
    sources_in_order,
    sr_algorithm,
    text,
    usable_spacing,
)
from dicom_node.outputs.seg import SEG_SOP_CLASS_UID, segment_codes

DEFAULT_SR_SERIES_NUMBER = 901
# The measurement groups (TID 1501, 1410, 1411) a report is made of
_MeasurementGroup = (
    hd.sr.MeasurementsAndQualitativeEvaluations
    | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
)
OPAQUE_MARKER = codes.SCT.OpaqueMarker  # SCT 262301009: a lead L/R marker is a radiopaque marker
LATERALITY = {"left": codes.SCT.Left, "right": codes.SCT.Right}
# Modalities highdicom describes with TID 1603 (projection radiography) in an Image Library.
_PROJECTION_MODALITIES = frozenset({"CR", "DX", "IO", "MG", "PX", "RF", "RG", "XA"})

# Procedure Reported (CID 100) by source modality.
_PROCEDURES = {
    "CT": codes.LN.CTUnspecifiedBodyRegion,
    "MR": codes.LN.MRIUnspecifiedBodyRegion,
    "DX": codes.LN.XRUnspecifiedBodyRegion,
    "CR": codes.LN.XRUnspecifiedBodyRegion,
}


@dataclass(frozen=True)
class HeaderCheck:
    """A classification that checks one header attribute: how its answers are coded."""

    key: str
    attribute: str
    question: Code
    answers: dict[str, Code]


HEADER_CHECKS: tuple[HeaderCheck, ...] = (
    HeaderCheck("contrast", "ContrastBolusAgent", codes.DCM.ContrastAdministered,
                {"enhanced": codes.SCT.Yes, "non enhanced": codes.SCT.No}),
    HeaderCheck("view", "ViewPosition", codes.DCM.ImageView,
                {"pa": codes.SCT.PosteroAnterior, "lateral": codes.SCT.Lateral, "others": OTHER_VIEW}),
)


def _label_key(label: str) -> str:
    return re.sub(r"[\s_\-]+", " ", label.strip().lower())


def header_check_for(result: Classification, question: str | None = None) -> HeaderCheck:
    """The header check a classification answers: named by ``question`` or recognised from its labels."""
    if question is not None:
        for check in HEADER_CHECKS:
            if check.key == question:
                return check
        raise ValueError(f"unknown question {question!r}; known: {', '.join(c.key for c in HEADER_CHECKS)}")
    labels = {_label_key(label) for label in result.probabilities}
    for check in HEADER_CHECKS:
        if labels <= set(check.answers):
            return check
    raise ValueError(f"cannot tell what classification labels {sorted(result.probabilities)} answer; pass question=")


def _procedure(source: Dataset) -> Code:
    return _PROCEDURES.get(str(source.get("Modality", "")), codes.SCT.ImagingProcedure)


def _group_source_images(datasets: Sequence[Dataset]) -> list[hd.sr.SourceImageForMeasurementGroup]:
    return [hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in datasets]


def _projection_descriptors(ds: Dataset) -> list[hd.sr.ContentItem]:
    """TID 1603 descriptors the image really has: Patient Orientation and the detector pixel spacing.

    All rows of TID 1603 are optional.  "Horizontal/Vertical Pixel Spacing"
    (DCM 111026/111066) are defined at the front plane of the image receptor,
    which is what Imager Pixel Spacing is; they are left out when the source
    has none (or a zero one), rather than failing the report as highdicom does.
    """
    context = hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT
    items: list[hd.sr.ContentItem] = []
    orientation = [str(v) for v in (ds.get("PatientOrientation") or [])]
    if len(orientation) == 2 and all(orientation):
        items += [hd.sr.TextContentItem(codes.DCM.PatientOrientationRow, orientation[0], relationship_type=context),
                  hd.sr.TextContentItem(codes.DCM.PatientOrientationColumn, orientation[1], relationship_type=context)]
    detector = usable_spacing(ds.get("ImagerPixelSpacing"))
    if detector is not None:
        items += [hd.sr.NumContentItem(codes.DCM.HorizontalPixelSpacing, detector[1], codes.UCUM.Millimeter,
                                       relationship_type=context),
                  hd.sr.NumContentItem(codes.DCM.VerticalPixelSpacing, detector[0], codes.UCUM.Millimeter,
                                       relationship_type=context)]
    return items


def _library_descriptors(ds: Dataset) -> hd.sr.ImageLibraryEntryDescriptors:
    """highdicom's descriptors, except for projection images, whose TID 1603 part is :func:`_projection_descriptors`."""
    if str(ds.get("Modality", "")) not in _PROJECTION_MODALITIES:
        return hd.sr.ImageLibraryEntryDescriptors(ds)
    view = Dataset()  # what TID 1602 reads, with a Modality highdicom adds nothing for
    for keyword in ("SOPClassUID", "SOPInstanceUID", "FrameOfReferenceUID", "Rows", "Columns"):
        if keyword in ds:
            setattr(view, keyword, ds[keyword].value)
    view.Modality = ""
    return hd.sr.ImageLibraryEntryDescriptors(view, additional_descriptors=_projection_descriptors(ds))


def _image_library(datasets: Sequence[Dataset]) -> hd.sr.ContainerContentItem:
    """TID 1600 Image Library: one group per Frame of Reference (or none), as highdicom groups them."""
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    groups: dict[str, list[hd.sr.ImageContentItem]] = {}
    for ds in datasets:
        entry = hd.sr.ImageContentItem(codes.SCT.Source, str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                                       relationship_type=contains)
        entry.ContentSequence = hd.sr.ContentSequence(_library_descriptors(ds))
        groups.setdefault(str(ds.get("FrameOfReferenceUID", "")), []).append(entry)
    library = hd.sr.ContainerContentItem(codes.DCM.ImageLibrary, relationship_type=contains)
    library.ContentSequence = hd.sr.ContentSequence()
    for frame_of_reference, entries in groups.items():
        group = hd.sr.ContainerContentItem(codes.DCM.ImageLibraryGroup, relationship_type=contains)
        group.ContentSequence = hd.sr.ContentSequence()
        if frame_of_reference:
            group.ContentSequence.append(hd.sr.UIDRefContentItem(
                codes.DCM.FrameOfReferenceUID, frame_of_reference,
                relationship_type=hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT))
        group.ContentSequence.extend(entries)
        library.ContentSequence.append(group)
    return library


def _report(sources: Sequence[Dataset], model: str, version: str, uid_root: str,
            groups: Sequence[_MeasurementGroup], referenced: Sequence[Dataset]) -> hd.sr.MeasurementReport:
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device_observer(uid_root, model, version)),
        procedure_reported=_procedure(sources[0]),
        imaging_measurements=groups,
    )
    if referenced:
        content = report[0].ContentSequence
        measurements = next(i for i, item in enumerate(content)
                            if item.ConceptNameCodeSequence[0].CodeValue == codes.DCM.ImagingMeasurements.value)
        content.insert(measurements, _image_library(referenced))  # TID 1500: the library precedes the measurements
    return report


def _document(evidence: Sequence[Dataset], report: hd.sr.MeasurementReport, *, model: str, uid_root: str,
              series_number: int, series_description: str, instance_number: int) -> hd.sr.ComprehensiveSR:
    sr = hd.sr.ComprehensiveSR(
        evidence=list(evidence),
        content=report,
        series_instance_uid=new_uid(uid_root),
        series_number=series_number,
        sop_instance_uid=new_uid(uid_root),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=text(series_description, 64),
    )
    sr.ManufacturerModelName = text(model, 64)
    sr.SoftwareVersions = SOFTWARE_VERSION
    sr.DeviceSerialNumber = device_serial_number()
    if _uses_local_codes(sr):
        scheme = Dataset()
        scheme.CodingSchemeDesignator = LOCAL_SCHEME
        scheme.CodingSchemeName = LOCAL_SCHEME_NAME
        scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
        sr.CodingSchemeIdentificationSequence = [scheme]  # pydicom stores it as a Sequence
    return sr


def _uses_local_codes(ds: Dataset) -> bool:
    """Does any code in the content tree come from the local scheme (which must then be identified)?"""
    for item in ds.get("ContentSequence", []):
        for key in ("ConceptNameCodeSequence", "ConceptCodeSequence"):
            if any(code.CodingSchemeDesignator == LOCAL_SCHEME for code in item.get(key, [])):
                return True
        if _uses_local_codes(item):
            return True
    return False


def _agreement_code(agrees: bool | None) -> Code:
    if agrees is None:
        return codes.SCT.Undetermined
    return codes.SCT.Yes if agrees else codes.SCT.No


def _header_value_text(check: HeaderCheck, value: str | None) -> str:
    return text(f"{check.attribute}={value}" if value else f"{check.attribute} absent or empty", 1024)


def build_classification_sr(
    sources: list[Dataset],
    result: Classification,
    *,
    uid_root: str,
    question: str | None = None,
    series_number: int = DEFAULT_SR_SERIES_NUMBER,
    series_description: str | None = None,
    instance_number: int = 1,
) -> hd.sr.ComprehensiveSR:
    """SR of a header-check classification (contrast enhancement or chest view).

    The Probability measurement is the model's probability of the answer it
    gives (``result.confidence``).  The images referenced are those the model
    used (``evidence`` marked used) or, without evidence, all its sources.
    """
    check = header_check_for(result, question)
    answer = check.answers.get(_label_key(result.label))
    if answer is None:
        raise ValueError(f"label {result.label!r} is not an answer of the {check.key} check")
    used = [e.sop_instance_uid for e in result.evidence if e.used] or list(result.source_sop_instance_uids)
    referenced = sources_in_order(sources, used, "the classification")
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=new_uid(uid_root), identifier=f"{result.model} {check.key}"),
        algorithm_id=sr_algorithm(result.model, result.model_version),
        measurements=[hd.sr.Measurement(name=codes.DCM.Probability, value=result.confidence, unit=UNIT_ONE)],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(check.question, answer),
            hd.sr.QualitativeEvaluation(HEADER_AGREEMENT, _agreement_code(result.agrees_with_header)),
        ],
        source_images=_group_source_images(referenced),
    )
    # TID 1501 allows coded questions with text answers; highdicom builds only coded ones.
    group[0].ContentSequence.append(
        hd.sr.TextContentItem(HEADER_VALUE, _header_value_text(check, result.header_value),
                              relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    )
    report = _report(sources, result.model, result.model_version, uid_root, [group], referenced)
    return _document(sources_in_order(sources, result.source_sop_instance_uids, "the classification"), report,
                     model=result.model, uid_root=uid_root, series_number=series_number,
                     series_description=series_description or f"{result.model} {check.key} SR",
                     instance_number=instance_number)


def _rectangle(box: Box, source: Dataset) -> np.ndarray:
    """The box as a closed 5-point POLYLINE in image coordinates, clipped to the image."""
    cols, rows = float(source.Columns), float(source.Rows)
    x0, x1 = sorted((min(max(box.x0, 0.0), cols), min(max(box.x1, 0.0), cols)))
    y0, y1 = sorted((min(max(box.y0, 0.0), rows), min(max(box.y1, 0.0), rows)))
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {box} has no area inside the {int(cols)}x{int(rows)} image")
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)


def build_detection_sr(
    sources: list[Dataset],
    result: Detection,
    *,
    uid_root: str,
    series_number: int = DEFAULT_SR_SERIES_NUMBER,
    series_description: str | None = None,
    instance_number: int = 1,
) -> hd.sr.ComprehensiveSR:
    """SR of L/R marker boxes: one planar ROI group per box, an "absent" group per image without one."""
    examined = sources_in_order(sources, result.source_sop_instance_uids, "the detection")
    groups: list[_MeasurementGroup] = []
    for number, box in enumerate(result.boxes, start=1):
        label = box.label.strip().lower()
        if label not in LATERALITY:
            raise ValueError(f"box label {box.label!r} is not one of {sorted(LATERALITY)}")
        (source,) = sources_in_order(sources, [box_source_uid(box, result)], "a box")
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=_rectangle(box, source),
            source_image=hd.sr.SourceImageForRegion(str(source.SOPClassUID), str(source.SOPInstanceUID)),
        )
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=new_uid(uid_root), identifier=f"{label} marker {number}"),
                referenced_region=region,
                finding_type=OPAQUE_MARKER,
                algorithm_id=sr_algorithm(result.model, result.model_version),
                measurements=[hd.sr.Measurement(name=codes.DCM.Probability, value=float(box.score), unit=UNIT_ONE)],
                qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.SCT.Laterality, LATERALITY[label])],
            )
        )
    with_boxes = {box_source_uid(box, result) for box in result.boxes}
    for source in examined:
        if str(source.SOPInstanceUID) not in with_boxes:
            groups.append(_no_marker_group(source, result, uid_root))
    report = _report(sources, result.model, result.model_version, uid_root, groups, examined)
    return _document(examined, report, model=result.model, uid_root=uid_root, series_number=series_number,
                     series_description=series_description or f"{result.model} SR", instance_number=instance_number)


def _no_marker_group(source: Dataset, result: Detection, uid_root: str) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """An examined image without a box says so explicitly: marker presence = absent."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=new_uid(uid_root), identifier="no L/R marker found"),
        finding_type=OPAQUE_MARKER,
        algorithm_id=sr_algorithm(result.model, result.model_version),
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.DCM.PresenceOfProperty, codes.SCT.Absent)],
        source_images=_group_source_images([source]),
    )


def _slice_spacing(datasets: Sequence[Dataset]) -> float | None:
    """Median distance between adjacent slice planes along the slice normal."""
    try:
        orientation = np.array([float(v) for v in datasets[0].ImageOrientationPatient])
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    except AttributeError:
        return None
    normal = np.cross(orientation[:3], orientation[3:])
    gaps = np.diff(np.sort(positions @ normal))
    return float(np.median(gaps)) if gaps.size else None


def _volume_pixel_spacing(result: Segmentation, source: Dataset) -> tuple[float, float] | None:
    if result.spacing_mm is not None:
        return usable_spacing(result.spacing_mm[1:])
    return usable_spacing(source.get("PixelSpacing"))


def _measurement(result: Segmentation, label: int, name: str, ordered: Sequence[Dataset]
                 ) -> tuple[hd.sr.Measurement, PlanarSpacing | None]:
    """Volume (ml) of a 3D segment, or area of a segment on a single image with the spacing it was measured with.

    An area uses the source's own spacing (:func:`projection_spacing`), since
    the report must say which attribute it came from: mm2 when one is usable,
    pixels otherwise.  A model's ``spacing_mm`` was read from the same header.
    """
    if name in result.volumes_ml:
        return hd.sr.Measurement(name=codes.SCT.Volume, value=float(result.volumes_ml[name]), unit=UNIT_ML), None
    count = int(np.count_nonzero(result.mask == label))
    if len(ordered) == 1:
        planar = projection_spacing(ordered[0])
        if planar.row_mm is None or planar.column_mm is None:
            return hd.sr.Measurement(name=codes.SCT.Area, value=float(count), unit=UNIT_PIXELS), planar
        return hd.sr.Measurement(name=codes.SCT.Area, value=count * planar.row_mm * planar.column_mm, unit=UNIT_MM2), planar
    spacing = _volume_pixel_spacing(result, ordered[0])
    if spacing is None:
        raise ValueError(f"no usable pixel spacing (absent or zero): cannot measure the volume of segment {name!r}")
    depth = float(result.spacing_mm[0]) if result.spacing_mm is not None else _slice_spacing(ordered)
    if not depth:
        raise ValueError(f"no slice spacing: cannot measure the volume of segment {name!r}")
    return hd.sr.Measurement(name=codes.SCT.Volume, value=count * spacing[0] * spacing[1] * depth / 1000.0,
                             unit=UNIT_ML), None


def _state_spacing(group: _MeasurementGroup, spacing: PlanarSpacing | None) -> None:
    """Say in the group which spacing its area was measured with (DCM 122422 "Calibration Method", TEXT).

    TID 1410/1501 have no row for it and highdicom builds none, so the item
    is appended after highdicom has built the group, like the header value.
    """
    if spacing is not None:
        group[0].ContentSequence.append(hd.sr.TextContentItem(
            codes.DCM.CalibrationMethod, text(spacing.describe(), 1024),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))


def _segment_number(seg: hd.seg.Segmentation, name: str) -> int:
    numbers = seg.get_segment_numbers(segment_label=name[:64])
    if len(numbers) != 1:
        raise ValueError(f"the SEG has {len(numbers)} segments labelled {name!r}, expected exactly one")
    return numbers[0]


def _segment_frames(seg: hd.seg.Segmentation, segment_number: int) -> list[int]:
    """SEG frame numbers of one segment (highdicom moves the identification to the shared group when it can)."""
    shared = seg.SharedFunctionalGroupsSequence[0].get("SegmentIdentificationSequence")
    frames = []
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        identification = item.get("SegmentIdentificationSequence") or shared
        if int(identification[0].ReferencedSegmentNumber) == segment_number:
            frames.append(index)
    return frames


def _drop_segment_number_beside_frames(item: Dataset) -> None:
    """A SEG reference names frames or a segment, not both (SOP Instance Reference macro, Type 1C).

    highdicom writes both for a referenced segmentation frame; dciodvfy rejects
    that, and the frame alone already implies its segment.
    """
    for child in item.get("ContentSequence", []):
        for reference in child.get("ReferencedSOPSequence", []):
            if "ReferencedFrameNumber" in reference and "ReferencedSegmentNumber" in reference:
                del reference.ReferencedSegmentNumber
        _drop_segment_number_beside_frames(child)


class _SegmentGroupFields(TypedDict):
    """What a segment's measurement group says whichever template (TID 1501, 1410, 1411) carries it."""

    tracking_identifier: hd.sr.TrackingIdentifier
    finding_type: Code
    finding_category: Code
    algorithm_id: hd.sr.AlgorithmIdentification
    measurements: list[hd.sr.Measurement]


def build_segmentation_sr(
    sources: list[Dataset],
    result: Segmentation,
    *,
    uid_root: str,
    seg: hd.seg.Segmentation | None = None,
    series_number: int = DEFAULT_SR_SERIES_NUMBER,
    series_description: str | None = None,
    instance_number: int = 1,
) -> hd.sr.ComprehensiveSR:
    """SR of segment volumes (or areas on a projection image), referencing ``seg`` when given."""
    ordered = sources_in_order(sources, result.source_sop_instance_uids, "the segmentation")
    if seg is not None and str(seg.SOPClassUID) != SEG_SOP_CLASS_UID:
        raise ValueError("seg must be a DICOM Segmentation")
    algorithm = sr_algorithm(result.model, result.model_version)
    series = hd.sr.SourceSeriesForSegmentation(str(ordered[0].SeriesInstanceUID))
    groups: list[_MeasurementGroup] = []
    for label in sorted(k for k in result.label_names if k != 0):
        name = result.label_names[label]
        coded = segment_codes(name)
        measurement, spacing = _measurement(result, label, name, ordered)
        common: _SegmentGroupFields = {
            "tracking_identifier": hd.sr.TrackingIdentifier(uid=new_uid(uid_root), identifier=f"{result.model} {name}"),
            "finding_type": coded.type,
            "finding_category": coded.category,
            "algorithm_id": algorithm,
            "measurements": [measurement],
        }
        if seg is None:
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(source_images=_group_source_images(ordered), **common))
            _state_spacing(groups[-1], spacing)
        elif len(ordered) == 1:
            number = _segment_number(seg, name)
            frames = hd.sr.ReferencedSegmentationFrame(
                sop_class_uid=str(seg.SOPClassUID), sop_instance_uid=str(seg.SOPInstanceUID),
                frame_number=_segment_frames(seg, number), segment_number=number,
                source_image=hd.sr.SourceImageForSegmentation.from_source_image(ordered[0]),
            )
            group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(referenced_segment=frames, **common)
            _drop_segment_number_beside_frames(group[0])
            _state_spacing(group, spacing)
            groups.append(group)
        else:
            segment = hd.sr.ReferencedSegment(
                sop_class_uid=str(seg.SOPClassUID), sop_instance_uid=str(seg.SOPInstanceUID),
                segment_number=_segment_number(seg, name), source_series=series,
            )
            groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(referenced_segment=segment, **common))
    report = _report(sources, result.model, result.model_version, uid_root, groups, ordered if seg is None else [])
    evidence = [*ordered, seg] if seg is not None else ordered
    return _document(evidence, report, model=result.model, uid_root=uid_root, series_number=series_number,
                     series_description=series_description or f"{result.model} volumes SR",
                     instance_number=instance_number)


class _DocumentOptions(TypedDict):
    """The keyword arguments every ``build_*_sr`` takes."""

    uid_root: str
    series_number: int
    series_description: str | None
    instance_number: int


def build_sr(
    sources: list[Dataset],
    result: Result,
    *,
    uid_root: str,
    seg: hd.seg.Segmentation | None = None,
    question: str | None = None,
    series_number: int = DEFAULT_SR_SERIES_NUMBER,
    series_description: str | None = None,
    instance_number: int = 1,
) -> hd.sr.ComprehensiveSR:
    """The SR for any model result; ``seg`` only applies to segmentations, ``question`` to classifications."""
    common: _DocumentOptions = {"uid_root": uid_root, "series_number": series_number,
                                "series_description": series_description, "instance_number": instance_number}
    if isinstance(result, Classification):
        return build_classification_sr(sources, result, question=question, **common)
    if isinstance(result, Detection):
        return build_detection_sr(sources, result, **common)
    if isinstance(result, Segmentation):
        return build_segmentation_sr(sources, result, seg=seg, **common)
    raise TypeError(f"no SR for a {type(result).__name__}")
