"""Synthetic CT / MR series for geometry tests, built as in-memory pydicom datasets.

Shapes are defined in patient (LPS) millimetres, and every pixel of every
slice is evaluated at its own patient position.  The ground truth is thus
computed in each image's own geometry, independently of the volume reader
under test: whatever the reader and the pipelines do (sorting, flipping,
resampling), their mask must land on ``Phantom.truth_for(uids)``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


@dataclass(frozen=True)
class Ellipsoid:
    """An axis-aligned (in LPS) ellipsoid: centre and radii in mm, the value inside, and its truth label."""

    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    value: float
    label: int = 0

    def inside(self, points: np.ndarray) -> np.ndarray:
        d = (points - np.asarray(self.center)) / np.asarray(self.radii)
        return (d * d).sum(axis=-1) <= 1.0


@dataclass
class Phantom:
    """Datasets in delivery order, and the truth label map of each image keyed by SOP Instance UID."""

    datasets: list[Dataset]
    truth: dict[str, np.ndarray]
    values: dict[str, np.ndarray] = field(default_factory=dict)

    def truth_for(self, uids: Sequence[str]) -> np.ndarray:
        return np.stack([self.truth[u] for u in uids])

    def values_for(self, uids: Sequence[str]) -> np.ndarray:
        return np.stack([self.values[u] for u in uids])

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for i, ds in enumerate(self.datasets):
            ds.save_as(folder / f"img{i:04d}.dcm", enforce_file_format=True)
        return folder


def make_series(
    *,
    rows: int,
    cols: int,
    n_slices: int,
    pixel_spacing: tuple[float, float] = (1.0, 1.0),
    slice_step: float = 2.5,
    row_dir: Sequence[float] = (1.0, 0.0, 0.0),
    col_dir: Sequence[float] = (0.0, 1.0, 0.0),
    center: Sequence[float] = (0.0, 0.0, 0.0),
    shapes: Sequence[Ellipsoid] = (),
    background: float = -1000.0,
    modality: str = "CT",
    intercept: float = -1024.0,
    shear_per_slice: Sequence[float] = (0.0, 0.0, 0.0),
    drop: Sequence[int] = (),
    shuffle_seed: int | None = None,
) -> Phantom:
    """Build one series.

    ``row_dir``/``col_dir`` are the two IOP vectors; slices are stacked
    along ``slice_step * (row_dir x col_dir)``, so a negative step gives
    the reversed (e.g. feet-first) stacking.  ``shear_per_slice`` moves each
    slice sideways (gantry tilt); ``drop`` removes acquisition indices
    (missing slices); ``shuffle_seed`` shuffles the delivery order.
    Stored values are ``round(value - intercept)`` as signed 16-bit, with
    RescaleIntercept = ``intercept``.
    """
    row_dir = np.asarray(row_dir, dtype=float)
    col_dir = np.asarray(col_dir, dtype=float)
    normal = np.cross(row_dir, col_dir)
    col_spacing, row_spacing = pixel_spacing[1], pixel_spacing[0]
    step = slice_step * normal + np.asarray(shear_per_slice, dtype=float)
    corner = (
        np.asarray(center, dtype=float)
        - (cols - 1) / 2 * col_spacing * row_dir
        - (rows - 1) / 2 * row_spacing * col_dir
        - (n_slices - 1) / 2 * step
    )
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    offsets = c[..., None] * col_spacing * row_dir + r[..., None] * row_spacing * col_dir

    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    datasets: list[Dataset] = []
    truth: dict[str, np.ndarray] = {}
    values: dict[str, np.ndarray] = {}
    for k in range(n_slices):
        if k in drop:
            continue
        ipp = corner + k * step
        points = ipp + offsets
        image = np.full((rows, cols), background, dtype=np.float64)
        label = np.zeros((rows, cols), dtype=np.uint8)
        for shape in shapes:
            inside = shape.inside(points)
            image[inside] = shape.value
            if shape.label:
                label[inside] = shape.label
        stored = np.round(image - intercept).astype(np.int16)
        ds = _dataset(stored, ipp, row_dir, col_dir, pixel_spacing, abs(slice_step), modality, intercept, k + 1)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        datasets.append(ds)
        truth[ds.SOPInstanceUID] = label
        values[ds.SOPInstanceUID] = stored.astype(np.float32) + intercept
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(datasets))
        datasets = [datasets[i] for i in order]
    return Phantom(datasets, truth, values)


def _dataset(
    stored: np.ndarray,
    ipp: np.ndarray,
    row_dir: np.ndarray,
    col_dir: np.ndarray,
    pixel_spacing: tuple[float, float],
    thickness: float,
    modality: str,
    intercept: float,
    instance: int,
) -> Dataset:
    sop_class = CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = modality
    ds.PatientID = "PHANTOM"
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [float(round(v, 6)) for v in ipp]
    ds.ImageOrientationPatient = [float(round(v, 8)) for v in (*row_dir, *col_dir)]
    ds.PixelSpacing = [float(pixel_spacing[0]), float(pixel_spacing[1])]
    ds.SliceThickness = float(thickness)
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = 1
    ds.RescaleIntercept = intercept
    ds.PixelData = stored.astype("<i2").tobytes()
    return ds


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty)."""
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def abdomen_ct(
    *,
    rows: int = 56,
    cols: int = 64,
    n_slices: int = 30,
    pixel_spacing: tuple[float, float] = (1.2, 1.4),
    slice_step: float = 2.5,
    row_dir: Sequence[float] = (1.0, 0.0, 0.0),
    col_dir: Sequence[float] = (0.0, 1.0, 0.0),
    kidneys: str = "both",
    tumour: bool = True,
    kidney_z: float = 0.0,
    shuffle_seed: int | None = 0,
) -> Phantom:
    """An abdomen with a soft-tissue body, kidneys (label 1) and a tumour in the patient-left kidney (label 2).

    The patient-right kidney (LPS x < 0) is larger than the left one, so a
    left/right swap cannot go unnoticed.  ``kidneys`` is "both", "right",
    "left" or "none"; ``kidney_z`` moves them along the patient z axis (mm).
    """
    half_z = (n_slices - 1) / 2 * abs(slice_step)
    shapes = [Ellipsoid((0.0, 0.0, 0.0), (cols * pixel_spacing[1] * 0.46, rows * pixel_spacing[0] * 0.42, 1e4), 40.0)]
    kz = min(18.0, 0.6 * half_z)
    if kidneys in ("both", "right"):
        shapes.append(Ellipsoid((-24.0, 8.0, kidney_z), (12.0, 15.0, kz), 200.0, 1))
    if kidneys in ("both", "left"):
        shapes.append(Ellipsoid((25.0, 10.0, kidney_z + 3.0), (10.0, 12.0, kz * 0.8), 200.0, 1))
        if tumour:
            shapes.append(Ellipsoid((27.0, 11.0, kidney_z + 3.0), (5.5, 6.0, kz * 0.4), 420.0, 2))
    return make_series(
        rows=rows, cols=cols, n_slices=n_slices, pixel_spacing=pixel_spacing, slice_step=slice_step,
        row_dir=row_dir, col_dir=col_dir, shapes=shapes, shuffle_seed=shuffle_seed,
    )
