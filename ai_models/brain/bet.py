"""MRI / MRA brain extraction: MI2RLNet ``Brain.MRI_BET`` on DICOM series (spec section 4.8).

Two registered models share one network and pipeline and differ only in
their weights and intensity preprocessing:

- ``bet-t1``: T1-weighted MR; raw intensities (after Rescale Slope/Intercept)
  go straight into the network, as in the reference.
- ``bet-mra``: MR angiography; intensities are windowed to the volume's
  40th..98.5th percentiles and clipped to [0, 1].

Pipeline: read the series as a sorted volume, run the 2-D U-Net on every
acquired slice (the NIfTI voxel axis 2 of the reference), sigmoid and
threshold, then per-slice opening with a 5x5 square, keep the largest 3-D
connected component (6-connectivity) and fill 3-D holes.  Unlike the
reference, it runs on any device and writes no files.

In-plane layout: the reference read NIfTI files, whose slices are
(column, row) with the rows flipped when converted by dcm2niix; a 2-D
network trained on that layout expects it.  ``in_plane="nifti"`` (default)
reproduces it; ``in_plane="dicom"`` feeds slices as stored (rows x cols).

Hook for tests and research: ``model.network`` is the torch module that
``predict`` calls on (N, 1, H, W) float tensors and whose output it reads
as (N, 1, H, W) logits; assign any module with that contract.
"""
from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import torch
from scipy import ndimage

from ai_models.base import Model
from ai_models.errors import ModelError
from ai_models.info import ModelInfo, WeightSpec
from ai_models.inputs import Source
from ai_models.nets.unet_bet import BetUNet
from ai_models.registry import register
from ai_models.results import Segmentation
from ai_models.volume import AxisMap, read_volume, require_modality, segmentation_from_canonical
from ai_models.weights.torch_checkpoint import load_state_dict

# Reference post-processing: morphological opening with a 5x5 square, per slice.
_OPENING_KERNEL = np.ones((5, 5), np.uint8)
# The network and post-processing work on the series' own grid, so the mask needs no reorientation.
_SERIES_GRID = AxisMap(order=(0, 1, 2), flip=(False, False, False))
# MRA window (percentiles of the whole volume) of the reference.
MRA_WINDOW_PERCENTILES = (40.0, 98.5)

_OPTIONS: dict[str, Any] = {
    "threshold": 0.5,  # on the sigmoid probability, as in the reference
    "in_plane": "nifti",  # "nifti" (reference training layout) or "dicom" (rows x cols as stored)
    "batch_size": 4,  # slices per forward pass; results do not depend on it (eval-mode BatchNorm)
    "allow_pickle": False,  # unpickle non-tensor checkpoint content only for trusted files
}
_CAVEATS = (
    "In-plane layout assumes the training NIfTIs were dcm2niix conversions (columns x flipped rows); "
    "the spec marks the training voxel order as unknown.",
    "Slices are taken along the acquisition's slice axis, as NIfTI voxel axis 2 is for a converted series.",
)


def _weight_spec(kind: str) -> WeightSpec:
    return WeightSpec(
        key="weights",
        format="torch_pickle",
        description=f"MI2RLNet MRI_BET {kind} checkpoint: torch pickle with the state dict under 'net'",
    )


