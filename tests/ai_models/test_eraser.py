"""erase_boxes: markers vanish, everything outside the widened boxes stays bit-identical, dtypes hold."""
from __future__ import annotations

import numpy as np
import pytest

from ai_models import Box
from ai_models.baselines import phantoms
from ai_models.baselines.eraser import box_region, erase_boxes

DTYPES = [np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64]


def as_dtype(display: np.ndarray, dtype: type) -> np.ndarray:
    """A 0..1 display image in the value range typical of ``dtype`` (CT-like and signed for int16)."""
    if dtype is np.uint8:
        return np.rint(display * 255).astype(np.uint8)
    if dtype is np.uint16:
        return np.rint(display * 65535).astype(np.uint16)
    if dtype is np.int16:
        return np.rint(display * 3000 - 1024).astype(np.int16)
    if dtype is np.int32:
        return np.rint(display * 1e6 - 5e5).astype(np.int32)
    return (display * 2.5 - 0.5).astype(dtype)


def changeable(shape: tuple[int, ...], boxes: list[Box], margin: int) -> np.ndarray:
    mask = np.zeros(shape[:2], bool)
    for b in boxes:
        rows, cols = box_region(b, shape, margin)
        mask[rows, cols] = True
    return mask


@pytest.mark.parametrize("method", ["inpaint", "fill"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_marker_is_gone_and_nothing_else_changes(dtype, method):
    rng = np.random.default_rng(17)
    margin = 3
    for _ in range(4):
        case = phantoms.chest_radiograph(rng, shape=(384, 320), letter=str(rng.choice(["L", "R"])))
        pixels = as_dtype(case.display, dtype)
        background = as_dtype(case.background, dtype)
        before = pixels.copy()
        out = erase_boxes(pixels, [case.marker_box], margin_px=margin, method=method)

        assert out.dtype == pixels.dtype and out.shape == pixels.shape
        assert np.array_equal(pixels, before), "the input was modified"
        region = changeable(pixels.shape, [case.marker_box], margin)
        assert np.array_equal(out[~region], pixels[~region]), "pixels outside the widened box changed"

        # Every marker pixel now lies within the background's range around the box.
        rows, cols = box_region(case.marker_box, pixels.shape, margin + 8)
        local = background[rows, cols]
        erased = out[case.marker_mask]
        assert erased.min() >= local.min() and erased.max() <= local.max()
        # ... and no longer stands out: the marker's brightest pixel was far above that range.
        assert pixels[case.marker_mask].max() > local.max()


def test_box_region_is_the_box_widened_by_the_margin():
    box = Box(10.0, 20.0, 30.0, 35.0, "left", 1.0)
    rows, cols = box_region(box, (100, 100), 4)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (16, 40, 6, 35)
    # clipped at the image border, fractional coordinates widened outwards
    rows, cols = box_region(Box(-3.5, 90.2, 5.7, 120.0, "right", 1.0), (100, 50), 2)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (88, 100, 0, 8)


def test_several_boxes_colour_images_and_no_boxes():
    rng = np.random.default_rng(4)
    a = phantoms.chest_radiograph(rng, shape=(300, 300), letter="L")
    pixels = np.rint(a.display * 4095).astype(np.uint16)
    extra = Box(140, 10, 160, 30, "right", 0.9)
    pixels[12:28, 142:158] = 4095  # a second bright square to erase
    out = erase_boxes(pixels, [a.marker_box, extra], margin_px=2)
    region = changeable(pixels.shape, [a.marker_box, extra], 2)
    assert np.array_equal(out[~region], pixels[~region])
    assert out[12:28, 142:158].max() < 4095 * 0.8

    colour = np.stack([pixels, pixels // 2, pixels // 3], axis=-1)
    out3 = erase_boxes(colour, [a.marker_box], margin_px=2)
    assert out3.shape == colour.shape and out3.dtype == colour.dtype
    assert np.array_equal(out3[..., 0], erase_boxes(pixels, [a.marker_box], margin_px=2))

    same = erase_boxes(pixels, [])
    assert same is not pixels and np.array_equal(same, pixels)


def test_bad_arguments():
    pixels = np.zeros((20, 20), np.uint16)
    box = Box(2, 2, 5, 5, "left", 1.0)
    with pytest.raises(ValueError):
        erase_boxes(pixels, [box], method="blur")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        erase_boxes(pixels.astype(bool), [box])
    with pytest.raises(ValueError):
        erase_boxes(pixels, [Box(-5, -5, 30, 30, "left", 1.0)])  # nothing left to fill from
