"""New image instances derived from the sources: L/R-marker-erased images and header-corrected copies.

Both are deep copies (the source datasets are never touched) placed in one
new series under the node's UID root, with the node as Manufacturer, the
scanner kept as Contributing Equipment (Acquisition Equipment), and a Source
Image Sequence pointing back at each original.

* Erased images get the caller's new pixel values, ImageType
  DERIVED\\SECONDARY, a Derivation Code (DCM 113047 "Pixel by pixel mask")
  and Description, and the purpose of reference DCM 121322 "Source image for
  image processing operation" (CID 7202) on each source reference.
* Header-fix copies keep pixels and ImageType as they are (the pixels are
  still the acquisition's), change only the named attributes, and say in
  Derivation Description what was corrected and on what evidence.
"""
from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Mapping
from typing import Any

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from ai_models.results import Box, Classification, Detection
from dicom_node.outputs.common import (
    MANUFACTURER,
    SOFTWARE_VERSION,
    acquisition_equipment,
    box_source_uid,
    new_uid,
    set_node_equipment,
    sources_in_order,
    text,
    usable_spacing,
)

DEFAULT_ERASED_SERIES_NUMBER = 902
DEFAULT_HEADER_FIX_SERIES_NUMBER = 903
ERASED_TAG = "[L/R marker erased]"
HEADER_FIX_TAG = "[header corrected]"
SOURCE_FOR_PROCESSING = codes.DCM.SourceImageForImageProcessingOperation  # DCM 121322 (CID 7202)
PIXEL_MASK = codes.DCM.PixelByPixelMask  # DCM 113047 (CID 7203)

# What a header fix may never change: identity, geometry of the pixel matrix, the pixels.
PROTECTED_ATTRIBUTES = frozenset({
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
    "PatientID", "PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
    "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation", "NumberOfFrames",
    "SourceImageSequence", "DerivationDescription",
})


# The Contrast/Bolus module (PS3.3 C.7.6.4): a finding of "no contrast" removes all of it, since any
# attribute left (a route, a volume) still reads as a contrast study and is out of place without the module.
CONTRAST_BOLUS_MODULE = (
    "ContrastBolusAgent", "ContrastBolusAgentSequence", "ContrastBolusRoute", "ContrastBolusAdministrationRouteSequence",
    "ContrastBolusVolume", "ContrastBolusStartTime", "ContrastBolusStopTime", "ContrastBolusTotalDose",
    "ContrastFlowRate", "ContrastFlowDuration", "ContrastBolusIngredient", "ContrastBolusIngredientConcentration",
)
SPACING_ATTRIBUTES = ("PixelSpacing", "ImagerPixelSpacing")


