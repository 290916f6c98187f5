"""Geometry around the L/R marker detector: letterbox, anchors, box decoding, NMS.

Everything here is plain NumPy so that it can be checked with known answers
without a network.  The conventions follow MI2RLNET_MODELS.md section 4.1:

- letterbox: scale = size / max(h, w), cv2 INTER_LINEAR resize to
  (int(w*scale), int(h*scale)), pasted centred on a canvas filled with 128;
- anchors: levels P3..P7 (strides 8..128, base sizes 32..512), 9 per
  location ordered ratio-major (ratios h/w 0.5, 1, 2; scales 1, 2^(1/3),
  2^(2/3)), centred on ((x + 0.5) * stride, (y + 0.5) * stride), in
  level, then (y, x, anchor) row-major order: 49,104 anchors at 512;
- decoding: each corner moves by 0.2 * delta * anchor width/height;
- NMS: greedy, suppress IoU > threshold, no "+1" in areas, like
  ``tf.image.non_max_suppression``.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

STRIDES = (8, 16, 32, 64, 128)
BASE_SIZES = (32, 64, 128, 256, 512)
RATIOS = (0.5, 1.0, 2.0)
SCALES = (1.0, 2.0 ** (1.0 / 3.0), 2.0 ** (2.0 / 3.0))
BOX_STD = 0.2
LETTERBOX_FILL = 128


# --- letterbox -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Letterbox:
    """How an image of ``height`` x ``width`` was placed on a ``size`` x ``size`` canvas."""

    height: int
    width: int
    size: int
    scale: float
    offset_x: int
    offset_y: int

    @classmethod
    def for_image(cls, height: int, width: int, size: int = 512) -> Letterbox:
        scale = size / max(height, width)
        new_w, new_h = int(width * scale), int(height * scale)
        return cls(height, width, size, scale, (size - new_w) // 2, (size - new_h) // 2)

    @property
    def resized_shape(self) -> tuple[int, int]:
        """(height, width) of the image inside the canvas."""
        return int(self.height * self.scale), int(self.width * self.scale)

    def apply(self, image: np.ndarray, fill: int = LETTERBOX_FILL) -> np.ndarray:
        """Resize ``image`` (H, W[, C]) and paste it centred on a constant canvas."""
        if image.shape[:2] != (self.height, self.width):
            raise ValueError(f"letterbox made for {(self.height, self.width)}, image is {image.shape[:2]}")
        new_h, new_w = self.resized_shape
        resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        canvas = np.full((self.size, self.size, *image.shape[2:]), fill, dtype=image.dtype)
        canvas[self.offset_y : self.offset_y + new_h, self.offset_x : self.offset_x + new_w] = resized
        return canvas

    def to_canvas(self, boxes: np.ndarray) -> np.ndarray:
        """Original-pixel boxes (x1, y1, x2, y2) -> canvas coordinates."""
        boxes = np.asarray(boxes, dtype=np.float64)
        out = boxes * self.scale
        out[..., 0::2] += self.offset_x
        out[..., 1::2] += self.offset_y
        return out

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Canvas boxes -> original pixels: undo offset then scale, clip x to [0, w-1] and y to [0, h-1]."""
        boxes = np.asarray(boxes, dtype=np.float64)
        out = boxes.copy()
        out[..., 0::2] = np.clip((boxes[..., 0::2] - self.offset_x) / self.scale, 0, self.width - 1)
        out[..., 1::2] = np.clip((boxes[..., 1::2] - self.offset_y) / self.scale, 0, self.height - 1)
        return out


# --- anchors -------------------------------------------------------------------------------------


