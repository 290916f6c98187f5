"""lr-mark-classic: burned-in L/R markers on synthetic chest radiographs.

Markers are drawn with cv2.putText (every Hershey font, upright or italic,
random size, stroke and place near an edge, with or without a box), stored
as MONOCHROME1 or MONOCHROME2 at 12 or 16 bits.  A detection counts when its
box overlaps the marker (letter plus frame) with IoU >= 0.3 and names the
right letter.
"""
from __future__ import annotations

import shutil
import subprocess

import cv2
import numpy as np
import pytest

from ai_models import Box, available_models, load_model
from ai_models.baselines import phantoms

SHAPES = [(512, 512), (640, 512), (600, 700), (768, 768), (1024, 800), (800, 1024)]


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0))
    iy = max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))
    inter = ix * iy
    return inter / ((a.x1 - a.x0) * (a.y1 - a.y0) + (b.x1 - b.x0) * (b.y1 - b.y0) - inter)


def score(detections: list[list[Box]], truths: list[Box | None]) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) over a set of images."""
    tp = fp = fn = 0
    for boxes, truth in zip(detections, truths):
        hit = truth is not None and any(b.label == truth.label and iou(b, truth) >= 0.3 for b in boxes)
        tp += hit
        fn += truth is not None and not hit
        fp += len(boxes) - hit
    return tp, fp, fn


@pytest.fixture(scope="module")
def model():
    return load_model("lr-mark-classic", device="cpu")


def test_registered_without_weights():
    info = next(m for m in available_models() if m.name == "lr-mark-classic")
    assert info.modalities == ("CR", "DX")
    assert (info.input_kind, info.output_kind) == ("image", "detection")
    assert info.labels == ("left", "right")
    assert not info.needs_weights


def test_precision_and_recall_on_random_radiographs(model):
    rng = np.random.default_rng(1234)
    detections, truths, framed = [], [], []
    for i in range(48):
        case = phantoms.chest_radiograph(
            rng,
            shape=SHAPES[int(rng.integers(len(SHAPES)))],
            letter="LR"[i % 2],
            bits=int(rng.choice([12, 16])),
            photometric=str(rng.choice(["MONOCHROME1", "MONOCHROME2"])),
            modality=str(rng.choice(["CR", "DX"])),
        )
        result = model.predict(case.dataset)
        assert all(b.sop_instance_uid == case.dataset.SOPInstanceUID for b in result.boxes)
        assert all(0.0 <= b.score <= 1.0 for b in result.boxes)
        detections.append(result.boxes)
        truths.append(case.marker_box)
        framed.append(bool(result.details["framed"]) and result.details["framed"][0])
    tp, fp, fn = score(detections, truths)
    precision, recall = tp / max(tp + fp, 1), tp / (tp + fn)
    print(f"\nlr-mark-classic on 48 random radiographs: precision {precision:.3f}, recall {recall:.3f} "
          f"(tp {tp}, fp {fp}, fn {fn}; {sum(framed)} found with a frame)")
    # Measured 1.00 / 1.00 with this seed; 500 draws with another seed gave recall 0.996, precision 1.0.
    assert recall >= 0.95
    assert precision >= 0.95


def test_images_without_a_marker_give_no_boxes(model):
    rng = np.random.default_rng(77)
    with_boxes = 0
    for i in range(20):
        case = phantoms.chest_radiograph(
            rng, shape=SHAPES[i % len(SHAPES)], letter=None, bits=16,
            photometric="MONOCHROME1" if i % 2 else "MONOCHROME2",
        )
        with_boxes += bool(model.predict(case.dataset).boxes)
    print(f"\nlr-mark-classic false-positive rate on 20 marker-free radiographs: {with_boxes / 20:.2f}")
    assert with_boxes <= 1


def test_electrodes_wires_words_and_blocks_are_not_markers(model):
    """Bright things near the border that are not a lone L or R: ECG electrode rims, wires,
    words (PORTABLE contains both letters), solid blocks."""
    rng = np.random.default_rng(5)
    with_boxes = 0
    for i in range(16):
        background = phantoms.radiograph_background(rng, 640, 640)
        canvas = np.zeros((640, 640), np.uint8)
        for _ in range(3):
            cx = int(rng.uniform(20, 560))
            cy = int(rng.uniform(30, 140) if rng.random() < 0.5 else rng.uniform(500, 620))
            kind = i % 4
            if kind == 0:
                cv2.circle(canvas, (cx, cy), int(rng.uniform(6, 14)), 255, int(rng.integers(1, 4)), cv2.LINE_AA)
            elif kind == 1:
                xs = np.linspace(cx - 80, cx + 80, 20)
                ys = cy + 15 * np.sin(np.linspace(0, 6, 20) + rng.uniform(0, 6))
                cv2.polylines(canvas, [np.stack([xs, ys], 1).astype(np.int32)], False, 255, int(rng.integers(1, 4)))
            elif kind == 2:
                word = str(rng.choice(["PORTABLE", "AP SUPINE", "ERECT", "LAT"]))
                cv2.putText(canvas, word, (max(5, cx - 100), cy), int(rng.choice(phantoms.HERSHEY_FONTS)),
                            rng.uniform(0.6, 1.2), 255, int(rng.integers(1, 3)), cv2.LINE_AA)
            else:
                cv2.rectangle(canvas, (cx, cy), (cx + int(rng.uniform(10, 30)), cy + int(rng.uniform(10, 30))), 255, -1)
        coverage = canvas.astype(np.float32) / 255
        ds, _ = phantoms.radiograph_dataset(background * (1 - coverage) + 0.95 * coverage)
        with_boxes += bool(model.predict(ds).boxes)
    print(f"\nlr-mark-classic false-positive rate with distractors: {with_boxes / 16:.2f}")
    assert with_boxes <= 1


def test_a_font_not_among_the_templates(model):
    """Pillow's bundled sans-serif face: never used to build the templates."""
    ImageFont = pytest.importorskip("PIL.ImageFont")
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(3)
    detections, truths = [], []
    for i in range(16):
        letter = "LR"[i % 2]
        background = phantoms.radiograph_background(rng, 640, 640)
        text = Image.new("L", (640, 640), 0)
        x = int(rng.uniform(20, 110)) if rng.random() < 0.5 else int(rng.uniform(530, 590))
        ImageDraw.Draw(text).text((x, int(rng.uniform(20, 580))), letter, fill=255,
                                  font=ImageFont.load_default(int(rng.uniform(20, 45))))
        coverage = np.asarray(text, np.float32) / 255
        ds, _ = phantoms.radiograph_dataset(background * (1 - coverage) + 0.95 * coverage)
        ys, xs = np.nonzero(coverage)
        truths.append(Box(xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, "left" if letter == "L" else "right", 1.0))
        detections.append(model.predict(ds).boxes)
    tp, fp, fn = score(detections, truths)
    print(f"\nlr-mark-classic on a held-out font: recall {tp / 16:.2f}, false positives {fp}")
    assert tp >= 14 and fp <= 1


