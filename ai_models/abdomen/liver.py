"""Liver segmentation on abdominal CT (MI2RLNet ``LiverSegmentation``), PyTorch port.

Pipeline (MI2RLNET_MODELS.md section 4.6) on a DICOM series in canonical
layout (axis 0 feet to head, rows anterior to posterior, columns patient
right to left: axial slices as displayed, the layout the spec says the
model expects):

1. ``scipy.ndimage.zoom`` (linear, corner-aligned) by
   ``[slice spacing / 5, 256 / rows, 256 / cols]``: 5 mm slices, 256 x 256
   in-plane.  The original HEAD swapped rows and columns in the factors;
   this follows the pre-refactor code the weights were used with, which
   matters only for non-square slices.
2. HU clipped to [10, 190], then (x - 29.311405) / 43.381818.
3. IN-UNet3D, argmax of the 2 classes.
4. The label map is zoomed back to the series grid with linear
   interpolation on the integer labels (scipy rounds, i.e. a 0.5 threshold),
   and mapped back onto the series' own slice order.

No connected-component clean-up, as in the original.  ``plane`` (256) and
``slice_mm`` (5.0) are attributes so tests can run the same code on small
arrays; ``net`` may be replaced by any module with the same convention
(NCDHW in, per-class probabilities out), or given to :meth:`with_network`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ai_models.base import Model, select_device
from ai_models.errors import InputError
from ai_models.info import ModelInfo, WeightSpec
from ai_models.nets.unet3d import INUNet3D, run_network
from ai_models.registry import register
from ai_models.resample import zoom_by, zoom_to_shape
from ai_models.results import Segmentation
from ai_models.volume import read_volume, require_modality, segmentation_from_canonical

LABELS = {1: "liver"}
HU_WINDOW = (10.0, 190.0)
MEAN, STD = 29.311405, 43.381818
MIN_EDGE = 16  # four poolings


class LiverSegmentation(Model):
    """IN-UNet3D liver segmentation at 5 mm slices and 256 x 256 in-plane."""

    info = ModelInfo(
        name="liver",
        task="liver segmentation on abdominal CT",
        modalities=("CT",),
        input_kind="series",
        output_kind="segmentation",
        version="1.0.0",
        description=(
            "MI2RLNet LiverSegmentation: IN-UNet3D (instance-norm 3-D U-Net) on the series resampled to "
            "5 mm slices and 256x256 in-plane; mask resampled back to the series grid."
        ),
        weights=(WeightSpec("weights", "keras_h5", "IN-UNet3D 'unet-unet', loaded by layer order", "liver.h5"),),
        labels=("liver",),
        caveats=(
            "Probably trained on LiTS (CC BY-NC-SA): research use; not for clinical or commercial use without review.",
            "The slice direction the model was trained with is not documented; slices are fed feet to head.",
            "Needs at least 80 mm of coverage (16 slices of 5 mm after resampling).",
        ),
    )

    plane: int = 256
    slice_mm: float = 5.0

    def __init__(
        self, weights: dict[str, Path], device: torch.device, *, net: nn.Module | None = None, **options: Any
    ) -> None:
        super().__init__(weights, device, **options)
        if net is None:
            net = INUNet3D()
            net.load_keras(weights["weights"])
        self.net = net.to(device).eval()

    @classmethod
    def with_network(cls, net: nn.Module, device: str | torch.device = "cpu", **options: Any) -> LiverSegmentation:
        """Build the pipeline around a given network instead of a weight file (tests, experiments)."""
        return cls(weights={}, device=select_device(device), net=net, **options)

    def preprocess(self, raw: np.ndarray, slice_spacing: float) -> np.ndarray:
        """Canonical HU (Z, Y, X) -> normalised network input at 5 mm x plane x plane."""
        _, rows, cols = raw.shape
        x = zoom_by(raw.astype(np.float32), (slice_spacing / self.slice_mm, self.plane / rows, self.plane / cols), order=1)
        if min(x.shape) < MIN_EDGE:
            raise InputError(
                f"liver: the series covers {raw.shape[0] * slice_spacing:.0f} mm, resampled to {x.shape[0]} slices "
                f"of {self.slice_mm:g} mm; the network needs at least {MIN_EDGE}"
            )
        return ((np.clip(x, *HU_WINDOW) - MEAN) / STD).astype(np.float32)

    def segment(self, raw: np.ndarray, slice_spacing: float) -> np.ndarray:
        """Canonical HU volume -> uint8 liver mask on the same grid."""
        probabilities = run_network(self.net, self.preprocess(raw, slice_spacing), self.device)
        labels = np.argmax(probabilities, axis=0).astype(np.int64)
        return zoom_to_shape(labels, raw.shape, order=1).astype(np.uint8)

    def predict(self, source: Any) -> Segmentation:
        volume = read_volume(source, values="hu")
        require_modality(volume, self.info.name, self.info.modalities)
        raw, spacing, mapping = volume.canonical()
        return segmentation_from_canonical(
            volume,
            self.segment(raw, spacing[0]),
            mapping,
            model=self.info.name,
            model_version=self.info.version,
            label_names=LABELS,
        )


register(LiverSegmentation.info, LiverSegmentation)
