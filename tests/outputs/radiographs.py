"""Radiographs as modalities write them: pydicom-data's real CR, and synthetic CRs with optional attributes absent or present.

RG1 (pydicom-data) is a real Philips chest CR with ``PixelSpacing = 0\\0``
and no Imager Pixel Spacing; the synthetic CRs are chest_dx images made
into CR Image Storage, whose spacing attributes are both Type 3.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicom_node.ops.synthetic import _render_marker, chest_dx

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_ONLY = ("PresentationIntentType", "DetectorType", "PositionerType", "PixelIntensityRelationship",
           "PixelIntensityRelationshipSign", "PresentationLUTShape", "AcquisitionContextSequence", "ViewCodeSequence",
           "AnatomicRegionSequence", "ImageLaterality", "BurnedInAnnotation")

# (label, PixelSpacing, ImagerPixelSpacing): None = absent
SPACING_VARIANTS = [
    ("no-spacing", None, None),
    ("imager-only", None, [0.15, 0.15]),
    ("pixel-only", [0.14, 0.14], None),
    ("both", [0.14, 0.14], [0.15, 0.15]),
    ("pixel-zero-imager", [0.0, 0.0], [0.15, 0.15]),
]


def floats(box: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
    """A marker box (x0, y0, x1, y1) in the float coordinates a :class:`ai_models.results.Box` takes."""
    x0, y0, x1, y1 = box
    return float(x0), float(y0), float(x1), float(y1)


def rg1() -> Dataset:
    """pydicom-data's RG1 chest CR (uncompressed): real vendor header, zero Pixel Spacing, no Imager Pixel Spacing."""
    pytest.importorskip("data_store", reason="pydicom-data (module data_store) is not installed")
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCI.dcm")
    if path is None:
        pytest.skip("pydicom-data has no RG1_UNCI.dcm")
    return dcmread(path)


def with_marker(ds: Dataset, letter: str = "R", seed: int = 3) -> tuple[Dataset, tuple[int, int, int, int]]:
    """A copy of ``ds`` (MONOCHROME1 or 2) with a burned-in lead letter, bright on display, as a new instance."""
    marked = copy.deepcopy(ds)
    pixels = marked.pixel_array.copy()
    bright = int(pixels.min()) if str(ds.PhotometricInterpretation) == "MONOCHROME1" else int(pixels.max())
    box = _render_marker(pixels, letter, np.random.default_rng(seed), bright)
    marked.PixelData = pixels.astype(pixels.dtype).tobytes()
    marked.SOPInstanceUID = marked.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return marked, box


def synthetic_cr(pixel_spacing: list[float] | None, imager_pixel_spacing: list[float] | None, *, seed: int = 7) -> Dataset:
    """A chest CR (CR Image Storage) with the given spacings, None meaning absent, and a burned-in "L"."""
    ds = chest_dx(256, 256, seed=seed)
    box = ds.synthetic_marker_box
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    ds.Modality = "CR"
    for keyword in (*DX_ONLY, "PixelSpacing", "ImagerPixelSpacing"):
        if keyword in ds:
            delattr(ds, keyword)
    if pixel_spacing is not None:
        ds.PixelSpacing = pixel_spacing
    if imager_pixel_spacing is not None:
        ds.ImagerPixelSpacing = imager_pixel_spacing
        if pixel_spacing is not None and any(pixel_spacing):
            ds.PixelSpacingCalibrationType = "GEOMETRY"  # a calibrated spacing says so, and how
            ds.PixelSpacingCalibrationDescription = "magnification corrected at the table"
    ds.synthetic_marker_box = box  # type: ignore[attr-defined]
    return ds
