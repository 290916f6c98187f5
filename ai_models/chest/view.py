"""Chest radiograph view: PA / Lateral / Others (MI2RLNet ``Chest.ViewpointClassifier``).

A header-fix check for View Position (0018,5101): the network says which view
the pixels show, :func:`header_agreement` says whether the header agrees.

Network: Keras ResNet50 on one 512x512 channel, then the 1000-way softmax
``predictions`` and ``final_layer`` Dense(3, softmax)
(:class:`~ai_models.nets.resnet50.MI2RLResNet50Classifier`).

Pre-processing keeps the semantics of the original SimpleITK reader
(MI2RLNET_MODELS.md section 4.2): rescale applied, MONOCHROME1 inverted, no
VOI window; bilinear resize to 512x512; subtract the image minimum, divide by
the 99th percentile, cap at 1, times 255, truncate to integers.  The values
reach the network as 0..255 floats with no further normalisation.  One
deliberate difference: the original resized the raw integer array (cv2
rounds to integers there), this port resizes floats.  Because every step
before the percentile scaling is linear, this moves a pixel by at most a
fraction of one grey level.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from pydicom.dataset import Dataset

from ai_models.base import Model, channels_last
from ai_models.chest.radiograph import radiograph_to_unit
from ai_models.errors import InputError
from ai_models.info import ModelInfo, WeightSpec
from ai_models.inputs import read_datasets
from ai_models.nets.folding import fold_batchnorms
from ai_models.nets.resnet50 import MI2RLResNet50Classifier
from ai_models.registry import register
from ai_models.results import Classification, SliceEvidence

LABELS: tuple[str, ...] = ("PA", "Lateral", "Others")
"""Output order of ``final_layer``, as the original's argmax list."""
INPUT_SIZE = 512

FRONTAL_POSITIONS = frozenset({"PA", "AP"})
"""View Position values the model should call "PA".  There is no AP class: an AP film counts as frontal."""
LATERAL_POSITIONS = frozenset({"LL", "RL", "LATERAL", "LAT"})
"""View Position values the model should call "Lateral" (DICOM defines LL and RL; the others occur in practice)."""


def preprocess(ds: Dataset) -> np.ndarray:
    """One radiograph to the network's 512x512 input: float32, integer values 0..255."""
    unit = radiograph_to_unit(ds, voi="none")
    resized = cv2.resize(unit, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
    shifted = resized - resized.min()
    p99 = float(np.percentile(shifted, 99))
    if p99 <= 0:
        raise InputError(
            f"{getattr(ds, 'SOPInstanceUID', '?')}: the image is (almost) constant; there is nothing to classify"
        )
    scaled = np.minimum(shifted / p99, 1.0) * 255.0
    return scaled.astype(np.uint8).astype(np.float32)


def header_view(ds: Dataset) -> str | None:
    """View Position as written in the header (stripped), or None when absent or empty."""
    value = str(getattr(ds, "ViewPosition", "") or "").strip()
    return value or None


def header_agreement(label: str, view_position: str | None) -> bool | None:
    """Does the predicted label agree with View Position?

    PA and AP mean frontal, expected label "PA"; LL, RL, LATERAL and LAT mean
    lateral, expected label "Lateral".  Any other value (obliques, decubitus,
    free text) and an empty header give None: the header does not name one of
    the model's classes, so there is nothing to confirm or contradict.
    """
    if view_position is None:
        return None
    position = view_position.upper()
    if position in FRONTAL_POSITIONS:
        return label == "PA"
    if position in LATERAL_POSITIONS:
        return label == "Lateral"
    return None


INFO = ModelInfo(
    name="chest-view",
    task="chest radiograph view: PA / Lateral / Others",
    modalities=("CR", "DX"),
    input_kind="image",
    output_kind="classification",
    version="1.0.0",
    description=(
        "MI2RLNet Chest.ViewpointClassifier: Keras ResNet50 (1 channel, 512x512) with a 3-way head, "
        "ported to PyTorch; checks View Position (0018,5101)."
    ),
    weights=(
        WeightSpec(
            key="weights",
            format="keras_h5",
            description="Keras HDF5 of MI2RLNet's view classifier (save_weights or model.save file)",
            original_name="MI2RLNet README, Google Drive id 1iCa-iwrek-efn_zSmFNrxdP5q_UOYuoK",
        ),
    ),
    labels=LABELS,
    header_fix="ViewPosition",
    caveats=(
        "There is no AP class: AP films are expected to come out as PA (or Others).",
        "'Others' is defined only by the (private) training data.",
        "One image per call; trained on private Asan Medical Center data, licence of the weights not stated.",
    ),
)


class ChestViewClassifier(Model):
    """PA / Lateral / Others for one chest radiograph."""

    info = INFO

    def __init__(self, weights: dict[str, Path], device: torch.device, **options: Any) -> None:
        super().__init__(weights, device, **options)
        self.net = MI2RLResNet50Classifier(in_channels=1, num_classes=len(LABELS))
        self.net.load_keras_h5(weights["weights"])
        fold_batchnorms(self.net.eval())
        channels_last(self.net.to(device))

    def predict(self, source: Any) -> Classification:
        """Classify exactly one image; a series of several images is an :class:`InputError`."""
        datasets = read_datasets(source)
        if len(datasets) != 1:
            raise InputError(f"chest-view classifies one image per call, got {len(datasets)}")
        ds = datasets[0]
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        if frames != 1:
            raise InputError(f"chest-view needs a single-frame radiograph, this image has {frames} frames")
        tensor = torch.from_numpy(preprocess(ds))[None, None].to(self.device)
        with torch.inference_mode():
            probs = self.net(tensor)[0].float().cpu().numpy()
        probabilities = {name: float(p) for name, p in zip(LABELS, probs)}
        label = LABELS[int(np.argmax(probs))]
        uid = str(getattr(ds, "SOPInstanceUID", ""))
        view_position = header_view(ds)
        return Classification(
            model=self.info.name,
            model_version=self.info.version,
            label=label,
            probabilities=probabilities,
            source_sop_instance_uids=[uid],
            evidence=[SliceEvidence(uid, probabilities, used=True)],
            header_value=view_position,
            agrees_with_header=header_agreement(label, view_position),
            details={"modality": str(getattr(ds, "Modality", ""))},
        )


register(INFO, ChestViewClassifier)
