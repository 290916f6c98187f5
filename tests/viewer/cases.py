"""Synthetic studies for the viewer checks: sources, the SEG/SR the node writes, and the truth.

The shapes are deliberately asymmetric and change from slice to slice, so a
left-right or up-down flip, a transpose or a slice shift gives a different
labelmap (a sphere would hide most of those).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from ai_models.results import Box, Detection, Segmentation
from dicom_node.ops.synthetic import chest_ct_series, chest_dx, write_datasets
from dicom_node.outputs import build_seg, build_sr

UID_ROOT = "2.25"  # UUID-derived UIDs: nothing to register for synthetic test objects
CT_SLICES, CT_SIZE = 12, 128
F_SLICES = range(3, 9)  # the "F" is on these slices (0-based, in instance order) only
TUMOUR_SLICES = range(5, 7)
DX_SIZE = 256


@dataclass
class ViewerCase:
    """Files to load in a viewer and what its labelmap must hold.

    ``expected`` maps each source SOP Instance UID to the labelmap the viewer
    should build on that image: 0 = background, n = SEG segment number n.
    """

    name: str
    sources: list[Path]
    seg: Path
    expected: dict[str, np.ndarray]
    instance_numbers: dict[str, int]
    segment_labels: dict[int, str]

    def expected_counts(self) -> dict[str, int]:
        return {uid: int(np.count_nonzero(mask)) for uid, mask in self.expected.items()}


def f_shape(size: int, k: int) -> np.ndarray:
    """An "F" whose bars lengthen with ``k``: no flip, transpose or shift maps one slice onto another."""
    mask = np.zeros((size, size), dtype=np.uint8)
    top, left, height, stroke = size // 5, size // 4, size // 2, max(3, size // 16)
    mask[top: top + height, left: left + stroke] = 1  # the upright
    mask[top: top + stroke, left: left + size // 4 + 3 * k] = 1  # top bar
    middle = top + height // 2
    mask[middle: middle + stroke, left: left + size // 8 + 2 * k] = 1  # middle bar, shorter
    return mask


def ct_labels(n_slices: int = CT_SLICES, size: int = CT_SIZE) -> np.ndarray:
    """Label 1 (kidney): an F on ``F_SLICES``; label 2 (tumour): a small square right of it on ``TUMOUR_SLICES``."""
    labels = np.zeros((n_slices, size, size), dtype=np.uint8)
    for k in F_SLICES:
        labels[k] = f_shape(size, k)
    for k in TUMOUR_SLICES:
        labels[k, size // 2 + 10: size // 2 + 22, size // 2 + 20: size // 2 + 30 + k] = 2
    return labels


def _write_seg(seg: Dataset, path: Path) -> Path:
    seg.save_as(path, enforce_file_format=True)
    return path


def ct_case(folder: Path, *, omit_empty_frames: bool = False) -> ViewerCase:
    """A 12-slice CT with a two-segment SEG built by the node's own SEG builder."""
    ct = chest_ct_series(CT_SLICES, CT_SIZE, seed=5)
    for ds in ct:
        ds.StudyDescription = "Viewer check CT"
    labels = ct_labels()
    uids = [str(ds.SOPInstanceUID) for ds in ct]
    # Hand the mask over in reverse slice order: placement must follow the UIDs, not the order.
    result = Segmentation(
        model="viewer-check", model_version="1.0.0", mask=labels[::-1].copy(),
        label_names={1: "kidney", 2: "kidney tumour"}, source_sop_instance_uids=uids[::-1],
        spacing_mm=(2.5, float(ct[0].PixelSpacing[0]), float(ct[0].PixelSpacing[1])),
    )
    seg = build_seg(ct, result, uid_root=UID_ROOT, omit_empty_frames=omit_empty_frames,
                    series_description="viewer check SEG")
    sources = write_datasets(ct, folder / "ct", prefix="CT")
    return ViewerCase(
        name="ct", sources=sources, seg=_write_seg(seg, folder / "seg_ct.dcm"),
        expected={uid: labels[k] for k, uid in enumerate(uids)},
        instance_numbers={str(ds.SOPInstanceUID): int(ds.InstanceNumber) for ds in ct},
        segment_labels={1: "kidney", 2: "kidney tumour"},
    )


