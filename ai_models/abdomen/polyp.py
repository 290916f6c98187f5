"""Colon polyp segmentation: MI2RLNet ``Abdomen.PolypDetection`` on endoscopy DICOM (spec section 4.7).

Input: VL Endoscopic Image instances (Modality ES, 3 samples per pixel;
pydicom decodes YBR-coded pixels to RGB).  Each frame is converted to the
reference's BGR order, resized to 512 x 512 (bilinear), scaled to [0, 1]
and run through the U-Net one frame at a time.

Where this deliberately differs from the reference, and why:

- The threshold is a probability applied to ``sigmoid(logit)``.  The
  reference compared raw logits with 0.7 while documenting it as a
  probability; its behaviour equals ``threshold=sigmoid(0.7) ~= 0.668``.
- The probability map is resized back to (rows, cols) before thresholding.
  The reference resized the binary mask with (rows, cols) passed where
  OpenCV expects (width, height), so non-square images came back
  transposed, and its uint8 cast eroded every edge.

BatchNorm: the reference never called ``model.eval()``, so BatchNorm
normalised each image with its own statistics.  ``bn_mode="reference"``
(default) reproduces that, without touching the stored running statistics;
``bn_mode="eval"`` uses the running statistics as a trained network
normally would.  Which one matches training is unknown (spec 4.7).

Hook for tests and research: ``model.network`` is the torch module that
``predict`` calls on a (1, 3, 512, 512) float tensor and whose output it
reads as (1, 1, 512, 512) logits; assign any module with that contract.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from pydicom.dataset import Dataset
from torch import nn

from ai_models.base import Model
from ai_models.errors import InputError, ModelError
from ai_models.info import ModelInfo, WeightSpec
from ai_models.inputs import Source, read_datasets
from ai_models.nets.unet_polyp import PolypUNet
from ai_models.registry import register
from ai_models.results import Segmentation
from ai_models.weights.torch_checkpoint import load_state_dict

NETWORK_SIZE = 512  # the reference resizes every frame to 512 x 512


def use_batch_statistics(network: nn.Module) -> None:
    """Make every BatchNorm normalise with the current batch's statistics and never update its buffers.

    This is the reference's (train-mode) behaviour minus its side effect of
    drifting the running statistics on every call.
    """
    for module in network.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train()
            module.track_running_stats = False


def endoscopy_frames(ds: Dataset) -> np.ndarray:
    """Colour frames of one instance as (frames, rows, cols, 3) RGB, still in stored bit depth."""
    uid = getattr(ds, "SOPInstanceUID", "?")
    if int(getattr(ds, "SamplesPerPixel", 1)) != 3:
        raise InputError(f"instance {uid} is not a colour image (SamplesPerPixel != 3); polyp needs RGB endoscopy")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - pixel decoders raise many types
        raise InputError(f"cannot decode pixels of {uid}: {exc}") from exc
    return pixels if pixels.ndim == 4 else pixels[None]


def to_network_input(frame: np.ndarray, max_value: float, channel_order: str) -> torch.Tensor:
    """One RGB frame -> (1, 3, 512, 512) float tensor in [0, 1], as the reference prepared it."""
    if channel_order == "bgr":
        frame = frame[..., ::-1]
    resized = cv2.resize(np.ascontiguousarray(frame), (NETWORK_SIZE, NETWORK_SIZE), interpolation=cv2.INTER_LINEAR)
    scaled = resized.astype(np.float32) / max_value
    return torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1)))[None]


class PolypSegmentation(Model):
    """``polyp``: U-Net polyp mask for each endoscopy frame, at the frame's own resolution."""

    info = ModelInfo(
        name="polyp",
        task="polyp segmentation on colonoscopy images",
        modalities=("ES",),
        input_kind="image",
        output_kind="segmentation",
        version="1.0.0",
        description="MI2RLNet PolypDetection: 2-D U-Net polyp segmentation of colonoscopy frames "
        "(trained on Kvasir-SEG).",
        weights=(
            WeightSpec(
                key="weights",
                format="torch_pickle",
                description="MI2RLNet PolypDetection checkpoint: torch pickle with the state dict under 'net'",
                original_name="weight.pth",
            ),
        ),
        labels=("polyp",),
        caveats=(
            "Trained on Kvasir-SEG (research and education use).",
            "bn_mode='reference' normalises each frame with its own statistics, as the original did; "
            "whether training used that is unknown.",
            "Channel order at training time is unknown; the reference fed BGR.",
        ),
        options={
            "threshold": 0.7,  # probability; the reference's logit > 0.7 equals 0.668
            "bn_mode": "reference",  # or "eval"
            "channel_order": "bgr",  # or "rgb"
            "allow_pickle": False,  # unpickle non-tensor checkpoint content only for trusted files
        },
    )

    def __init__(self, weights: dict[str, Path], device: torch.device, **options: Any) -> None:
        super().__init__(weights, device, **options)
        if self.options["bn_mode"] not in ("reference", "eval"):
            raise ModelError(f"polyp: bn_mode must be 'reference' or 'eval', not {self.options['bn_mode']!r}")
        if self.options["channel_order"] not in ("bgr", "rgb"):
            raise ModelError(f"polyp: channel_order must be 'bgr' or 'rgb', not {self.options['channel_order']!r}")
        if not 0.0 < float(self.options["threshold"]) < 1.0:
            raise ModelError(f"polyp: threshold is a probability in (0, 1), got {self.options['threshold']}")
        network = PolypUNet()
        load_state_dict(network, weights["weights"], allow_pickle=bool(self.options["allow_pickle"]))
        network.to(device).eval()
        if self.options["bn_mode"] == "reference":
            use_batch_statistics(network)
        self.network: nn.Module = network

    def _probability(self, frame: np.ndarray, max_value: float) -> np.ndarray:
        """Polyp probability of one frame at the frame's (rows, cols)."""
        tensor = to_network_input(frame, max_value, self.options["channel_order"]).to(self.device)
        with torch.inference_mode():
            probability = torch.sigmoid(self.network(tensor))[0, 0].float().cpu().numpy()
        rows, cols = frame.shape[:2]
        return cv2.resize(probability, (cols, rows), interpolation=cv2.INTER_LINEAR)  # dsize is (width, height)

    def predict(self, source: Source) -> Segmentation:
        """Polyp mask of every frame of every instance in ``source`` (all of one size)."""
        masks: list[np.ndarray] = []
        uids: list[str] = []
        frames_of: list[tuple[str, int]] = []
        peaks: list[float] = []
        threshold = float(self.options["threshold"])
        for ds in read_datasets(source):
            uid = str(getattr(ds, "SOPInstanceUID", ""))
            max_value = float(2 ** int(getattr(ds, "BitsStored", 8)) - 1)
            for number, frame in enumerate(endoscopy_frames(ds), start=1):
                if masks and frame.shape[:2] != masks[0].shape:
                    raise InputError(
                        f"frames have different sizes ({masks[0].shape} and {frame.shape[:2]}); "
                        "pass images of one size per call"
                    )
                probability = self._probability(frame, max_value)
                masks.append((probability > threshold).astype(np.uint8))
                peaks.append(float(probability.max()))
                uids.append(uid)
                frames_of.append((uid, number))
        return Segmentation(
            model=self.info.name,
            model_version=self.info.version,
            mask=np.stack(masks),
            label_names={1: "polyp"},
            source_sop_instance_uids=uids,
            details={
                "frames": frames_of,
                "max_probability": peaks,
                "threshold": threshold,
                "bn_mode": self.options["bn_mode"],
                "channel_order": self.options["channel_order"],
            },
        )


register(PolypSegmentation.info, PolypSegmentation)
