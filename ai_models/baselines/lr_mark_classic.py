"""Burned-in L/R marker detection on radiographs without a network.

MI2RLNet's detector (MI2RLNET_MODELS.md section 4.1) is an EfficientDet that
needs its weight file and, in the original code, an old TensorFlow.  The
markers it looks for are easy to describe, though: a single letter, drawn or
exposed at (nearly) full brightness, a few percent of the image high, near an
edge of the image, standing out from its local background; sometimes framed
by a box.  This module finds exactly that:

1. **Display image.**  Modality values, inverted for MONOCHROME1 so that a
   marker is bright in every image, scaled to 0..1 from a low percentile to
   the brightest structure; images larger than ``work_size`` are shrunk
   (area averaging) first.
2. **Local contrast.**  The image minus its opening (by a square and a
   diamond a few percent of the image wide) keeps thin bright strokes and
   drops the anatomy.  Pixels above a low level are grouped into
   8-connected components, kept when they also reach a high level
   (hysteresis); both levels follow the measured noise.  Only components
   whose centre lies in the outer ``border_fraction`` of the image count.
3. **Shapes.**  Each component is thresholded again at its own local
   contrast, which separates a letter from its frame and from anatomy it
   touches.  Shapes with soft edges (anatomy; edge wider than
   ``max_edge_px``) are dropped; letters must be between ``min_height`` and
   ``max_height`` of the shorter image side.
4. **Frames.**  A shape lit along all four sides is a box around a marker:
   the letter is what lies inside it, and the reported box is the frame's,
   so that an eraser removes both.
5. **Which letter.**  The letter's mask, resized to 32x32 and blurred, is
   compared by normalised correlation with templates of "L" and "R"
   rendered by OpenCV in every Hershey font, upright and italic, and drawn
   as sans-serif block letters (R with an upright and a slanted leg), each
   at three stroke widths.  Templates were chosen over hand-made shape
   features (holes, quadrant fill) because the same measure also says how
   letter-like a blob is, which rejects wires, electrodes and rib ends; the
   letter is the best-matching template's, the score its correlation.
   Candidates below ``min_score``, or whose best "L" and best "R" are within
   ``min_margin`` of each other, are dropped.
6. **Words are not markers.**  A letter with a sharp neighbour of similar
   height on the same line ("PORTABLE", "AP SUPINE") is part of text and
   dropped.

Limits: markers that are rotated or mirrored, drawn darker than their
surroundings, lying on a saturated (white) collimation border, or in fonts
far from the Hershey shapes are missed; see docs/models.md for measured
figures.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import cv2
import numpy as np
from pydicom.dataset import Dataset

from ai_models.base import Model
from ai_models.chest.radiograph import radiograph_to_unit
from ai_models.errors import InputError
from ai_models.info import ModelInfo
from ai_models.inputs import Source, read_datasets
from ai_models.registry import register
from ai_models.results import Box, Detection

LETTERS = {"L": "left", "R": "right"}
TEMPLATE_SIZE = 32

# All Hershey fonts OpenCV can draw (the synthetic phantoms render markers with these too).
HERSHEY_FONTS: tuple[int, ...] = (
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_PLAIN,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
    cv2.FONT_HERSHEY_COMPLEX_SMALL,
    cv2.FONT_HERSHEY_SCRIPT_SIMPLEX,
    cv2.FONT_HERSHEY_SCRIPT_COMPLEX,
)
# Fonts the letter templates are rendered in: every Hershey font.
TEMPLATE_FONTS: tuple[int, ...] = HERSHEY_FONTS
# Stroke width of the templates as a fraction of the letter height.
TEMPLATE_STROKES = (0.06, 0.12, 0.2)

INFO = ModelInfo(
    name="lr-mark-classic",
    task="L/R marker detection on radiographs (classical image processing)",
    modalities=("CR", "DX"),
    input_kind="image",
    output_kind="detection",
    version="1.0",
    description=(
        "Weight-free baseline: finds bright, letter-sized, isolated components near the image border "
        "(top-hat contrast, hysteresis threshold) and tells L from R by normalised correlation with "
        "rendered letter templates. Boxes are in original pixel coordinates and cover a frame when present."
    ),
    labels=("left", "right"),
    caveats=(
        "rotated, mirrored or dark (negative) markers are not found",
        "a marker on a saturated collimation border has no contrast and is not found",
        "single letters of other text (a lone 'P' or 'B') can be mistaken for R",
    ),
    options={
        "border_fraction": 0.25,
        "min_height": 0.012,
        "max_height": 0.15,
        "min_score": 0.7,
        "min_margin": 0.03,
        "max_edge_px": 3.5,
        "work_size": 1024,
    },
)


@dataclass
class Candidate:
    """One marker found in the working image (coordinates at working scale, x1/y1 exclusive)."""

    x0: int
    y0: int
    x1: int
    y1: int
    letter: str
    score: float
    framed: bool


def display_image(ds: Dataset) -> np.ndarray:
    """The image as float32 0..1 with dense (and marker) pixels bright, whatever the photometric.

    Modality LUT and MONOCHROME1 inversion come from
    :func:`ai_models.chest.radiograph.radiograph_to_unit` (no VOI window, so
    nothing above the window is clipped away).  The range is then set from
    the 0.5th percentile to the brightest structure (after a 3x3 median, so
    that a hot pixel does not set the scale): a marker, drawn at or near
    full brightness, sits at the top of it.
    """
    values = radiograph_to_unit(ds, voi="none")
    lo = float(np.percentile(values, 0.5))
    hi = float(cv2.medianBlur(values, 3).max())
    if hi <= lo:
        return np.zeros(values.shape, np.float32)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _normalised(patch: np.ndarray) -> np.ndarray:
    """A mask patch as a zero-mean unit-norm vector, after resizing and a light blur.

    The blur makes the correlation tolerant of one-pixel shifts and of
    strokes thicker or thinner than the template's.
    """
    small = cv2.resize(patch.astype(np.float32), (TEMPLATE_SIZE, TEMPLATE_SIZE), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), 1.0).ravel()
    small -= small.mean()
    norm = float(np.linalg.norm(small))
    return small / norm if norm > 0 else small


def _crop(canvas: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(canvas > 127)
    return canvas[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] > 127


def _hershey_letters(height: int) -> list[tuple[str, np.ndarray]]:
    """L and R in every Hershey font, upright and italic, at each template stroke width."""
    out = []
    for letter in LETTERS:
        for font in TEMPLATE_FONTS:
            for italic in (0, cv2.FONT_ITALIC):
                (_, unit_h), _ = cv2.getTextSize(letter, font | italic, 1.0, 1)
                for stroke in TEMPLATE_STROKES:
                    canvas = np.zeros((3 * height, 3 * height), np.uint8)
                    thickness = max(1, int(round(stroke * height)))
                    cv2.putText(canvas, letter, (height // 2, 2 * height), font | italic, height / unit_h, 255,
                                thickness, cv2.LINE_AA)
                    out.append((letter, _crop(canvas)))
    return out


def _block_letters(height: int) -> list[tuple[str, np.ndarray]]:
    """Sans-serif L and R drawn from strokes, as lead markers are cut.

    The Hershey R has a slanted leg only; many sans-serif faces (and lead
    markers) stand the leg upright under the bowl, so both are drawn.
    """
    out = []
    width = int(0.68 * height)
    for stroke in TEMPLATE_STROKES:
        t = max(1, int(round(stroke * height)))
        pad = t
        top, bottom, left, right = pad, pad + height, pad, pad + width
        middle = top + int(0.5 * height)
        bowl_r = (middle - top) // 2
        el = np.zeros((height + 2 * pad, width + 2 * pad), np.uint8)
        cv2.line(el, (left, top), (left, bottom), 255, t)
        cv2.line(el, (left, bottom), (right, bottom), 255, t)
        out.append(("L", _crop(el)))
        for leg in ("upright", "slanted"):
            ar = np.zeros_like(el)
            cv2.line(ar, (left, top), (left, bottom), 255, t)
            cv2.line(ar, (left, top), (right - bowl_r, top), 255, t)
            cv2.line(ar, (left, middle), (right - bowl_r, middle), 255, t)
            cv2.ellipse(ar, (right - bowl_r, top + bowl_r), (bowl_r, bowl_r), 0, -90, 90, 255, t)
            if leg == "upright":
                cv2.line(ar, (right - bowl_r, middle), (right - t // 2, middle + bowl_r), 255, t)
                cv2.line(ar, (right - t // 2, middle + bowl_r), (right - t // 2, bottom), 255, t)
            else:
                cv2.line(ar, (right - 2 * bowl_r, middle), (right, bottom), 255, t)
            out.append(("R", _crop(ar)))
    return out


@lru_cache(maxsize=1)
def _templates() -> tuple[np.ndarray, tuple[str, ...], tuple[float, float]]:
    """Normalised template vectors, their letters, and the range of their width/height ratios."""
    shapes = _hershey_letters(64) + _block_letters(64)
    vectors = np.stack([_normalised(mask) for _, mask in shapes])
    aspects = [mask.shape[1] / mask.shape[0] for _, mask in shapes]
    return vectors, tuple(letter for letter, _ in shapes), (min(aspects), max(aspects))


def classify_letter(mask: np.ndarray) -> tuple[str, float, float]:
    """Best letter for a binary letter mask, its correlation, and the margin over the other letter."""
    vectors, letters, _ = _templates()
    scores = vectors @ _normalised(mask)
    best = {letter: max(float(s) for s, lab in zip(scores, letters) if lab == letter) for letter in LETTERS}
    ranked = sorted(best, key=best.__getitem__, reverse=True)
    return ranked[0], best[ranked[0]], best[ranked[0]] - best[ranked[1]]


def _frame_inset(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Where the inside of a box drawn around a marker starts, from (top, bottom, left, right); None if no box.

    A frame lights (almost) a whole row or column near each of the four
    sides; a letter never does on all four.  The row is searched in the
    outer quarter so that a noise speck stuck to the frame does not hide
    it, and the inside must not be solid (a bright square is not a frame).
    """
    h, w = mask.shape
    if h < 8 or w < 8:
        return None
    insets = []
    for side in (mask, mask[::-1], mask.T, mask.T[::-1]):
        coverage = side.mean(axis=1)
        search = max(2, side.shape[0] // 4)
        lit = np.nonzero(coverage[:search] >= 0.9)[0]
        if len(lit) == 0:
            return None
        row = int(lit[0])
        while row < side.shape[0] // 4 and coverage[row] >= 0.5:
            row += 1
        insets.append(row)
    top, bottom, left, right = insets
    inside = mask[top : h - bottom, left : w - right]
    if inside.size == 0 or inside.mean() > 0.8:
        return None
    return top, bottom, left, right


@dataclass
class _Part:
    """A bright component, re-segmented at its own contrast; box in working pixels (x1, y1 exclusive)."""

    mask: np.ndarray
    x0: int
    y0: int
    edge_px: float  # width of the rise from background to the shape's brightness

    @property
    def letter_like(self) -> bool:
        """Shaped like a character of text: not much wider than tall, not a solid block (bold B, E fill ~85 %)."""
        h, w = self.mask.shape
        return w <= 1.5 * h and self.mask.mean() < 0.92

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.x0, self.y0, self.x0 + self.mask.shape[1], self.y0 + self.mask.shape[0]


def _refine(detail: np.ndarray, labels: np.ndarray, index: int, box: tuple[int, int, int, int]) -> list[_Part]:
    """The shapes in one bright component, thresholded between their brightness and the background's.

    The global hysteresis threshold finds *where* something bright is; its
    low level is set for the noisiest part of the image, so around a marker
    it lets in noise that closes an R's loop or fills a frame, and it can
    join a marker to its frame or to bright anatomy.  A threshold from the
    local contrast gives the real strokes, and every separate shape in it
    becomes a part of its own.  ``detail`` is the unblurred image minus its
    opening: the anatomy's smooth shading and edges are gone from it, so a
    marker lying across the edge of the body is cut out cleanly.
    """
    rows, cols = detail.shape
    x, y, w, h = box

    def window(margin: int) -> tuple[slice, slice]:
        return (
            slice(max(0, y - margin), min(rows, y + h + margin)),
            slice(max(0, x - margin), min(cols, x + w + margin)),
        )

    near = window(max(3, h // 4))
    crop, seed = detail[near], labels[near] == index
    # Background: neither this component (nor its soft edge) nor any other bright one,
    # such as the frame around a letter.
    around = (labels[near] == 0) & ~cv2.dilate(seed.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    if around.sum() < 10:
        return []
    foreground = float(np.percentile(crop[seed], 90))
    # The upper quartile: where the marker sits on an edge of the anatomy,
    # the threshold must clear the brighter side.
    background = float(np.percentile(crop[around], 75))
    if foreground - background < 0.1:
        return []
    # Below halfway: a marker straddling the body's edge has less contrast on the bright side.
    threshold = background + 0.35 * (foreground - background)

    # The shapes may reach beyond the component (a frame side that the hysteresis
    # missed): widen the window until none of them is cut by its edge.
    for margin in (max(3, h // 4), max(6, h // 2), max(12, h)):
        rows_, cols_ = window(margin)
        crop, seed = detail[rows_, cols_], labels[rows_, cols_] == index
        mask = (crop >= threshold).astype(np.uint8)
        count, shapes, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        kept = [int(k) for k in np.unique(shapes[seed & (mask > 0)]) if k > 0 and stats[k, cv2.CC_STAT_AREA] >= 6]
        touching = np.isin(shapes, kept)
        cut = (
            (touching[0].any() and rows_.start > 0)
            or (touching[-1].any() and rows_.stop < rows)
            or (touching[:, 0].any() and cols_.start > 0)
            or (touching[:, -1].any() and cols_.stop < cols)
        )
        if not cut:
            break
    slope = np.hypot(cv2.Sobel(crop, cv2.CV_32F, 1, 0, scale=0.125), cv2.Sobel(crop, cv2.CV_32F, 0, 1, scale=0.125))
    parts = []
    for shape in kept:
        sx, sy, sw, sh, _ = (int(v) for v in stats[shape])
        inside = shapes == shape
        rim = cv2.dilate(inside.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~inside
        steepest = float(np.percentile(slope[rim], 75))
        edge = (foreground - background) / steepest if steepest > 0 else np.inf
        parts.append(_Part(inside[sy : sy + sh, sx : sx + sw], cols_.start + sx, rows_.start + sy, edge))
    return parts


def _main_shape(mask: np.ndarray) -> np.ndarray:
    """The mask without specks: components smaller than a fifth of the largest are dropped."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 2:
        return mask.astype(bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    return np.isin(labels, 1 + np.nonzero(areas >= 0.2 * areas.max())[0])


def _contains(outer: tuple[int, int, int, int], inner: tuple[int, int, int, int]) -> bool:
    return outer[0] < inner[0] and outer[1] < inner[1] and inner[2] < outer[2] and inner[3] < outer[3]


def _background(image: np.ndarray, size: int) -> np.ndarray:
    """The image without its thin bright details: the larger of two openings, by a square and a diamond.

    A square alone cannot slide into the wedge along a diagonal edge of the
    body (a sloping shoulder), which then survives in the top-hat as a
    bright, sharp strip; the diamond (a square turned 45 degrees, built by
    repeating a 3x3 cross, so it stays cheap) can.  Neither fits inside a
    letter's stroke or a frame's line.
    """
    square = cv2.morphologyEx(image, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (size, size)))
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    radius = size // 2
    diamond = cv2.dilate(cv2.erode(image, cross, iterations=radius), cross, iterations=radius)
    return np.maximum(square, diamond)


def _bright_parts(image: np.ndarray, options: dict[str, Any]) -> list[_Part]:
    """Bright, high-contrast shapes near the border that are not taller than a framed marker."""
    rows, cols = image.shape
    short = min(rows, cols)
    kernel = max(9, int(0.05 * short) | 1)
    # A slight blur first: it costs a one-pixel stroke half its peak but cuts the noise to a third.
    smooth = cv2.GaussianBlur(image, (0, 0), 0.8)
    opening = _background(smooth, kernel)
    tophat = smooth - opening
    # The top-hat of pure noise is biased upwards (the opening follows the noise's minima):
    # measure its floor and spread rather than assume them.
    floor = float(np.median(tophat))
    spread = float(1.4826 * np.median(np.abs(tophat - floor)))
    high, low = max(0.2, floor + 12.0 * spread), max(0.1, floor + 6.0 * spread)
    count, labels, stats, _ = cv2.connectedComponentsWithStats((tophat >= low).astype(np.uint8), connectivity=8)
    peak = np.zeros(count, np.float32)
    np.maximum.at(peak, labels.ravel(), tophat.ravel())
    max_h = options["max_height"] * short
    border = options["border_fraction"]
    detail = image - opening
    parts: list[_Part] = []
    for index in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[index])
        cx, cy = (x + w / 2) / cols, (y + h / 2) / rows
        if peak[index] < high or area < 6 or h > 1.6 * max_h or min(cx, 1 - cx, cy, 1 - cy) >= border:
            continue
        for part in _refine(detail, labels, index, (x, y, w, h)):
            if part.edge_px <= options["max_edge_px"] and not any(part.box == other.box for other in parts):
                parts.append(part)
    return parts


def _framed_letters(parts: list[_Part]) -> tuple[list[tuple[_Part, _Part]], set[int]]:
    """(letter, frame) pairs, and the indices of the parts they used.

    The letter is either the parts lying inside a frame, or, when letter and
    frame touch and came out as one shape, what is left inside the frame's
    band.
    """
    pairs: list[tuple[_Part, _Part]] = []
    used: set[int] = set()
    for i, frame in enumerate(parts):
        inset = _frame_inset(frame.mask)
        if inset is None:
            continue
        used.add(i)
        h, w = frame.mask.shape
        letter_mask = np.zeros((h, w), bool)
        inner = [j for j, other in enumerate(parts) if j != i and _contains(frame.box, other.box)]
        if inner:
            used.update(inner)
            for j in inner:
                ox, oy = parts[j].x0 - frame.x0, parts[j].y0 - frame.y0
                letter_mask[oy : oy + parts[j].mask.shape[0], ox : ox + parts[j].mask.shape[1]] |= parts[j].mask
        else:  # strip the frame's band, one pixel more for its soft edge
            top, bottom, left, right = (v + 1 for v in inset)
            letter_mask[top : h - bottom, left : w - right] = frame.mask[top : h - bottom, left : w - right]
            letter_mask = _main_shape(letter_mask)
        ys, xs = np.nonzero(letter_mask)
        if len(xs):
            crop = letter_mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
            pairs.append((_Part(crop, frame.x0 + int(xs.min()), frame.y0 + int(ys.min()), frame.edge_px), frame))
    return pairs, used


def find_markers(image: np.ndarray, options: dict[str, Any]) -> list[Candidate]:
    """Markers in a 0..1 display image (bright = dense), best first.

    ``options`` holds the keys of :data:`INFO`.options.
    """
    short = min(image.shape)
    min_h, max_h = options["min_height"] * short, options["max_height"] * short
    parts = _bright_parts(image, options)
    pairs, used = _framed_letters(parts)
    letters: list[tuple[_Part, _Part | None]] = [*pairs, *((p, None) for i, p in enumerate(parts) if i not in used)]

    _, _, (aspect_lo, aspect_hi) = _templates()
    found: list[Candidate] = []
    for letter_part, frame in letters:
        h, w = letter_part.mask.shape
        if not (min_h <= h <= max_h and h >= 8) or not (0.7 * aspect_lo <= w / h <= 1.4 * aspect_hi):
            continue
        # Text neighbours are as crisp as the letter; blurry anatomy beside it does not count.
        neighbours = [p.box for p in parts if p.letter_like and p.edge_px <= 1.5 * letter_part.edge_px]
        if frame is None and _has_text_neighbour(letter_part.box, neighbours):
            continue
        letter, score, margin = classify_letter(letter_part.mask)
        if score < options["min_score"] or margin < options["min_margin"]:
            continue
        box = (frame or letter_part).box
        found.append(Candidate(*box, letter=letter, score=score, framed=frame is not None))
    found.sort(key=lambda c: c.score, reverse=True)
    return found


def _has_text_neighbour(box: tuple[int, int, int, int], others: list[tuple[int, int, int, int]]) -> bool:
    """True when a shape of similar height stands beside ``box`` on the same line of text."""
    x0, y0, x1, y1 = box
    h = y1 - y0
    for ox0, oy0, ox1, oy1 in others:
        oh = oy1 - oy0
        if (ox0, oy0, ox1, oy1) == box or not (0.6 * h <= oh <= 1.6 * h):
            continue
        overlap = min(y1, oy1) - max(y0, oy0)
        gap = max(ox0 - x1, x0 - ox1)  # negative when they overlap (italics lean into each other a little)
        if overlap >= 0.5 * min(h, oh) and -0.2 * h <= gap < 1.0 * h:
            return True
    return False


class LRMarkClassic(Model):
    """Detects burned-in L/R markers on CR/DX images (no weights)."""

    info = INFO

    def predict(self, source: Source) -> Detection:
        datasets = [ds for ds in read_datasets(source) if "PixelData" in ds]
        if not datasets:
            raise InputError("lr-mark-classic: no images with pixel data")
        boxes: list[Box] = []
        framed: list[bool] = []
        per_image: dict[str, int] = {}
        for ds in datasets:
            uid = str(ds.SOPInstanceUID)
            image = display_image(ds)
            factor = min(1.0, self.options["work_size"] / max(image.shape))
            if factor < 1.0:
                size = (max(1, round(image.shape[1] * factor)), max(1, round(image.shape[0] * factor)))
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            scale_x = ds.Columns / image.shape[1]
            scale_y = ds.Rows / image.shape[0]
            found = find_markers(image, self.options)
            per_image[uid] = len(found)
            for c in found:
                boxes.append(
                    Box(c.x0 * scale_x, c.y0 * scale_y, c.x1 * scale_x, c.y1 * scale_y, LETTERS[c.letter],
                        round(c.score, 4), uid)
                )
                framed.append(c.framed)
        return Detection(
            model=self.info.name,
            model_version=self.info.version,
            boxes=boxes,
            source_sop_instance_uids=[str(ds.SOPInstanceUID) for ds in datasets],
            details={
                "markers_per_image": per_image,
                "framed": framed,
                "box_convention": "pixel edges: x0,y0 inclusive, x1,y1 exclusive",
            },
        )


register(INFO, LRMarkClassic)