def feature_sizes(image_size: int) -> list[int]:
    """Side of the P3..P7 feature maps for a square input (each stride-2 'same' step rounds up)."""
    return [-(-image_size // stride) for stride in STRIDES]


def _base_anchors(base_size: float) -> np.ndarray:
    """The 9 anchors of one location, centred on 0, ratio-major: anchor a uses SCALES[a % 3], RATIOS[a // 3]."""
    anchors = np.zeros((len(RATIOS) * len(SCALES), 4))
    for a in range(len(anchors)):
        scale, ratio = SCALES[a % len(SCALES)], RATIOS[a // len(SCALES)]
        w = np.sqrt((base_size * scale) ** 2 / ratio)
        h = w * ratio
        anchors[a] = (-w / 2, -h / 2, w / 2, h / 2)
    return anchors


def generate_anchors(image_size: int = 512) -> np.ndarray:
    """All anchors (A, 4) as (x1, y1, x2, y2) in the network input's pixels, in head output order."""
    levels = []
    for stride, base, side in zip(STRIDES, BASE_SIZES, feature_sizes(image_size)):
        centres = (np.arange(side) + 0.5) * stride
        cy, cx = np.meshgrid(centres, centres, indexing="ij")  # row-major: y outer, x inner
        shifts = np.stack([cx, cy, cx, cy], axis=-1).reshape(-1, 1, 4)
        levels.append((shifts + _base_anchors(base)[None]).reshape(-1, 4))
    return np.concatenate(levels, axis=0)


def decode_boxes(anchors: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """Apply regressions (A, 4) to anchors (A, 4); each corner moves by 0.2 * delta * anchor side."""
    widths = anchors[:, 2] - anchors[:, 0]
    heights = anchors[:, 3] - anchors[:, 1]
    scale = np.stack([widths, heights, widths, heights], axis=1)
    return anchors + BOX_STD * deltas * scale


def clip_boxes(boxes: np.ndarray, image_size: int) -> np.ndarray:
    """Clip to the network input, [0, size - 1] on both axes."""
    return np.clip(boxes, 0, image_size - 1)


# --- NMS and class-specific filtering ----------------------------------------------------------------


def _normalised(boxes: np.ndarray) -> np.ndarray:
    """(x1, y1, x2, y2) with x1 <= x2 and y1 <= y2, whatever order the corners came in."""
    x = np.sort(boxes[..., 0::2], axis=-1)
    y = np.sort(boxes[..., 1::2], axis=-1)
    return np.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box with many; corner order does not matter, areas without +1 (as TF computes it)."""
    a, b = _normalised(np.asarray(box, dtype=np.float64)), _normalised(np.asarray(boxes, dtype=np.float64))
    inter_w = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    inter_h = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.5, max_output: int = 300) -> np.ndarray:
    """Greedy NMS; returns kept indices in descending score order (ties keep the lower index first)."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < max_output:
        best = order[0]
        keep.append(int(best))
        rest = order[1:]
        order = rest[iou_one_to_many(boxes[best], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


@dataclass(frozen=True)
class Detections:
    """Kept boxes (K, 4), scores (K,) and class indices (K,), sorted by descending score."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def filter_detections(
    boxes: np.ndarray,
    probabilities: np.ndarray,
    score_threshold: float = 0.85,
    iou_threshold: float = 0.5,
    max_detections: int = 300,
) -> Detections:
    """Per class: keep scores > threshold, NMS; then merge the classes and keep the top ``max_detections``.

    Boxes, scores and labels are gathered with the same indices, so they stay
    aligned (the original code zipped filtered boxes with unfiltered scores).
    """
    kept_boxes, kept_scores, kept_labels = [], [], []
    for label in range(probabilities.shape[1]):
        candidates = np.flatnonzero(probabilities[:, label] > score_threshold)
        if candidates.size == 0:
            continue
        chosen = candidates[nms(boxes[candidates], probabilities[candidates, label], iou_threshold, max_detections)]
        kept_boxes.append(boxes[chosen])
        kept_scores.append(probabilities[chosen, label])
        kept_labels.append(np.full(chosen.size, label, dtype=np.int64))
    if not kept_boxes:
        return Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))
    all_boxes, all_scores, all_labels = (np.concatenate(x) for x in (kept_boxes, kept_scores, kept_labels))
    top = np.argsort(-all_scores, kind="stable")[:max_detections]
    return Detections(all_boxes[top], all_scores[top], all_labels[top])