def test_photometric_and_bit_depth_do_not_change_the_answer(model):
    rng = np.random.default_rng(8)
    case = phantoms.chest_radiograph(rng, shape=(640, 512), letter="R", framed=False)
    found = []
    for photometric in ("MONOCHROME1", "MONOCHROME2"):
        for bits in (12, 16):
            ds, _ = phantoms.radiograph_dataset(case.display, bits=bits, photometric=photometric)
            boxes = model.predict(ds).boxes
            found.append([(b.label, round(b.x0), round(b.y0), round(b.x1), round(b.y1)) for b in boxes])
    assert len(found[0]) == 1 and found[0][0][0] == "right"
    assert all(f == found[0] for f in found)


def test_large_images_are_reported_in_original_pixels(model):
    """Images above work_size are shrunk for the search; the box must come back in the source grid."""
    rng = np.random.default_rng(21)
    case = phantoms.chest_radiograph(rng, shape=(2048, 1700), letter="L", height_fraction=0.04)
    result = model.predict(case.dataset)
    assert len(result.boxes) == 1
    box = result.boxes[0]
    assert box.label == "left"
    assert iou(box, case.marker_box) > 0.6
    assert 0 <= box.x0 < box.x1 <= 1700 and 0 <= box.y0 < box.y1 <= 2048


@pytest.mark.parametrize("modality", ["CR", "DX"])
def test_files_on_disk_and_phantom_files_are_valid_dicom(model, tmp_path, modality):
    rng = np.random.default_rng(2)
    case = phantoms.chest_radiograph(rng, shape=(512, 512), letter="L", modality=modality,
                                     photometric="MONOCHROME1", bits=16)
    path = tmp_path / "image.dcm"
    case.dataset.save_as(path, enforce_file_format=True)
    boxes = model.predict(path).boxes
    assert [b.label for b in boxes] == ["left"] and iou(boxes[0], case.marker_box) > 0.5
    if shutil.which("dciodvfy"):
        report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        assert "Error" not in report.stdout + report.stderr
