"""L/R marker detection on chest radiographs (MI2RLNet ``LRmarkDetection``), PyTorch port.

Pipeline, per image (MI2RLNET_MODELS.md section 4.1):

1. DICOM -> 8-bit display image: modality LUT, the dataset's VOI LUT or
   window (min-max when it has none), MONOCHROME1 inverted
   (:mod:`ai_models.chest.radiograph`).  The original was trained on 8-bit
   PNGs whose conversion from DICOM is unknown; this is our choice.
2. Grey replicated to 3 channels, which are BGR for the network.
3. Letterbox to 512 (centred, fill 128), then /255 and per-channel ImageNet
   mean/std in BGR order (the B channel uses 0.485 / 0.229), as the original
   does: the grey fill is normalised like image pixels.
4. Network -> box regressions and class probabilities for 49,104 anchors.
5. Decode, clip to the 512 canvas, per class: score > ``score_threshold``
   and NMS (IoU 0.5), merge, top 300; map boxes back to original pixels
   (undo offset and scale, clip to the image).

The original ``predict`` is broken (section 4.1, "Broken"): it calls
``model.predict([image, anchors])`` on a model with a single input, which
raises a ValueError on any TF 2.x; and its result loop zips the filtered
boxes with the *unfiltered* score array, which only lines up because the
in-graph filter happens to return a sorted, thresholded prefix.  Here the
network gets the image alone (anchors are constants of the post-processing),
and boxes, scores and labels are filtered with the same indices.  Because
the score cut is no longer baked into the graph, lowering
``score_threshold`` below 0.85 really returns more boxes (in the original
it had no effect).  Box coordinates stay floating point (the original
truncated them to int).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydicom.dataset import Dataset

from ai_models.base import Model, channels_last
from ai_models.chest.anchors import Letterbox, clip_boxes, decode_boxes, filter_detections, generate_anchors
from ai_models.chest.radiograph import radiograph_to_unit, to_uint8
from ai_models.info import ModelInfo, WeightSpec
from ai_models.inputs import read_datasets
from ai_models.nets.efficientdet import EfficientDetD0Lite
from ai_models.nets.folding import fold_batchnorms
from ai_models.registry import register
from ai_models.results import Box, Detection
from ai_models.weights.keras_h5 import load_keras_weights_by_name

INPUT_SIZE = 512
LABELS = ("left", "right")  # class 0 is an "L" marker, class 1 an "R" marker
# ImageNet statistics applied to the B, G, R planes in that order (the original's quirk).
CHANNEL_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
CHANNEL_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def display_image(ds: Dataset) -> np.ndarray:
    """The radiograph as the 8-bit grayscale picture the detector expects."""
    return to_uint8(radiograph_to_unit(ds))


def preprocess(gray: np.ndarray, size: int = INPUT_SIZE) -> tuple[np.ndarray, Letterbox]:
    """8-bit grayscale (H, W) -> network input (1, 3, size, size) float32 and its letterbox."""
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"expected an 8-bit 2-D image, got {gray.dtype} {gray.shape}")
    bgr = np.repeat(gray[:, :, None], 3, axis=2)
    height, width = gray.shape
    box = Letterbox.for_image(height, width, size=size)
    canvas = box.apply(bgr).astype(np.float32) / 255.0
    normalised = (canvas - CHANNEL_MEAN) / CHANNEL_STD
    return np.ascontiguousarray(normalised.transpose(2, 0, 1)[None]), box


class LRMarkDetector(Model):
    """EfficientDet-D0-like detector of the "L" / "R" side markers burned into chest radiographs."""

    info = ModelInfo(
        name="lr-mark",
        task="L/R side marker detection on chest radiographs",
        modalities=("CR", "DX"),
        input_kind="image",
        output_kind="detection",
        version="1.0.0",
        description=(
            "MI2RLNet LRmarkDetection: EfficientNet-B0 + 2-layer BiFPN (EfficientDet-D0-like), "
            "ported to PyTorch; boxes in original pixel coordinates labelled 'left' or 'right'."
        ),
        weights=(
            WeightSpec(
                key="weights",
                format="keras_h5",
                description="Keras HDF5 of the EfficientDet prediction model, loaded by layer name",
                original_name="LRmarkDetection weight (MI2RLNet README)",
            ),
        ),
        labels=LABELS,
        caveats=(
            "The DICOM-to-8-bit conversion used for training is unknown; VOI window or min-max is used.",
            "The original predict() was broken (two inputs fed to a one-input model); fixed here.",
        ),
        options={"score_threshold": 0.85, "iou_threshold": 0.5, "max_detections": 300},
    )

    def __init__(self, weights: dict[str, Path], device: torch.device, **options: Any) -> None:
        super().__init__(weights, device, **options)
        self.net = EfficientDetD0Lite()
        load_keras_weights_by_name(self.net.keras_layers(), weights["weights"])
        fold_batchnorms(self.net.eval())
        channels_last(self.net.to(device))
        self.anchors = generate_anchors(INPUT_SIZE)

    @torch.no_grad()
    def raw_outputs(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Network input (1, 3, S, S) -> regressions (A, 4), probabilities (A, 2) as float64."""
        regression, probabilities = self.net(torch.from_numpy(image).to(self.device))
        return regression[0].double().cpu().numpy(), probabilities[0].double().cpu().numpy()

    def detect(self, gray: np.ndarray, sop_instance_uid: str = "") -> list[Box]:
        """Boxes on one 8-bit grayscale image, in its own pixel coordinates, best first."""
        image, letterbox = preprocess(gray)
        regression, probabilities = self.raw_outputs(image)
        boxes = clip_boxes(decode_boxes(self.anchors, regression), INPUT_SIZE)
        found = filter_detections(
            boxes,
            probabilities,
            score_threshold=float(self.options["score_threshold"]),
            iou_threshold=float(self.options["iou_threshold"]),
            max_detections=int(self.options["max_detections"]),
        )
        original = letterbox.to_original(found.boxes)
        return [
            Box(float(b[0]), float(b[1]), float(b[2]), float(b[3]), LABELS[int(label)], float(score), sop_instance_uid)
            for b, score, label in zip(original, found.scores, found.labels)
        ]

    def predict(self, source: Any) -> Detection:
        datasets = read_datasets(source)
        boxes: list[Box] = []
        uids: list[str] = []
        for ds in datasets:
            uid = str(getattr(ds, "SOPInstanceUID", ""))
            uids.append(uid)
            boxes.extend(self.detect(display_image(ds), uid))
        return Detection(
            model=self.info.name,
            model_version=self.info.version,
            boxes=boxes,
            source_sop_instance_uids=uids,
            details={
                "score_threshold": float(self.options["score_threshold"]),
                "input_size": INPUT_SIZE,
            },
        )


register(LRMarkDetector.info, LRMarkDetector)
