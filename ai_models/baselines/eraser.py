"""Erasing burned-in markers: replace the pixels under detected boxes with background.

MI2RLNet leaves erasure to a separate DeepFill network (MI2RLNET_MODELS.md
section 4.1, "Mark erasure").  A marker is small and lies on smooth
anatomy or on air, so classical inpainting from the box's surroundings
restores a plausible background without weights.

Pixel values are kept exact outside the boxes: the result is a copy of the
input in which only the pixels of the boxes, widened by ``margin_px``, may
differ.  Radiographs are 12-16 bit and CT is signed, while OpenCV's inpaint
takes 8-bit, 16-bit unsigned or 32-bit float images; converting to 8 bits
would lose the precision of the filled pixels, so every dtype is inpainted
as float32 (exact for integers up to 2**24) and rounded back to the input's
dtype.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np

from ai_models.results import Box

Method = Literal["inpaint", "fill"]


def box_region(box: Box, shape: tuple[int, ...], margin_px: int) -> tuple[slice, slice]:
    """Rows and columns that erasing ``box`` may change, clipped to the image.

    Columns floor(x0) - margin up to floor(x1) + margin, inclusive (rows
    alike).  Taking floor(x1) inclusive covers the box under both
    conventions in use: pixel edges with x1 exclusive (this package's
    detectors) and inclusive pixel indices (MI2RLNet's JSON); with the first
    it costs one extra column and row.
    """
    rows, cols = shape[0], shape[1]
    c0 = max(0, math.floor(box.x0) - margin_px)
    r0 = max(0, math.floor(box.y0) - margin_px)
    c1 = min(cols, math.floor(box.x1) + 1 + margin_px)
    r1 = min(rows, math.floor(box.y1) + 1 + margin_px)
    return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))


def _ring(region: tuple[slice, slice], shape: tuple[int, ...], width: int) -> tuple[slice, slice]:
    rows, cols = region
    return (
        slice(max(0, rows.start - width), min(shape[0], rows.stop + width)),
        slice(max(0, cols.start - width), min(shape[1], cols.stop + width)),
    )


def erase_boxes(
    pixels: np.ndarray,
    boxes: Sequence[Box],
    margin_px: int = 3,
    method: Method = "inpaint",
    inpaint_radius: int | None = None,
) -> np.ndarray:
    """A copy of ``pixels`` with the content of ``boxes`` replaced by background.

    ``pixels`` is (rows, cols) or (rows, cols, channels) of any integer or
    float dtype; the result has the same shape and dtype.  Each box is
    widened by ``margin_px`` to take the marker's soft edge and a frame's
    outline with it (see :func:`box_region` for exactly which pixels).

    Methods:

    - ``"inpaint"``: OpenCV's Telea inpainting, which continues the
      surrounding values and their gradients into the hole; the filled
      values are then clipped to the range of the pixels around each box, so
      the fill never becomes brighter or darker than its surroundings.
    - ``"fill"``: the median of a band of pixels around each box; flat, but
      never invents structure.

    The input array is not modified.
    """
    if not isinstance(pixels, np.ndarray) or pixels.ndim not in (2, 3):
        raise ValueError("pixels must be a 2D image or a (rows, cols, channels) array")
    if not (np.issubdtype(pixels.dtype, np.integer) or np.issubdtype(pixels.dtype, np.floating)):
        raise TypeError(f"pixels must be integer or float, got {pixels.dtype}")
    if method not in ("inpaint", "fill"):
        raise ValueError(f"method must be 'inpaint' or 'fill', got {method!r}")
    if margin_px < 0:
        raise ValueError("margin_px must be >= 0")
    out = pixels.copy()
    regions = [box_region(b, pixels.shape, margin_px) for b in boxes]
    regions = [r for r in regions if r[0].stop > r[0].start and r[1].stop > r[1].start]
    if not regions:
        return out
    mask = np.zeros(pixels.shape[:2], np.uint8)
    for rows, cols in regions:
        mask[rows, cols] = 1
    if mask.all():
        raise ValueError("the boxes cover the whole image: there is no background to fill from")

    radius = max(3, margin_px) if inpaint_radius is None else int(inpaint_radius)
    band = max(2, radius)
    known = mask == 0
    channels = [pixels] if pixels.ndim == 2 else [pixels[..., c] for c in range(pixels.shape[2])]
    filled_channels = []
    for channel in channels:
        work = channel.astype(np.float32)
        filled = cv2.inpaint(work, mask, radius, cv2.INPAINT_TELEA) if method == "inpaint" else work.copy()
        for region in regions:
            around = _ring(region, pixels.shape, band)
            support = work[around][known[around]]
            if support.size == 0:  # boxes cover their whole neighbourhood: use all known pixels
                support = work[known]
            if method == "fill":
                filled[region] = np.where(mask[region] > 0, np.median(support), filled[region])
            else:
                filled[region] = np.clip(filled[region], support.min(), support.max())
        filled_channels.append(filled)
    result = filled_channels[0] if pixels.ndim == 2 else np.stack(filled_channels, axis=-1)
    if np.issubdtype(pixels.dtype, np.integer):
        info = np.iinfo(pixels.dtype)
        result = np.clip(np.rint(result), info.min, info.max)
    where = mask.astype(bool)
    out[where] = result[where].astype(pixels.dtype)
    return out
