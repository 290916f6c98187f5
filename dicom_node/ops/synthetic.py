"""Synthetic DICOM for tests, demos and the self test: no patient data, ever.

CT: an axial chest-like series (body, lungs, spine, aorta, heart) in HU.
DX: a chest radiograph, For Presentation, with an optional burned-in "L"/"R".
Both carry the attributes dciodvfy expects of their IODs so that what the
node derives from them can be validated too.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
DX_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
UID_PREFIX = "1.2.826.0.1.3680043.10.1411."  # synthetic test objects only


def _uid() -> str:
    return generate_uid(prefix=UID_PREFIX)


def _patient_and_study(ds: Dataset, *, patient_id: str, study_uid: str, description: str, now: dt.datetime) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "SYNTHETIC^PHANTOM"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = now.strftime("%Y%m%d")
    ds.StudyTime = now.strftime("%H%M%S")
    ds.AccessionNumber = "SYN" + now.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.StudyDescription = description
    ds.Manufacturer = "SYNTHETIC"
    ds.InstitutionName = "Synthetic"


def _file_meta(ds: Dataset) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta


def chest_ct_series(
    n_slices: int = 20,
    size: int = 128,
    *,
    contrast: bool = False,
    study_uid: str | None = None,
    patient_id: str = "SYN0001",
    seed: int = 0,
    slice_thickness: float = 2.5,
) -> list[Dataset]:
    """An axial chest CT series; with ``contrast`` the aorta and heart are ~300 HU instead of ~40."""
    rng = np.random.default_rng(seed)
    now = dt.datetime.now()
    study_uid = study_uid or _uid()
    series_uid, frame_uid = _uid(), _uid()
    spacing = 360.0 / size
    lin = (np.arange(size, dtype=np.float32) - (size - 1) / 2) / (size / 2)
    yy, xx = np.meshgrid(lin, lin, indexing="ij")
    blood = 300.0 if contrast else 40.0
    out = []
    for i in range(n_slices):
        hu = np.full((size, size), -1000.0, dtype=np.float32)
        body = (xx / 0.8) ** 2 + (yy / 0.6) ** 2 <= 1
        hu[body] = 40.0
        for cx in (-0.35, 0.35):
            hu[((xx - cx) / 0.25) ** 2 + (yy / 0.38) ** 2 <= 1] = -850.0
        hu[((xx + 0.05) / 0.16) ** 2 + ((yy + 0.1) / 0.15) ** 2 <= 1] = blood  # heart
        hu[((xx - 0.08) / 0.05) ** 2 + ((yy - 0.25) / 0.05) ** 2 <= 1] = blood  # descending aorta
        hu[(xx / 0.08) ** 2 + ((yy - 0.42) / 0.08) ** 2 <= 1] = 700.0  # spine
        hu += rng.normal(0, 10, hu.shape).astype(np.float32)
        stored = np.clip(np.rint(hu + 1024), 0, 4095).astype(np.uint16)

        ds = Dataset()
        _patient_and_study(ds, patient_id=patient_id, study_uid=study_uid, description="CT CHEST", now=now)
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = _uid()
        ds.Modality = "CT"
        ds.BodyPartExamined = "CHEST"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 2
        ds.SeriesDescription = "CHEST WITH CONTRAST" if contrast else "CHEST NATIVE"
        if contrast:
            ds.ContrastBolusAgent = "IODINE"
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.PatientPosition = "HFS"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = i + 1
        ds.AcquisitionNumber = 1
        ds.KVP = "120"
        ds.SliceThickness = f"{slice_thickness}"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        z = -i * slice_thickness
        ds.ImagePositionPatient = [-180.0 + spacing / 2, -180.0 + spacing / 2, z]
        ds.SliceLocation = z
        ds.PixelSpacing = [spacing, spacing]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.ContentDate, ds.ContentTime = ds.StudyDate, ds.StudyTime
        ds.PixelData = stored.tobytes()
        _file_meta(ds)
        out.append(ds)
    return out


def _render_marker(image: np.ndarray, letter: str, rng: np.random.Generator, value: int) -> tuple[int, int, int, int]:
    import cv2

    rows, cols = image.shape
    scale = max(1.0, min(rows, cols) / 300)
    (w, h), _ = cv2.getTextSize(letter, cv2.FONT_HERSHEY_SIMPLEX, scale, max(2, int(scale * 2)))
    x = int(rng.integers(int(cols * 0.03), int(cols * 0.15)))
    y = int(rng.integers(int(rows * 0.05) + h, int(rows * 0.2) + h))
    mask = np.zeros(image.shape, dtype=np.uint8)  # putText draws on 8-bit images only
    cv2.putText(mask, letter, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, max(2, int(scale * 2)), cv2.LINE_8)
    image[mask > 0] = value
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def chest_dx(
    rows: int = 512,
    cols: int = 512,
    *,
    view: str = "PA",
    marker: str | None = "L",
    study_uid: str | None = None,
    patient_id: str = "SYN0002",
    seed: int = 0,
    monochrome1: bool = False,
) -> Dataset:
    """A DX For Presentation chest radiograph (12-bit), optionally with a burned-in marker letter.

    The marker's box (x0, y0, x1, y1) in pixels is stored in the private-free
    attribute ``ds.synthetic_marker_box`` (a Python attribute, not written to file).
    """
    rng = np.random.default_rng(seed)
    now = dt.datetime.now()
    lin_y = (np.arange(rows, dtype=np.float32) - rows / 2) / (rows / 2)
    lin_x = (np.arange(cols, dtype=np.float32) - cols / 2) / (cols / 2)
    yy, xx = np.meshgrid(lin_y, lin_x, indexing="ij")
    img = 600 + 900 * np.exp(-((xx / 0.7) ** 2 + (yy / 0.9) ** 2) * 2)
    for cx in (-0.35, 0.35):
        img[((xx - cx) / 0.25) ** 2 + ((yy + 0.05) / 0.5) ** 2 <= 1] -= 450
    img += rng.normal(0, 15, img.shape)
    img = np.clip(img, 0, 4095).astype(np.uint16)
    box = _render_marker(img, marker, rng, 4095) if marker else None
    if monochrome1:
        img = (4095 - img).astype(np.uint16)

    ds = Dataset()
    _patient_and_study(ds, patient_id=patient_id, study_uid=study_uid or _uid(), description="XR CHEST", now=now)
    ds.SOPClassUID = DX_PRESENTATION_STORAGE
    ds.SOPInstanceUID = _uid()
    ds.Modality = "DX"
    ds.BodyPartExamined = "CHEST"
    ds.SeriesInstanceUID = _uid()
    ds.SeriesNumber = 1
    ds.SeriesDescription = f"CHEST {view}"
    ds.ImageLaterality = "U"
    ds.ViewPosition = view
    view_code = Dataset()
    view_codes = {  # CID 4010 DX view, SCT codes
        "PA": ("272479007", "postero-anterior"),
        "AP": ("399348003", "antero-posterior"),
        "LL": ("399173006", "left lateral"),
        "RL": ("399198007", "right lateral"),
    }
    value, meaning = view_codes.get(view, ("399173006", "left lateral"))
    view_code.CodeValue, view_code.CodingSchemeDesignator, view_code.CodeMeaning = value, "SCT", meaning
    ds.ViewCodeSequence = Sequence([view_code])
    ds.PatientOrientation = ["L", "F"] if view in ("PA", "AP") else ["A", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = ds.StudyDate, ds.StudyTime
    ds.AcquisitionDate, ds.AcquisitionTime = ds.StudyDate, ds.StudyTime
    ds.BurnedInAnnotation = "YES" if marker else "NO"
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.DetectorType = "DIRECT"
    ds.PositionerType = ""
    ds.KVP = "110"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    ds.WindowCenter, ds.WindowWidth = "2048", "4096"
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.PresentationLUTShape = "INVERSE" if monochrome1 else "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.PixelData = img.tobytes()
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "51185008", "SCT", "Chest"
    ds.AnatomicRegionSequence = Sequence([region])
    ds.AcquisitionContextSequence = Sequence([])
    _file_meta(ds)
    ds.synthetic_marker_box = box  # type: ignore[attr-defined]
    return ds


def write_datasets(datasets: list[Dataset], folder: Path, prefix: str = "IMG") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        path = folder / f"{prefix}{i + 1:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
