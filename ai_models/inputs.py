"""Turning what callers pass (datasets, files, folders) into pydicom datasets."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from ai_models.errors import InputError

Source = Dataset | str | Path | Iterable[Dataset | str | Path]


def _read_file(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises several unrelated types
        raise InputError(f"cannot read DICOM file {path}: {exc}") from exc


def read_datasets(source: Source) -> list[Dataset]:
    """Return the datasets in ``source``: a dataset, a file, a folder (recursive) or a list of these.

    Non-DICOM files inside a folder are skipped; an empty result is an error.
    """
    if isinstance(source, Dataset):
        return [source]
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            out: list[Dataset] = []
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                try:
                    out.append(pydicom.dcmread(child))
                except Exception:  # noqa: BLE001 - folders hold README files, thumbnails...
                    continue
            if not out:
                raise InputError(f"no DICOM files in folder {path}")
            return out
        if not path.exists():
            raise InputError(f"input not found: {path}")
        return [_read_file(path)]
    out = []
    for item in source:
        out.extend(read_datasets(item))
    if not out:
        raise InputError("empty input")
    return out


def modality_values(ds: Dataset) -> np.ndarray:
    """Pixel data as float32 after Modality LUT (Rescale Slope/Intercept): HU for CT."""
    try:
        arr = ds.pixel_array.astype(np.float32)
    except Exception as exc:
        raise InputError(f"cannot decode pixels of {getattr(ds, 'SOPInstanceUID', '?')}: {exc}") from exc
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    return arr * slope + intercept