def dx_lung_mask(size: int = DX_SIZE) -> np.ndarray:
    """Both lung fields of the synthetic radiograph, with a cardiac notch cut from the image-right lung only."""
    centre = (np.arange(size, dtype=np.float32) - size / 2) / (size / 2)
    yy, xx = np.meshgrid(centre, centre, indexing="ij")
    lungs = np.zeros((size, size), dtype=bool)
    for cx in (-0.35, 0.35):
        lungs |= ((xx - cx) / 0.25) ** 2 + ((yy + 0.05) / 0.5) ** 2 <= 1
    notch = (xx > 0.1) & (xx < 0.3) & (yy > 0.1) & (yy < 0.45)
    return (lungs & ~notch).astype(np.uint8)


def dx_case(folder: Path) -> tuple[ViewerCase, Dataset]:
    """A single-frame chest radiograph with a lung SEG; also returns the radiograph itself."""
    dx = chest_dx(DX_SIZE, DX_SIZE, seed=6)
    dx.StudyDescription = "Viewer check DX"
    mask = dx_lung_mask()
    uid = str(dx.SOPInstanceUID)
    result = Segmentation(model="viewer-check-lung", model_version="1.0.0", mask=mask[None],
                          label_names={1: "lung"}, source_sop_instance_uids=[uid])
    seg = build_seg([dx], result, uid_root=UID_ROOT, series_description="viewer check lung SEG")
    (source,) = write_datasets([dx], folder / "dx", prefix="DX")
    case = ViewerCase(
        name="dx", sources=[source], seg=_write_seg(seg, folder / "seg_dx.dcm"),
        expected={uid: mask}, instance_numbers={uid: int(dx.InstanceNumber)}, segment_labels={1: "lung"},
    )
    return case, dx


def lr_marker_boxes(dx: Dataset) -> list[Box]:
    """A left box around the burned-in marker and a made-up right one on the other side."""
    uid = str(dx.SOPInstanceUID)
    x0, y0, x1, y1 = dx.synthetic_marker_box
    cols = int(dx.Columns)
    return [Box(float(x0), float(y0), float(x1), float(y1), "left", 0.93, uid),
            Box(float(cols - x1), float(y0), float(cols - x0), float(y1), "right", 0.61, uid)]


def dx_marker_sr(dx: Dataset, path: Path) -> tuple[Path, list[Box]]:
    """The node's L/R marker SR (TID 1500, closed POLYLINE boxes) for the radiograph."""
    boxes = lr_marker_boxes(dx)
    detection = Detection("lr-mark", "1.0.0", boxes, [str(dx.SOPInstanceUID)])
    sr = build_sr([dx], detection, uid_root=UID_ROOT, series_description="viewer check L/R SR")
    sr.save_as(path, enforce_file_format=True)
    return path, boxes


def shift_references(case: ViewerCase, path: Path, by: int = 1) -> Path:
    """A corrupted copy of the case's SEG: every frame references the slice ``by`` further on.

    Only the Derivation Image references move (cyclically); plane positions stay
    as they were.  This is the bug that OHIF shows silently on the wrong slices.
    """
    seg = pydicom.dcmread(case.seg)
    order = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in case.sources]
    moved = {uid: order[(k + by) % len(order)] for k, uid in enumerate(order)}
    for item in seg.PerFrameFunctionalGroupsSequence:
        for derivation in item.DerivationImageSequence:
            for source in derivation.SourceImageSequence:
                source.ReferencedSOPInstanceUID = moved[str(source.ReferencedSOPInstanceUID)]
    seg.save_as(path, enforce_file_format=True)
    return path
