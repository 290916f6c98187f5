"""Lung segmentation on chest radiographs (MI2RLNet ``LungSegmentation``), PyTorch port.

Pipeline, per image (MI2RLNET_MODELS.md section 4.4):

1. DICOM -> 8-bit grayscale picture (modality LUT, VOI LUT / window or
   min-max, MONOCHROME1 inverted; :mod:`ai_models.chest.radiograph`).  The
   original read 8-bit PNGs; how they were made from DICOM is unknown.
2. float32, cv2 INTER_AREA resize to 1024 x 1024, z-score over the whole
   image with the population standard deviation.
3. U-Net -> sigmoid probability; ``p > threshold`` (0.5).
4. Optional clean-up as in the original (``clean``): 5x5 opening, keep the
   two largest external contours, opening again.
5. **Back to the original Rows x Columns** (the original stopped at 1024):
   the {0, 255} mask is resized with bilinear interpolation and thresholded
   at > 127, which gives smoother borders than nearest-neighbour on
   upsampling and keeps a region's extent where it was to within a pixel.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from pydicom.dataset import Dataset

from ai_models.base import Model, channels_last
from ai_models.chest.radiograph import radiograph_to_unit, to_uint8
from ai_models.errors import InputError
from ai_models.info import ModelInfo, WeightSpec
from ai_models.inputs import read_datasets
from ai_models.nets.unet2d_lung import LungUNet
from ai_models.registry import register
from ai_models.results import Segmentation
from ai_models.weights.keras_h5 import load_keras_weights_topological

INPUT_SIZE = 1024
LUNG_LABEL = 1
OPENING_KERNEL = np.ones((5, 5), np.uint8)


def preprocess(gray: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """8-bit (H, W) -> z-scored (1, 1, size, size) float32, as the original did for its PNGs."""
    if gray.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {gray.shape}")
    resized = cv2.resize(gray.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    std = float(resized.std())
    z = (resized - float(resized.mean())) / (std if std > 0 else 1.0)
    return z[None, None].astype(np.float32)


def clean_mask(mask: np.ndarray) -> np.ndarray:
    """The original's clean-up of a {0, 255} uint8 mask: open, keep the two largest blobs, open again."""
    opened = cv2.morphologyEx(mask, cv2.MORPH_OPEN, OPENING_KERNEL)
    contours, _ = cv2.findContours((opened > 127).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    ranked = sorted(contours, key=cv2.contourArea, reverse=True)
    if len(ranked) > 2:
        cv2.drawContours(opened, ranked[2:], -1, color=0, thickness=cv2.FILLED)
    return cv2.morphologyEx(opened, cv2.MORPH_OPEN, OPENING_KERNEL)


def resize_mask(mask: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """A {0, 255} (or {0, 1}) mask -> boolean (rows, cols): bilinear resize, then > half of the top value."""
    top = 255.0 if mask.max() > 1 else 1.0
    resized = cv2.resize(mask.astype(np.float32), (cols, rows), interpolation=cv2.INTER_LINEAR)
    return resized > top * (127.0 / 255.0)


def pixel_spacing(ds: Dataset) -> tuple[tuple[float, float] | None, str | None]:
    """(row, column) spacing in mm from PixelSpacing, else ImagerPixelSpacing; and which one was used."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2:
            return (float(value[0]), float(value[1])), keyword
    return None, None


class LungSegmenter(Model):
    """U-Net lung segmentation of a chest radiograph, mask returned at the image's own size."""

    info = ModelInfo(
        name="lung",
        task="lung field segmentation on chest radiographs",
        modalities=("CR", "DX"),
        input_kind="image",
        output_kind="segmentation",
        version="1.0.0",
        description=(
            "MI2RLNet LungSegmentation: 2-D U-Net (22 convs) at 1024x1024, trained on JSRT; "
            "mask resized back to the original Rows x Columns."
        ),
        weights=(
            WeightSpec(
                key="weights",
                format="keras_h5",
                description="Keras HDF5 (weights-only or full model), loaded by layer order",
                original_name="Lung_segmentation.hdf5",
            ),
        ),
        labels=("lung",),
        caveats=(
            "The DICOM-to-8-bit conversion used for training is unknown; VOI window or min-max is used.",
            "Mask resized back with bilinear interpolation + threshold (the original returned 1024x1024).",
        ),
        # input_size: the network's square input side. The published weights were trained at 1024;
        # the net is fully convolutional, so smaller multiples of 16 run faster at lower accuracy
        # (useful for plumbing tests and quick previews, not for clinical use).
        options={"threshold": 0.5, "clean": True, "input_size": INPUT_SIZE},
    )

    def __init__(self, weights: dict[str, Path], device: torch.device, **options: Any) -> None:
        super().__init__(weights, device, **options)
        self.net = LungUNet()
        load_keras_weights_topological(self.net.keras_layers(), weights["weights"])
        self.net.eval().fold_upsampling()
        channels_last(self.net.to(device))
        self.input_size = int(self.options["input_size"])
        if self.input_size < 16 or self.input_size % 16:
            raise ValueError(f"lung: input_size must be a multiple of 16 (the U-Net halves it 4 times), got {self.input_size}")

    @torch.no_grad()
    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """Network input (1, 1, S, S) -> sigmoid map (S, S) float32."""
        return self.net(torch.from_numpy(image).to(self.device))[0, 0].float().cpu().numpy()

    def segment(self, gray: np.ndarray) -> np.ndarray:
        """8-bit grayscale (H, W) -> boolean lung mask (H, W)."""
        probabilities = self.probabilities(preprocess(gray, self.input_size))
        mask = np.where(probabilities > float(self.options["threshold"]), 255, 0).astype(np.uint8)
        if self.options["clean"]:
            mask = clean_mask(mask)
        return resize_mask(mask, *gray.shape)

    def predict(self, source: Any) -> Segmentation:
        datasets = read_datasets(source)
        shapes = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
        if len(shapes) != 1:
            raise InputError(f"lung: images of different sizes {sorted(shapes)} cannot share one mask; send them one by one")
        masks = [self.segment(to_uint8(radiograph_to_unit(ds))) for ds in datasets]
        spacing, spacing_source = pixel_spacing(datasets[0])
        details: dict[str, Any] = {"threshold": float(self.options["threshold"]), "clean": bool(self.options["clean"])}
        if spacing is not None:
            # ImagerPixelSpacing is at the detector, i.e. includes the geometric magnification.
            details["spacing_source"] = spacing_source
        return Segmentation(
            model=self.info.name,
            model_version=self.info.version,
            mask=np.stack(masks).astype(np.uint8) * LUNG_LABEL,
            label_names={LUNG_LABEL: "lung"},
            source_sop_instance_uids=[str(getattr(ds, "SOPInstanceUID", "")) for ds in datasets],
            # A projection image has no slice spacing; 1.0 is a nominal placeholder for the frame axis.
            spacing_mm=(1.0, *spacing) if spacing is not None else None,
            details=details,
        )


register(LungSegmenter.info, LungSegmenter)
