"""Enhanced vs non-enhanced chest CT from the attenuation of the blood pool, without a network.

Why this works: unenhanced blood measures about 30-50 HU (up to ~60-70 HU
with a high haematocrit), while iodinated contrast lifts the aorta and heart
chambers above ~150 HU in the arterial and portal-venous phases (CT
angiography 250-500 HU).  The two populations are far apart, so a robust
measurement of the blood pool and a threshold between them decide the
question that the MI2RLNet network (MI2RLNET_MODELS.md section 4.3) answers
slice by slice, and answer it for the whole series.

How the blood pool is found on one axial slice (all sizes in millimetres, so
the method does not depend on the matrix size):

1. a small median filter tames the noise;
2. the body is the largest connected region above -500 HU, holes filled;
3. the lungs are the body's voxels below ``lung_hu`` (-400 HU); a slice
   without a sizeable lung area is not a chest slice and is not used;
4. the mediastinum is the convex hull of the lungs, minus the lungs and
   minus two zones around bone, so that the vertebral body's cancellous
   core (150-300 HU, as bright as enhanced blood) and the sternum never
   count as blood: every dense structure (> ``bone_hu``) replaced by its
   convex hull, and the vertebra found by its position behind the lungs
   (which still works when its cortex is too thin or blurred to pass
   ``bone_hu``);
5. soft tissue and blood in the mediastinum (0 HU up to ``bone_hu``; fat is
   below 0) are eroded by ``core_radius_mm``: only thick, round structures
   survive - heart chambers, ascending and descending aorta, pulmonary
   trunk - and thin walls, partial-volume edges and small nodes vanish;
6. of the surviving structures, those whose median HU is within
   ``pool_tolerance_hu`` of the brightest one form the blood pool (so a
   non-enhancing mass next to an enhanced aorta does not dilute it); when
   the pool clearly holds two intensity classes (enhanced blood and the
   myocardium left after erosion) only the bright one is kept.

The series decision takes the median HU of all blood-pool voxels of all
used slices and turns its distance to ``threshold_hu`` into a probability
with a logistic of width ``scale_hu``.  The default threshold (130 HU) sits
below the often-quoted 150 HU because routine portal-venous chest CT can
measure 130-170 HU in the blood pool while unenhanced blood stays below
~70 HU; delayed-phase scans (~100-130 HU) therefore come out as
"Non-Enhanced" with low confidence rather than confidently wrong.

Outcome when the pixels do not show a chest: :class:`InputError` whose
message starts with "undetermined".  A header-fix check must not guess, and
an exception is the one answer the node cannot mistake for a label; a
measurement close to the threshold is not an error and comes back as a label
with a probability near 0.5.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from pydicom.dataset import Dataset
from scipy import ndimage

from ai_models.base import Model
from ai_models.errors import InputError
from ai_models.info import ModelInfo
from ai_models.inputs import Source, modality_values, read_datasets
from ai_models.registry import register
from ai_models.results import Classification, SliceEvidence

# The same strings as the network model (ai_models.chest.enhancement), so that rules and
# outputs treat both alike.
LABELS = ("Non-Enhanced", "Enhanced")

# ContrastBolusAgent values that say "no contrast" rather than naming an agent (compared upper-case).
NO_CONTRAST_VALUES = frozenset(
    {"NONE", "NO", "N", "NIL", "-", "0", "N/A", "NA", "NO CONTRAST", "NON-CONTRAST", "NON CONTRAST", "WITHOUT"}
)

DEFAULT_PIXEL_SPACING_MM = 0.7
# Cancellous bone of the vertebral body measures 150-300 HU (less with osteoporosis).
SPINE_HU = 150.0

INFO = ModelInfo(
    name="enhancement-hu",
    task="enhanced vs non-enhanced chest CT (HU statistics)",
    modalities=("CT",),
    input_kind="series",
    output_kind="classification",
    version="1.0",
    description=(
        "Weight-free baseline: finds the mediastinal blood pool (heart chambers, aorta) with classical image "
        "processing and calls the series enhanced when its median attenuation is above a threshold between "
        "unenhanced blood (30-50 HU) and contrast-enhanced blood (>150 HU)."
    ),
    labels=LABELS,
    header_fix="ContrastBolusAgent",
    caveats=(
        "delayed-phase scans (blood ~100-130 HU) fall near the threshold and get low confidence",
        "dense calcification, stents, valves or metal in the blood pool raise the measurement",
        "arm-down streaks and very low dose noise can hide the lungs or the blood pool (undetermined)",
        "needs chest slices with both lungs; abdomen-only or head series are undetermined",
        "a vertebral cortex below bone_hu (severe osteoporosis, thick slices) can let cancellous bone count as blood",
    ),
    options={
        "threshold_hu": 130.0,
        "scale_hu": 15.0,
        "lung_hu": -400.0,
        "bone_hu": 600.0,
        "core_radius_mm": 4.0,
        "min_structure_mm2": 100.0,
        "pool_tolerance_hu": 50.0,
        "min_total_area_mm2": 300.0,
        "max_iqr_hu": 200.0,
        "max_slices": 24,
    },
)


def _disk(radius_px: int) -> np.ndarray:
    r = max(int(radius_px), 0)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (yy * yy + xx * xx) <= r * r + 0.5


def _px(mm: float, spacing_mm: float) -> int:
    """A length in mm as a whole number of pixels, at least 1."""
    return max(1, int(round(mm / spacing_mm)))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _convex_hull(mask: np.ndarray) -> np.ndarray:
    """Filled convex hull of all True pixels of a 2D mask."""
    out = np.zeros(mask.shape, np.uint8)
    ys, xs = np.nonzero(mask)
    if len(xs) >= 3:
        hull = cv2.convexHull(np.stack([xs, ys], axis=1).astype(np.int32))
        cv2.fillConvexPoly(out, hull, 1)
    else:
        out[ys, xs] = 1
    return out.astype(bool)


def _bone_zone(bone: np.ndarray, spacing_mm: float, min_area_mm2: float = 15.0) -> np.ndarray:
    """Bone plus everything a bone structure encloses, dilated by 3 mm.

    A vertebra's cortex surrounds cancellous bone that measures like enhanced
    blood.  Noise and partial volume break the thin cortex into fragments, so
    fragments closer than 3 mm are joined first; the convex hull of each
    joined structure then covers the core even when the ring is open.
    """
    zone = bone.copy()
    joined = ndimage.binary_closing(bone, _disk(_px(3.0, spacing_mm)), border_value=0)
    labels, n = ndimage.label(joined | bone)
    if n:
        areas = ndimage.sum_labels(np.ones_like(bone, np.float32), labels, index=np.arange(1, n + 1))
        for index in np.nonzero(areas * spacing_mm**2 >= min_area_mm2)[0]:
            zone |= _convex_hull(labels == index + 1)
    return ndimage.binary_dilation(zone, _disk(_px(3.0, spacing_mm)))


def _spine_zone(smooth: np.ndarray, body: np.ndarray, lungs: np.ndarray, spacing_mm: float) -> np.ndarray:
    """The vertebra found by position, not by its cortex: the dense structure behind the lungs' centre.

    The cortex threshold of :func:`_bone_zone` fails when the cortex is thin
    or blurred (osteoporosis, thick slices, coarse pixels), and the
    cancellous core then looks exactly like enhanced blood.  In a supine
    patient the vertebral body is the structure above ``SPINE_HU`` that
    overlaps most with a midline strip behind the centre of the lungs; its
    convex hull, dilated by 3 mm, is excluded.  An enhanced aorta touching
    the vertebra goes with it, which costs some blood-pool voxels but never
    lets bone in.
    """
    ys, xs = np.nonzero(lungs)
    mid_x = (xs.min() + xs.max()) / 2.0
    half_width = 0.12 * (xs.max() - xs.min())
    strip = np.zeros(body.shape, bool)
    strip[int(ys.mean()) :, max(0, int(mid_x - half_width)) : int(mid_x + half_width) + 1] = True
    dense = body & ~lungs & (smooth > SPINE_HU)
    labels, n = ndimage.label(dense)
    if n == 0:
        return np.zeros(body.shape, bool)
    overlap = np.bincount(labels[strip & dense], minlength=n + 1)
    overlap[0] = 0
    if overlap.max() * spacing_mm**2 < 50.0:
        return np.zeros(body.shape, bool)
    return ndimage.binary_dilation(_convex_hull(labels == int(np.argmax(overlap))), _disk(_px(3.0, spacing_mm)))


def find_blood_pool(hu: np.ndarray, spacing_mm: float, options: dict[str, Any]) -> tuple[np.ndarray, str]:
    """Mask of the mediastinal blood pool on one axial HU slice, and why it is empty when it is.

    ``options`` holds the thresholds of :data:`INFO` (``lung_hu``, ``bone_hu``,
    ``core_radius_mm``, ``min_structure_mm2``, ``pool_tolerance_hu``).
    """
    empty = np.zeros(hu.shape, bool)
    # About 2.5 mm, as 3 or 5 pixels (the sizes OpenCV's fast float median takes).
    smooth = cv2.medianBlur(hu.astype(np.float32), 5 if spacing_mm < 0.8 else 3)
    body = ndimage.binary_fill_holes(_largest_component(smooth > -500.0))
    body_area = int(body.sum())
    if body_area < 0.05 * hu.size:
        return empty, "no body"
    lungs = ndimage.binary_opening(body & (smooth < options["lung_hu"]), _disk(1))
    labels, n = ndimage.label(lungs)
    if n == 0:
        return empty, "no lungs"
    areas = np.bincount(labels.ravel())[1:]
    keep = np.nonzero(areas >= 0.01 * body_area)[0] + 1
    lungs = np.isin(labels, keep)
    if lungs.sum() < 0.05 * body_area:
        return empty, "no lungs"
    # Bone from the unfiltered values: the median filter would erase a thin cortex.
    bone = body & (hu > options["bone_hu"])
    mediastinum = (
        _convex_hull(lungs)
        & body
        & ~ndimage.binary_dilation(lungs, _disk(_px(2.0, spacing_mm)))
        & ~_bone_zone(bone, spacing_mm)
        & ~_spine_zone(smooth, body, lungs, spacing_mm)
    )
    tissue = mediastinum & (smooth > 0.0) & (smooth < options["bone_hu"])
    core = ndimage.binary_erosion(tissue, _disk(_px(options["core_radius_mm"], spacing_mm)))
    labels, n = ndimage.label(core)
    if n == 0:
        return empty, "no thick soft-tissue structure in the mediastinum"
    pixel_area = spacing_mm**2
    candidates: list[tuple[int, float]] = []
    for index, window in enumerate(ndimage.find_objects(labels), start=1):
        region = labels[window] == index
        area = int(region.sum())
        if area * pixel_area >= options["min_structure_mm2"] and area / region.size >= 0.35:
            candidates.append((index, float(np.median(hu[window][region]))))
    if not candidates:
        return empty, "no thick soft-tissue structure in the mediastinum"
    brightest = max(median for _, median in candidates)
    chosen = [index for index, median in candidates if median >= brightest - options["pool_tolerance_hu"]]
    pool = np.isin(labels, chosen)
    split = _bright_class_threshold(smooth[pool])
    if split is not None:
        pool &= smooth >= split
    return pool, ""


def _bright_class_threshold(values: np.ndarray) -> float | None:
    """Otsu threshold between myocardium and enhanced blood when both are present, else None.

    The eroded heart still holds part of its wall (~100 HU when enhanced);
    keeping only the bright class measures the chambers alone.  The split is
    taken only when the two classes are far apart compared with their
    spread, so a homogeneous (unenhanced) pool is never cut in two.
    """
    if values.size < 20:
        return None
    hist, edges = np.histogram(values, bins=64)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(hist)[:-1]
    weight_high = values.size - weight_low
    sum_low = np.cumsum(hist * centres)[:-1]
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (np.sum(hist * centres) - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_high - mean_low) ** 2
    k = int(np.argmax(between))
    threshold = float(edges[k + 1])
    low, high = values[values < threshold], values[values >= threshold]
    if low.size == 0 or high.size < 0.2 * values.size:
        return None
    spread = np.sqrt((low.var() * low.size + high.var() * high.size) / values.size)
    if high.mean() - low.mean() < max(80.0, 4.0 * spread):
        return None
    return threshold


def _slice_position(ds: Dataset) -> float | None:
    """Position along the slice normal, or None when the geometry is missing."""
    try:
        orientation = np.asarray([float(v) for v in ds.ImageOrientationPatient], float)
        position = np.asarray([float(v) for v in ds.ImagePositionPatient], float)
    except (AttributeError, TypeError, ValueError):
        return None
    if orientation.shape != (6,) or position.shape != (3,):
        return None
    normal = np.cross(orientation[:3], orientation[3:])
    if not np.isfinite(normal).all() or np.linalg.norm(normal) < 1e-6:
        return None
    return float(np.dot(position, normal))


def sort_slices(datasets: Sequence[Dataset]) -> tuple[list[Dataset], str]:
    """Slices in spatial order: by position along the normal, else by InstanceNumber."""
    positions = [_slice_position(ds) for ds in datasets]
    known = [p for p in positions if p is not None]
    if len(known) == len(datasets):
        order = sorted(range(len(datasets)), key=known.__getitem__)
        return [datasets[i] for i in order], "position along slice normal"
    try:
        return sorted(datasets, key=lambda ds: int(ds.InstanceNumber)), "instance number (geometry missing)"
    except (AttributeError, TypeError, ValueError):
        return list(datasets), "as received (geometry and instance numbers missing)"


def _pixel_spacing(ds: Dataset) -> tuple[float, bool]:
    """Mean in-plane spacing in mm, and whether it had to be assumed."""
    try:
        row, col = (float(v) for v in ds.PixelSpacing)
        if row > 0 and col > 0:
            return (row + col) / 2.0, False
    except (AttributeError, TypeError, ValueError):
        pass
    return DEFAULT_PIXEL_SPACING_MM, True


def header_contrast(datasets: Sequence[Dataset]) -> tuple[str | None, bool]:
    """ContrastBolusAgent as written and whether the header records an agent.

    The value is the most frequent non-empty one in the series (None when
    absent or empty everywhere).  Absent, empty and "none"-like values all
    mean no agent was recorded: DICOM includes the Contrast/Bolus module
    only when contrast was given, so a missing agent is the header's claim
    "no contrast", and an enhanced series without it is exactly what this
    header-fix check exists to catch.
    """
    values = [str(ds.get("ContrastBolusAgent", "") or "").strip() for ds in datasets]
    present = [v for v in values if v]
    if not present:
        return None, False
    value = max(sorted(set(present)), key=present.count)
    return value, value.upper() not in NO_CONTRAST_VALUES


def _logistic(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-np.clip(x, -50.0, 50.0))))


class EnhancementHU(Model):
    """Classifies a chest CT series as enhanced or not from blood-pool HU (no weights)."""

    info = INFO

    def _probabilities(self, median_hu: float) -> dict[str, float]:
        p = _logistic((median_hu - self.options["threshold_hu"]) / self.options["scale_hu"])
        return {LABELS[0]: 1.0 - p, LABELS[1]: p}

    def _series(self, source: Source) -> list[Dataset]:
        datasets = [
            ds
            for ds in read_datasets(source)
            if "PixelData" in ds and "LOCALIZER" not in [str(v).upper() for v in ds.get("ImageType", [])]
        ]
        if not datasets:
            raise InputError("enhancement-hu: no axial images with pixel data (localizers are skipped)")
        modalities = {str(ds.get("Modality", "")) for ds in datasets}
        if modalities != {"CT"}:
            raise InputError(f"enhancement-hu needs CT images, got modality {sorted(modalities)}")
        series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
        if len(series) > 1:
            raise InputError(f"enhancement-hu takes one series at a time, got {len(series)}")
        # Localisers or odd reconstructions in the same series: keep the dominant matrix size.
        shapes = Counter((int(ds.Rows), int(ds.Columns)) for ds in datasets)
        main_shape = shapes.most_common(1)[0][0]
        return [ds for ds in datasets if (int(ds.Rows), int(ds.Columns)) == main_shape]

    def predict(self, source: Source) -> Classification:
        datasets, order = sort_slices(self._series(source))
        spacing, spacing_assumed = _pixel_spacing(datasets[0])
        step = max(1, int(np.ceil(len(datasets) / self.options["max_slices"])))
        examined = set(range(len(datasets))[step // 2 :: step])

        evidence: list[SliceEvidence] = []
        pooled: list[np.ndarray] = []
        area_total = 0.0
        reasons: Counter[str] = Counter()
        for index, ds in enumerate(datasets):
            uid = str(ds.SOPInstanceUID)
            if index not in examined:
                evidence.append(SliceEvidence(uid, {}, used=False))
                continue
            hu = modality_values(ds)
            if hu.ndim != 2:
                raise InputError(f"enhancement-hu: {uid} is not a single-frame image (shape {hu.shape})")
            mask, reason = find_blood_pool(hu, spacing, self.options)
            if not mask.any():
                reasons[reason] += 1
                evidence.append(SliceEvidence(uid, {}, used=False))
                continue
            values = hu[mask]
            pooled.append(values)
            area_total += float(mask.sum()) * spacing**2
            evidence.append(SliceEvidence(uid, self._probabilities(float(np.median(values)))))

        slices_used = len(pooled)
        needed = min(3, len(examined))
        if slices_used < needed or area_total < self.options["min_total_area_mm2"]:
            why = ", ".join(f"{r}: {c}" for r, c in reasons.most_common()) or "blood pool too small"
            raise InputError(
                f"undetermined: blood pool found on {slices_used} of {len(examined)} examined slices "
                f"({area_total:.0f} mm2; needs {needed} slices and {self.options['min_total_area_mm2']:.0f} mm2); "
                f"slices without evidence - {why}"
            )
        values = np.concatenate(pooled)
        median = float(np.median(values))
        q25, q75 = (float(v) for v in np.percentile(values, [25, 75]))
        if q75 - q25 > self.options["max_iqr_hu"]:
            raise InputError(
                f"undetermined: blood-pool attenuation is not homogeneous (IQR {q75 - q25:.0f} HU > "
                f"{self.options['max_iqr_hu']:.0f} HU); noise, metal or a non-chest image"
            )
        probabilities = self._probabilities(median)
        label = LABELS[1] if probabilities[LABELS[1]] >= 0.5 else LABELS[0]
        slice_labels = [max(e.probabilities, key=e.probabilities.__getitem__) for e in evidence if e.used]
        header_value, header_claims = header_contrast(datasets)
        return Classification(
            model=self.info.name,
            model_version=self.info.version,
            label=label,
            probabilities=probabilities,
            source_sop_instance_uids=[str(ds.SOPInstanceUID) for ds in datasets],
            evidence=evidence,
            header_value=header_value,
            agrees_with_header=header_claims == (label == LABELS[1]),
            details={
                "method": "median HU of the mediastinal blood pool (heart chambers, aorta) vs threshold",
                "blood_pool_median_hu": median,
                "blood_pool_q25_hu": q25,
                "blood_pool_q75_hu": q75,
                "voxels_used": int(values.size),
                "blood_pool_area_mm2": area_total,
                "slices_used": slices_used,
                "slices_examined": len(examined),
                "slices_total": len(datasets),
                "slice_agreement": slice_labels.count(label) / len(slice_labels),
                "threshold_hu": self.options["threshold_hu"],
                "scale_hu": self.options["scale_hu"],
                "slice_order": order,
                "pixel_spacing_mm": spacing,
                "pixel_spacing_assumed": spacing_assumed,
                "header_claims_contrast": header_claims,
            },
        )


register(INFO, EnhancementHU)
