"""Checks shared by the output tests: dciodvfy, UID ownership, synthetic results."""
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

UID_ROOT = "1.2.826.0.1.3680043.10.1411.77"  # a non-UUID root, so "under the root" is a visible prefix
STANDARD_UID_PREFIX = "1.2.840.10008."  # SOP classes, transfer syntaxes, ...


def dciodvfy(ds: Dataset, folder: Path, name: str) -> tuple[list[str], list[str]]:
    """Write ``ds`` and run dciodvfy on it; returns (error lines, warning lines). Warnings are printed."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    path = folder / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    for line in warnings:
        print(f"dciodvfy {name}: {line}")
    return errors, warnings


def ui_values(ds: Dataset) -> set[str]:
    """Every UID (VR UI) value anywhere in ``ds``, nested sequences included."""
    found: set[str] = set()
    for element in ds.iterall():
        if element.VR == "UI" and element.value:
            values = element.value if isinstance(element.value, (list, tuple)) else [element.value]
            found.update(str(v) for v in values)
    if hasattr(ds, "file_meta"):
        found.update(str(e.value) for e in ds.file_meta if e.VR == "UI" and e.keyword != "ImplementationClassUID")
    return found


def foreign_uids(output: Dataset, sources: Iterable[Dataset], root: str = UID_ROOT) -> set[str]:
    """UIDs in ``output`` that are neither the sources', standard, nor under ``root``: should be none."""
    known: set[str] = set()
    for ds in sources:
        known |= ui_values(ds)
    return {
        uid for uid in ui_values(output)
        if uid not in known and not uid.startswith(STANDARD_UID_PREFIX) and not uid.startswith(root + ".")
    }


def l_shaped_mask(n_slices: int, size: int, slices: range) -> np.ndarray:
    """An "L" on some slices only: a flip, transpose or slice shift changes it."""
    mask = np.zeros((n_slices, size, size), dtype=np.uint8)
    for k in slices:
        mask[k, size // 8: size // 2, size // 8: size // 4] = 1  # the upright stroke
        mask[k, size // 2 - size // 8: size // 2, size // 8: size // 2 + k] = 1  # the foot, longer on later slices
    return mask


def new_warnings(output: Dataset, source: Dataset, folder: Path, name: str) -> tuple[list[str], list[str]]:
    """dciodvfy on ``output``: (its errors, its warnings that ``source`` does not already have)."""
    errors, warnings = dciodvfy(output, folder, name)
    _, known = dciodvfy(source, folder, f"{name}_source")
    return errors, [line for line in warnings if line not in set(known)]
