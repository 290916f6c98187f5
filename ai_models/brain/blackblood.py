"""Black-blood MRI vessel segmentation (MI2RLNet ``BlackbloodSegmentation``), PyTorch port.

Pipeline (MI2RLNET_MODELS.md section 4.9), reproduced as the original ran
it, on the series in canonical layout (axis 0 feet to head, rows anterior
to posterior, columns patient right to left):

1. ``scipy.ndimage.zoom`` by 0.5 on every axis (linear, corner-aligned).
2. Intensities clipped to [-100, 20], then (x + 100) / 120.
3. IN-UNet3D (the same network as Liver; GaussianNoise is inert at
   inference), argmax of the 2 classes.
4. The label map is zoomed back to the series grid (linear on integer
   labels, i.e. rounded) and mapped onto the series' own slice order.

The intensity window is doubtful: [-100, 20] looks like a CT window and
saturates nearly all MR tissue, so the model's caveats say so and results
need validation on a real black-blood scan.  ``net`` may be replaced by
any module with the same convention, or given to :meth:`with_network`.
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

LABELS = {1: "vessel"}
WINDOW = (-100.0, 20.0)
SCALE = 0.5
MIN_EDGE = 16  # four poolings


class BlackbloodSegmentation(Model):
    """IN-UNet3D vessel segmentation of a black-blood MR series at half resolution."""

    info = ModelInfo(
        name="blackblood",
        task="vessel segmentation on black-blood brain MRI",
        modalities=("MR",),
        input_kind="series",
        output_kind="segmentation",
        version="1.0.0",
        description=(
            "MI2RLNet BlackbloodSegmentation: IN-UNet3D on the series zoomed by 0.5, intensities windowed "
            "to [-100, 20]; mask zoomed back to the series grid."
        ),
        weights=(WeightSpec("weights", "keras_h5", "IN-UNet3D 'unet', loaded by layer order", "blackblood.h5"),),
        labels=("vessel",),
        caveats=(
            "Doubtful preprocessing reproduced for parity: intensities are clipped to [-100, 20] and scaled by "
            "(x + 100) / 120, a CT-like window that saturates almost all MR tissue; either the training volumes "
            "were pre-normalised into that range or the original preprocessing is wrong. Validate on a real "
            "black-blood scan before trusting the output.",
            "The voxel order of the training NIfTI files is not documented; slices are fed feet to head, "
            "rows anterior to posterior, columns patient right to left.",
            "Trained on private Asan Medical Center data; weight licence unclear.",
        ),
    )

    def __init__(
        self, weights: dict[str, Path], device: torch.device, *, net: nn.Module | None = None, **options: Any
    ) -> None:
        super().__init__(weights, device, **options)
        if net is None:
            net = INUNet3D()
            net.load_keras(weights["weights"])
        self.net = net.to(device).eval()

    @classmethod
    def with_network(cls, net: nn.Module, device: str | torch.device = "cpu", **options: Any) -> BlackbloodSegmentation:
        """Build the pipeline around a given network instead of a weight file (tests, experiments)."""
        return cls(weights={}, device=select_device(device), net=net, **options)

    @staticmethod
    def preprocess(raw: np.ndarray) -> np.ndarray:
        """Canonical intensities (Z, Y, X) -> normalised half-size network input."""
        x = zoom_by(raw.astype(np.float32), SCALE, order=1)
        if min(x.shape) < MIN_EDGE:
            raise InputError(
                f"blackblood: series of shape {raw.shape} is {x.shape} at half size; the network needs "
                f"at least {MIN_EDGE} voxels per axis ({2 * MIN_EDGE} slices, rows and columns)"
            )
        low, high = WINDOW
        return ((np.clip(x, low, high) - low) / (high - low)).astype(np.float32)

    def segment(self, raw: np.ndarray) -> np.ndarray:
        """Canonical volume -> uint8 vessel mask on the same grid."""
        probabilities = run_network(self.net, self.preprocess(raw), self.device)
        labels = np.argmax(probabilities, axis=0).astype(np.int64)
        return zoom_to_shape(labels, raw.shape, order=1).astype(np.uint8)

    def predict(self, source: Any) -> Segmentation:
        volume = read_volume(source, values="hu")
        require_modality(volume, self.info.name, self.info.modalities)
        raw, _, mapping = volume.canonical()
        return segmentation_from_canonical(
            volume,
            self.segment(raw),
            mapping,
            model=self.info.name,
            model_version=self.info.version,
            label_names=LABELS,
        )


register(BlackbloodSegmentation.info, BlackbloodSegmentation)
