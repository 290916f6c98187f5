"""Known-answer checks of the L/R detector's pre- and post-processing (no network, no TF)."""
from __future__ import annotations

import numpy as np
import pytest

from ai_models import get_info
from ai_models.chest.anchors import (
    Letterbox,
    clip_boxes,
    decode_boxes,
    feature_sizes,
    filter_detections,
    generate_anchors,
    nms,
)
from ai_models.chest.lr_mark import CHANNEL_MEAN, CHANNEL_STD, preprocess


def test_anchor_count_at_512_is_49104():
    anchors = generate_anchors(512)
    assert feature_sizes(512) == [64, 32, 16, 8, 4]
    assert anchors.shape == (49_104, 4)


def test_first_anchors_follow_the_spec_formula():
    anchors = generate_anchors(512)
    # Location (0, 0) of P3: centre (4, 4); anchor 0 is ratio 0.5, scale 1 on base 32.
    w = np.sqrt(32.0**2 / 0.5)
    np.testing.assert_allclose(anchors[0], [4 - w / 2, 4 - w * 0.25, 4 + w / 2, 4 + w * 0.25])
    # Anchor 4 is ratio 1 (4 // 3 == 1), scale 2^(1/3) (4 % 3 == 1): a square.
    side = 32.0 * 2 ** (1 / 3)
    np.testing.assert_allclose(anchors[4], [4 - side / 2, 4 - side / 2, 4 + side / 2, 4 + side / 2])
    # The next 9 belong to x = 1 (row-major: x moves fastest), then row y = 1 starts after 64 locations.
    np.testing.assert_allclose(anchors[9] - anchors[0], [8, 0, 8, 0])
    np.testing.assert_allclose(anchors[64 * 9] - anchors[0], [0, 8, 0, 8])
    # P4 starts after all P3 anchors, centred at (8, 8) with base 64.
    first_p4 = anchors[64 * 64 * 9]
    assert np.allclose((first_p4[0] + first_p4[2]) / 2, 8) and np.isclose(first_p4[2] - first_p4[0], np.sqrt(64.0**2 / 0.5))
    # The last anchor is P7's bottom-right location, ratio 2, scale 2^(2/3): centre (448, 448).
    last = anchors[-1]
    np.testing.assert_allclose([(last[0] + last[2]) / 2, (last[1] + last[3]) / 2], [448, 448])
    assert np.isclose((last[3] - last[1]) / (last[2] - last[0]), 2.0)


def test_zero_regression_decodes_to_the_anchor():
    anchors = generate_anchors(512)
    np.testing.assert_allclose(decode_boxes(anchors, np.zeros_like(anchors)), anchors)


def test_regression_moves_each_corner_by_a_fifth_of_the_anchor_side():
    anchor = np.array([[100.0, 200.0, 150.0, 300.0]])  # w 50, h 100
    decoded = decode_boxes(anchor, np.array([[1.0, -1.0, 0.5, 2.0]]))
    np.testing.assert_allclose(decoded, [[110.0, 180.0, 155.0, 340.0]])
    np.testing.assert_allclose(clip_boxes(np.array([[-5.0, 3.0, 600.0, 511.5]]), 512), [[0, 3, 511, 511]])


@pytest.mark.parametrize(("rows", "cols"), [(2500, 2048), (2048, 2500), (300, 700), (700, 300)])
def test_letterbox_round_trip_on_non_square_images(rows, cols):
    box = Letterbox.for_image(rows, cols, 512)
    new_h, new_w = box.resized_shape
    assert max(new_h, new_w) == 512
    assert box.offset_x == (512 - new_w) // 2 and box.offset_y == (512 - new_h) // 2
    original = np.array([[cols * 0.1, rows * 0.2, cols * 0.6, rows * 0.9]])
    on_canvas = box.to_canvas(original)
    # the image is centred: the canvas box of the whole image is symmetric within one pixel
    whole = box.to_canvas(np.array([[0.0, 0.0, cols, rows]]))[0]
    assert abs(whole[0] - (512 - whole[2])) <= 1 and abs(whole[1] - (512 - whole[3])) <= 1
    np.testing.assert_allclose(box.to_original(on_canvas), original, atol=1e-9)