def mra_window(volume: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """Reference MRA normalisation: (v - P40) / (P98.5 - P40 + 1), clipped to [0, 1].

    The ``+ 1`` in the denominator is the reference's; it keeps a flat
    volume from dividing by zero.  Returns the image and the window used.
    """
    low, high = (float(v) for v in np.percentile(volume, MRA_WINDOW_PERCENTILES))
    image = np.clip((volume - low) / (high - low + 1.0), 0.0, 1.0).astype(np.float32)
    return image, (low, high)


def to_network_plane(slices: np.ndarray, in_plane: str) -> np.ndarray:
    """(n, rows, cols) as stored -> (n, H, W) the network sees."""
    if in_plane == "nifti":
        return np.swapaxes(slices[:, ::-1, :], 1, 2)
    return slices


def from_network_plane(slices: np.ndarray, in_plane: str) -> np.ndarray:
    """Inverse of :func:`to_network_plane`."""
    if in_plane == "nifti":
        return np.swapaxes(slices, 1, 2)[:, ::-1, :]
    return slices


def clean_mask(mask: np.ndarray) -> np.ndarray:
    """Reference post-processing of a (z, y, x) binary mask; returns uint8 0/1.

    Opening removes thin bridges to the scalp slice by slice; the largest
    3-D component (all components tied for largest, as in the reference)
    drops the eyes and other islands; hole filling restores the ventricles.
    """
    opened = np.stack([cv2.morphologyEx(s, cv2.MORPH_OPEN, _OPENING_KERNEL) for s in mask.astype(np.uint8)])
    labels, count = ndimage.label(opened)
    if count == 0:
        return np.zeros(mask.shape, np.uint8)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest = np.isin(labels, np.flatnonzero(sizes == sizes.max()))
    return ndimage.binary_fill_holes(largest).astype(np.uint8)


class BrainExtraction(Model):
    """Shared network and pipeline of the T1 and MRA brain-extraction models."""

    info: ClassVar[ModelInfo]

    def __init__(self, weights: dict[str, Path], device: torch.device, **options: Any) -> None:
        super().__init__(weights, device, **options)
        if self.options["in_plane"] not in ("nifti", "dicom"):
            raise ModelError(f"{self.info.name}: in_plane must be 'nifti' or 'dicom', not {self.options['in_plane']!r}")
        if not 0.0 < float(self.options["threshold"]) < 1.0:
            raise ModelError(f"{self.info.name}: threshold is a probability in (0, 1), got {self.options['threshold']}")
        if int(self.options["batch_size"]) < 1:
            raise ModelError(f"{self.info.name}: batch_size must be at least 1")
        network = BetUNet()
        load_state_dict(network, weights["weights"], allow_pickle=bool(self.options["allow_pickle"]))
        self.network: torch.nn.Module = network.to(device).eval()

    @abstractmethod
    def normalise(self, volume: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """Intensity preprocessing of the whole volume; returns the image and what to report."""

    def _foreground(self, image: np.ndarray) -> np.ndarray:
        """Thresholded network output for every slice of a (z, y, x) image, same shape, bool."""
        in_plane = self.options["in_plane"]
        batch = int(self.options["batch_size"])
        threshold = float(self.options["threshold"])
        planes = to_network_plane(image, in_plane)
        out = np.empty(planes.shape, dtype=bool)
        with torch.inference_mode():
            for start in range(0, len(planes), batch):
                chunk = torch.from_numpy(np.ascontiguousarray(planes[start : start + batch]))
                logits = self.network(chunk[:, None].to(self.device))
                out[start : start + batch] = (torch.sigmoid(logits[:, 0]) >= threshold).cpu().numpy()
        return from_network_plane(out, in_plane)

    def predict(self, source: Source) -> Segmentation:
        """Brain mask of one MR series, one frame per source image (sorted along the slice normal)."""
        volume = read_volume(source, values="hu")
        require_modality(volume, self.info.name, self.info.modalities)
        image, details = self.normalise(volume.array)
        mask = clean_mask(self._foreground(image))
        details.update(threshold=float(self.options["threshold"]), in_plane=self.options["in_plane"])
        return segmentation_from_canonical(
            volume, mask, _SERIES_GRID, model=self.info.name, model_version=self.info.version,
            label_names={1: "brain"}, details=details,
        )


class T1BrainExtraction(BrainExtraction):
    """``bet-t1``: raw T1 intensities into the network (no normalisation, as the reference)."""

    info = ModelInfo(
        name="bet-t1",
        task="brain extraction on T1-weighted MRI",
        modalities=("MR",),
        input_kind="series",
        output_kind="segmentation",
        version="1.0.0",
        description="MI2RLNet MRI_BET brain extraction for T1-weighted MR (2-D U-Net, slice-wise).",
        weights=(_weight_spec("T1"),),
        labels=("brain",),
        caveats=_CAVEATS
        + ("T1 intensities are used raw, so results depend on the scanner's intensity scale (as in the reference).",),
        options=_OPTIONS,
    )

    def normalise(self, volume: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        return volume.astype(np.float32, copy=False), {}


class MraBrainExtraction(BrainExtraction):
    """``bet-mra``: MR angiography, percentile-windowed intensities."""

    info = ModelInfo(
        name="bet-mra",
        task="brain extraction on MR angiography",
        modalities=("MR",),
        input_kind="series",
        output_kind="segmentation",
        version="1.0.0",
        description="MI2RLNet MRI_BET brain extraction for MR angiography (2-D U-Net, slice-wise, "
        "P40..P98.5 window).",
        weights=(_weight_spec("MRA"),),
        labels=("brain",),
        caveats=_CAVEATS,
        options=_OPTIONS,
    )

    def normalise(self, volume: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        image, window = mra_window(volume)
        return image, {"window": window}


register(T1BrainExtraction.info, T1BrainExtraction)
register(MraBrainExtraction.info, MraBrainExtraction)