def _code_item(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
    return item


def _source_reference(source: Dataset, purpose: Code | None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if purpose is not None:
        item.PurposeOfReferenceCodeSequence = DicomSequence([_code_item(purpose)])
    return item


def _new_instance(source: Dataset, *, uid_root: str, series_uid: str, series_number: int,
                  series_description: str, model_name: str, purpose: Code | None, now: dt.datetime) -> Dataset:
    """A deep copy of ``source`` re-identified as an instance of the node's new series."""
    ds = copy.deepcopy(source)
    ds.SOPInstanceUID = new_uid(uid_root)
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = text(series_description, 64)
    ds.SeriesDate, ds.SeriesTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.SeriesDate, ds.SeriesTime
    scanner = acquisition_equipment(source)
    if scanner is not None and source.get("Manufacturer") != MANUFACTURER:
        ds.ContributingEquipmentSequence = DicomSequence([*source.get("ContributingEquipmentSequence", []), scanner])
    set_node_equipment(ds, model_name)
    ds.SourceImageSequence = DicomSequence([_source_reference(source, purpose)])
    if hasattr(ds, "file_meta"):
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _series_description(source: Dataset, tag: str, given: str | None) -> str:
    if given:
        return given
    original = str(source.get("SeriesDescription", "") or "").strip()
    return f"{original[: 63 - len(tag)]} {tag}" if original else tag


def _stored_dtype(source: Dataset) -> np.dtype:
    bits = int(source.BitsAllocated)
    if bits not in (8, 16):
        raise ValueError(f"only 8- and 16-bit images can be rewritten, source has BitsAllocated {bits}")
    return np.dtype(f"{'i' if int(source.PixelRepresentation) else 'u'}{bits // 8}")


def _checked_pixels(source: Dataset, pixels: np.ndarray) -> np.ndarray:
    """``pixels`` as stored values of ``source``'s type, after checking shape and range."""
    samples = int(source.get("SamplesPerPixel", 1))
    shape = (int(source.Rows), int(source.Columns)) + ((samples,) if samples > 1 else ())
    if pixels.shape != shape:
        raise ValueError(f"erased pixels for {source.SOPInstanceUID} have shape {pixels.shape}, expected {shape}")
    if not np.issubdtype(pixels.dtype, np.integer):
        raise ValueError(f"erased pixels must be stored (integer) values, got {pixels.dtype}")
    stored = int(source.BitsStored)
    low, high = (-(2 ** (stored - 1)), 2 ** (stored - 1) - 1) if int(source.PixelRepresentation) else (0, 2**stored - 1)
    if pixels.size and (int(pixels.min()) < low or int(pixels.max()) > high):
        raise ValueError(f"erased pixels leave the {stored}-bit range [{low}, {high}] of {source.SOPInstanceUID}")
    return pixels.astype(_stored_dtype(source))


def _box_text(box: Box) -> str:
    return f"{box.label} ({box.score:.2f}) at x {box.x0:.0f}-{box.x1:.0f}, y {box.y0:.0f}-{box.y1:.0f}"


def _all_boxes_changed(original: np.ndarray, erased: np.ndarray, boxes: list[Box]) -> bool:
    """True when every box has at least one changed pixel: the caller erased each detected marker."""
    rows, cols = original.shape[:2]
    for box in boxes:
        y0, y1 = max(int(np.floor(box.y0)), 0), min(int(np.ceil(box.y1)), rows)
        x0, x1 = max(int(np.floor(box.x0)), 0), min(int(np.ceil(box.x1)), cols)
        if y1 <= y0 or x1 <= x0 or np.array_equal(original[y0:y1, x0:x1], erased[y0:y1, x0:x1]):
            return False
    return True


def build_erased_images(
    sources: list[Dataset],
    detection: Detection,
    erased_pixels: Mapping[str, np.ndarray],
    *,
    uid_root: str,
    series_number: int = DEFAULT_ERASED_SERIES_NUMBER,
    series_description: str | None = None,
) -> list[Dataset]:
    """One derived image per entry of ``erased_pixels`` (SOP Instance UID -> stored pixel values).

    Pixel characteristics (Bits*, Pixel Representation, Photometric
    Interpretation, spacing) are those of the source; compressed sources are
    written uncompressed.  Burned In Annotation becomes NO only when the
    source's detected boxes all changed; otherwise the source's value stays.
    """
    if not erased_pixels:
        raise ValueError("no erased pixels given: nothing to derive")
    unknown = sorted(set(erased_pixels) - set(detection.source_sop_instance_uids))
    if unknown:
        raise ValueError(f"erased pixels for {len(unknown)} instance(s) the detection did not examine, e.g. {unknown[0]}")
    originals = sources_in_order(sources, list(erased_pixels), "erased_pixels")
    series_uid = new_uid(uid_root)
    now = dt.datetime.now()
    out = []
    for source in originals:
        uid = str(source.SOPInstanceUID)
        pixels = _checked_pixels(source, erased_pixels[uid])
        boxes = [b for b in detection.boxes if box_source_uid(b, detection) == uid]
        ds = _new_instance(source, uid_root=uid_root, series_uid=series_uid, series_number=series_number,
                           series_description=_series_description(source, ERASED_TAG, series_description),
                           model_name=detection.model, purpose=SOURCE_FOR_PROCESSING, now=now)
        photometric = str(source.PhotometricInterpretation)
        if photometric.startswith("YBR") and int(source.get("SamplesPerPixel", 1)) == 3:
            photometric = "RGB"  # pixels arrive decoded; a YBR label would misdescribe them once uncompressed
        ds.set_pixel_data(pixels, photometric_interpretation=photometric, bits_stored=int(source.BitsStored),
                          generate_instance_uid=False)
        image_type = [str(v) for v in source.get("ImageType", [])]
        ds.ImageType = ["DERIVED", "SECONDARY", *image_type[2:]]
        ds.ContentDate, ds.ContentTime = ds.InstanceCreationDate, ds.InstanceCreationTime
        ds.DerivationCodeSequence = DicomSequence([_code_item(PIXEL_MASK)])
        described = "; ".join(_box_text(b) for b in boxes) or "no box detected"
        dropped = _drop_unusable_spacing(ds)
        ds.DerivationDescription = text(
            f"Burned-in L/R marker erased by {MANUFACTURER} {SOFTWARE_VERSION} using {detection.model} "
            f"{detection.model_version}: {described}"
            + (f". Zero {' and '.join(dropped)} removed (unknown spacing)" if dropped else ""), 1024)
        if boxes and _all_boxes_changed(source.pixel_array, pixels, boxes):
            ds.BurnedInAnnotation = "NO"
        out.append(ds)
    return out


def _drop_unusable_spacing(ds: Dataset) -> list[str]:
    """Remove a zero spacing (``0\\0``, as some CR writers send): it means unknown, and dciodvfy rejects it.

    Both attributes are optional in the CR and DX images this applies to
    (Type 3, or 1C "if calibrated"); the removed ones are returned so the
    Derivation Description can say so.
    """
    dropped = [k for k in SPACING_ATTRIBUTES if k in ds and usable_spacing(ds[k].value) is None]
    for keyword in dropped:
        delattr(ds, keyword)
    return dropped


def _value_text(value: Any) -> str:
    if value is None:
        return "removed"
    if isinstance(value, (list, tuple)):
        return "\\".join(str(v) for v in value)
    return repr(str(value))


def build_header_fix_copy(
    sources: list[Dataset],
    classification: Classification,
    *,
    attribute_values: Mapping[str, Any],
    uid_root: str,
    series_number: int = DEFAULT_HEADER_FIX_SERIES_NUMBER,
    series_description: str | None = None,
) -> list[Dataset]:
    """Copies of the classified instances with ``attribute_values`` applied (keyword -> value; None removes).

    Pixel data are unchanged.  Companion attributes are the caller's choice:
    e.g. correcting ViewPosition may call for ViewCodeSequence too, and
    removing ContrastBolusAgent for the rest of :data:`CONTRAST_BOLUS_MODULE`.
    Removing an absent attribute is no change and is not described.
    """
    if not attribute_values:
        raise ValueError("attribute_values is empty: nothing to correct")
    for keyword in attribute_values:
        if tag_for_keyword(keyword) is None:
            raise ValueError(f"{keyword!r} is not a DICOM attribute keyword")
        if keyword in PROTECTED_ATTRIBUTES:
            raise ValueError(f"a header fix may not change {keyword}")
    originals = sources_in_order(sources, classification.source_sop_instance_uids, "the classification")
    series_uid = new_uid(uid_root)
    now = dt.datetime.now()
    verdict = "agreed" if classification.agrees_with_header else (
        "disagreed" if classification.agrees_with_header is False else "said nothing")
    out = []
    for source in originals:
        ds = _new_instance(source, uid_root=uid_root, series_uid=series_uid, series_number=series_number,
                           series_description=_series_description(source, HEADER_FIX_TAG, series_description),
                           model_name=classification.model, purpose=None, now=now)
        changes = []
        for keyword, value in attribute_values.items():
            before = source.get(keyword)
            if value is None and before is None:
                continue  # removing what is not there changes nothing
            changes.append(f"{keyword} {_value_text(before) if before is not None else 'absent'} -> {_value_text(value)}")
            if value is None:
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        ds.DerivationDescription = text(
            f"Header corrected by {MANUFACTURER} {SOFTWARE_VERSION}: {'; '.join(changes) or 'nothing to change here'}. Model "
            f"{classification.model} {classification.model_version} found {classification.label} "
            f"(p={classification.confidence:.3f}); the header {verdict}.", 1024)
        out.append(ds)
    return out