def test_letterbox_offsets_for_300_by_700():
    box = Letterbox.for_image(300, 700, 512)
    assert box.resized_shape == (219, 512)  # int(300 * 512 / 700) = 219
    assert (box.offset_x, box.offset_y) == (0, 146)  # (512 - 219) // 2
    # A canvas point in the padding maps outside the image and is clipped to the edge.
    np.testing.assert_allclose(box.to_original(np.array([[10.0, 5.0, 600.0, 500.0]])), [[10 / box.scale, 0, 699, 299]])


def test_preprocess_places_image_and_grey_fill_with_bgr_normalisation():
    gray = np.full((300, 700), 255, np.uint8)
    image, box = preprocess(gray)
    assert image.shape == (1, 3, 512, 512) and image.dtype == np.float32
    white = (1.0 - CHANNEL_MEAN) / CHANNEL_STD
    fill = (128 / 255 - CHANNEL_MEAN) / CHANNEL_STD
    np.testing.assert_allclose(image[0, :, 300, 256], white, rtol=1e-6)  # inside the pasted image
    np.testing.assert_allclose(image[0, :, 10, 256], fill, rtol=1e-6)  # in the top padding band
    assert box.offset_y == 146
    np.testing.assert_allclose(image[0, :, 146, 0], white, rtol=1e-6)
    np.testing.assert_allclose(image[0, :, 145, 0], fill, rtol=1e-6)
    # channel 0 is B and uses ImageNet's first (red) statistics, as in the original
    assert np.isclose(image[0, 0, 300, 256], (1 - 0.485) / 0.229)


def test_nms_removes_the_overlapping_lower_score_box():
    boxes = np.array([[0, 0, 100, 100], [5, 5, 105, 105], [200, 200, 250, 250]], dtype=float)
    scores = np.array([0.8, 0.9, 0.7])
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), [1, 2])
    # IoU of the first two is 9025 / 10975 = 0.82; with a looser threshold both survive
    np.testing.assert_array_equal(nms(boxes, scores, 0.9), [1, 0, 2])
    # corners given in reverse order describe the same boxes
    np.testing.assert_array_equal(nms(boxes[:, [2, 3, 0, 1]], scores, 0.5), [1, 2])


def test_filter_is_class_specific_thresholded_and_aligned():
    boxes = np.array([[0, 0, 100, 100], [5, 5, 105, 105], [300, 300, 340, 340], [0, 0, 10, 10]], dtype=float)
    probabilities = np.array([[0.95, 0.10], [0.90, 0.97], [0.20, 0.86], [0.85, 0.5]])
    found = filter_detections(boxes, probabilities, score_threshold=0.85)
    # class 0: boxes 0 and 1 overlap, 1 is suppressed; 0.85 is not > 0.85.
    # class 1: boxes 1 and 2; overlap with class-0 boxes does not matter.
    np.testing.assert_allclose(found.scores, [0.97, 0.95, 0.86])
    np.testing.assert_array_equal(found.labels, [1, 0, 1])
    np.testing.assert_allclose(found.boxes, boxes[[1, 0, 2]])
    lower = filter_detections(boxes, probabilities, score_threshold=0.4)
    assert 0.5 in lower.scores.tolist()  # a lower threshold really adds boxes
    assert len(filter_detections(boxes, probabilities, score_threshold=0.99).scores) == 0


def test_max_detections_keeps_the_best():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 5000, (1000, 2))
    boxes = np.concatenate([xy, xy + 5], axis=1)  # tiny, disjoint boxes survive NMS
    probabilities = np.stack([rng.uniform(0.9, 1, 1000), np.zeros(1000)], axis=1)
    found = filter_detections(boxes, probabilities, max_detections=300)
    assert len(found.scores) == 300
    np.testing.assert_allclose(found.scores, np.sort(probabilities[:, 0])[::-1][:300])


def test_registration():
    info = get_info("lr-mark")
    assert info.modalities == ("CR", "DX")
    assert (info.input_kind, info.output_kind) == ("image", "detection")
    assert [(w.key, w.format) for w in info.weights] == [("weights", "keras_h5")]
    assert info.options["score_threshold"] == 0.85
