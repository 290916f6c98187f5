"""Enhanced vs non-enhanced chest CT (MI2RLNet ``Chest.EnhanceCTClassifier``), series level.

A header-fix check for Contrast/Bolus Agent (0018,0010): the network says
whether contrast is visible, the header says whether an agent was recorded.

Network: Keras ResNet50 on a 2-channel 256x256 slice, then the 1000-way
softmax ``predictions`` and ``final_layer`` Dense(2, softmax), labels
``("Non-Enhanced", "Enhanced")`` (MI2RLNET_MODELS.md section 4.3).

Per-slice input (section 4.3; ``channel_formula`` picks the variant, since
which one the published weights were trained with is unknown):

* ``"head"`` (default, the code at MI2RLNet HEAD):
  windowed = clip((HU - 100) / 2024, 0, 1); full = (HU + 1024) / 4096.
* ``"pre-head"`` (the code when the paper was written):
  windowed = clip((HU + 1024) / 4096, 0, 1); full as above.
* ``"l550-w737"`` (what the README describes, a conventional L550/W737
  window): windowed = clip((HU - 181.5) / 737, 0, 1); full as above.

The full-range channel is not clipped, and stored values of -2000 (padding)
are set to 0 before it is computed, as in the original.  Channel order is
(windowed, full) as in the code; ``swap_channels=True`` gives the README's
(full, windowed).  Each channel is resized to 256x256 with area averaging.
HU = stored * RescaleSlope + RescaleIntercept; the original ignored the
slope, which is the same thing for the slope of 1 that CT uses in practice.

Series decision (router policy; MI2RLNet classifies single slices only):
slices are ordered along the slice normal (Image Position Patient projected
on the cross product of the Image Orientation Patient vectors; Instance
Number when geometry is missing).  The middle ``middle_fraction`` of that
order (default the middle third, i.e. mid-thorax for a chest CT) is
selected; if it holds more than ``max_slices`` slices, that many are taken
evenly spaced.  The series label is the argmax of the mean class
probabilities over the selected slices.  Every slice run through the
network is reported as :class:`~ai_models.results.SliceEvidence`, ``used``
marking those in the mean; ``infer_all_slices=True`` also runs the other
slices, for inspection.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from pydicom.dataset import Dataset

from ai_models.base import Model, channels_last
from ai_models.errors import InputError, ModelError
from ai_models.info import ModelInfo, WeightSpec
from ai_models.inputs import read_datasets
from ai_models.nets.folding import fold_batchnorms
from ai_models.nets.resnet50 import MI2RLResNet50Classifier
from ai_models.registry import register
from ai_models.results import Classification, SliceEvidence

LABELS: tuple[str, ...] = ("Non-Enhanced", "Enhanced")
"""Output order of ``final_layer``, as the original's argmax list."""
INPUT_SIZE = 256
PADDING_STORED_VALUE = -2000
"""Stored value the original zeroes before computing the full-range channel."""

# Lower bound and divisor of the windowed channel: clip((HU - lower) / divisor, 0, 1).
CHANNEL_FORMULAS: dict[str, tuple[float, float]] = {
    "head": (100.0, 2024.0),
    "pre-head": (-1024.0, 4096.0),
    "l550-w737": (550.0 - 737.0 / 2, 737.0),
}

NO_AGENT_VALUES = frozenset({"", "NONE", "NO", "N/A", "NA", "NIL", "-", "0", "NO CONTRAST", "NON-CONTRAST", "WITHOUT"})
"""Contrast/Bolus Agent values that say "no agent" (compared upper-case): they count as absent."""


def slice_channels(ds: Dataset, channel_formula: str = "head", swap_channels: bool = False) -> np.ndarray:
    """One CT slice to the network input, shape (2, 256, 256) float32, channels first."""
    if channel_formula not in CHANNEL_FORMULAS:
        raise ModelError(f"channel_formula must be one of {sorted(CHANNEL_FORMULAS)}, not {channel_formula!r}")
    uid = getattr(ds, "SOPInstanceUID", "?")
    if "RescaleIntercept" not in ds:
        raise InputError(f"{uid}: no Rescale Intercept; the enhancement model needs CT images")
    if int(getattr(ds, "NumberOfFrames", 1) or 1) != 1:
        raise InputError(f"{uid}: multi-frame images are not supported; send one slice per instance")
    try:
        stored = np.asarray(ds.pixel_array, dtype=np.float32)
    except Exception as exc:  # pydicom raises several unrelated types for bad pixel data
        raise InputError(f"{uid}: cannot decode pixel data: {exc}") from exc
    if stored.ndim != 2:
        raise InputError(f"{uid}: expected a 2-D grayscale slice, got shape {stored.shape}")
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(ds.RescaleIntercept)
    lower, divisor = CHANNEL_FORMULAS[channel_formula]
    windowed = np.clip((stored * slope + intercept - lower) / divisor, 0.0, 1.0)
    unpadded = np.where(stored == PADDING_STORED_VALUE, 0.0, stored)
    full = (unpadded * slope + intercept + 1024.0) / 4096.0
    size = (INPUT_SIZE, INPUT_SIZE)
    channels = [cv2.resize(c.astype(np.float32), size, interpolation=cv2.INTER_AREA) for c in (windowed, full)]
    if swap_channels:
        channels.reverse()
    return np.stack(channels)


def _slice_normal(ds: Dataset) -> np.ndarray | None:
    orientation = getattr(ds, "ImageOrientationPatient", None)
    if orientation is None or len(orientation) != 6:
        return None
    row, col = np.asarray(orientation[:3], dtype=float), np.asarray(orientation[3:], dtype=float)
    normal = np.cross(row, col)
    norm = np.linalg.norm(normal)
    return normal / norm if norm > 0 else None


def order_slices(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Slices sorted along the slice normal; by Instance Number when any slice lacks geometry.

    The normal is taken from the first slice with an orientation.  Without
    positions or instance numbers the given order is kept.
    """
    normal = next((n for n in map(_slice_normal, datasets) if n is not None), None)
    if normal is not None and all(len(getattr(ds, "ImagePositionPatient", []) or []) == 3 for ds in datasets):
        return sorted(datasets, key=lambda ds: float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=float), normal)))
    if all(getattr(ds, "InstanceNumber", None) is not None for ds in datasets):
        return sorted(datasets, key=lambda ds: int(ds.InstanceNumber))
    return list(datasets)


def middle_indices(count: int, fraction: float, max_slices: int) -> list[int]:
    """Indices of the central ``fraction`` of ``count`` ordered slices, thinned to ``max_slices`` (0 = all).

    Always at least one slice; the window is centred (an odd leftover goes
    to the far end).
    """
    if count <= 0:
        return []
    width = min(count, max(1, int(round(count * fraction))))
    start = (count - width) // 2
    indices = list(range(start, start + width))
    if max_slices and width > max_slices:
        picks = np.linspace(0, width - 1, max_slices).round().astype(int)
        indices = [indices[i] for i in picks]
    return indices


def contrast_agent(datasets: Sequence[Dataset]) -> tuple[str | None, list[str]]:
    """The series' Contrast/Bolus Agent (most frequent non-empty value) and all distinct values seen."""
    values = [str(getattr(ds, "ContrastBolusAgent", "") or "").strip() for ds in datasets]
    present = [v for v in values if v]
    if not present:
        return None, []
    distinct = sorted(set(present))
    return max(distinct, key=present.count), distinct


def agent_given(header_value: str | None) -> bool:
    """True when the header names an agent (not absent, empty, or a "none" value)."""
    return header_value is not None and header_value.strip().upper() not in NO_AGENT_VALUES


def _series_slices(datasets: list[Dataset]) -> tuple[list[Dataset], int]:
    """Drop localizers; refuse input that mixes series.  Returns the slices and how many were dropped."""
    slices = [ds for ds in datasets if "LOCALIZER" not in [str(v).upper() for v in getattr(ds, "ImageType", [])]]
    if not slices:
        raise InputError("the input holds only localizer images")
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for ds in slices}
    if len(series) > 1:
        raise InputError(f"the enhancement model takes one series at a time, the input holds {len(series)}")
    return slices, len(datasets) - len(slices)


DEFAULT_OPTIONS: dict[str, Any] = {
    "channel_formula": "head",
    "swap_channels": False,
    "batch_size": 8,
    "middle_fraction": 1 / 3,
    "max_slices": 32,
    "infer_all_slices": False,
}

INFO = ModelInfo(
    name="enhancement",
    task="enhanced vs non-enhanced chest CT",
    modalities=("CT",),
    input_kind="series",
    output_kind="classification",
    version="1.0.0",
    description=(
        "MI2RLNet Chest.EnhanceCTClassifier: Keras ResNet50 (2 channels, 256x256) with a 2-way head, "
        "ported to PyTorch; slice probabilities averaged over the mid-thorax; checks Contrast/Bolus Agent (0018,0010)."
    ),
    weights=(
        WeightSpec(
            key="weights",
            format="keras_h5",
            description="Keras HDF5 of MI2RLNet's enhanced-CT classifier (save_weights or model.save file)",
            original_name="MI2RLNet README, Google Drive id 15S494ac3pUJSD6vEMJlSRi0Y42iM2OoG",
        ),
    ),
    labels=LABELS,
    header_fix="ContrastBolusAgent",
    caveats=(
        "The input channel formula the published weights were trained with is unknown "
        "(option channel_formula: head, pre-head, l550-w737; swap_channels); validate on labelled CTs.",
        "The series decision (mean over the middle third of the slices) is this port's policy, not MI2RLNet's.",
        "Trained on private Asan Medical Center data; licence of the weights not stated.",
    ),
    options=DEFAULT_OPTIONS,
)


class EnhancementClassifier(Model):
    """Enhanced / non-enhanced for one CT series; see the module docstring for the policy."""

    info = INFO

    def __init__(self, weights: dict[str, Path], device: torch.device, **options: Any) -> None:
        super().__init__(weights, device, **options)
        self._check_options()
        self.net = MI2RLResNet50Classifier(in_channels=2, num_classes=len(LABELS))
        self.net.load_keras_h5(weights["weights"])
        fold_batchnorms(self.net.eval())
        channels_last(self.net.to(device))

    def _check_options(self) -> None:
        o = self.options
        if o["channel_formula"] not in CHANNEL_FORMULAS:
            raise ModelError(f"channel_formula must be one of {sorted(CHANNEL_FORMULAS)}, not {o['channel_formula']!r}")
        if isinstance(o["batch_size"], bool) or not isinstance(o["batch_size"], int) or o["batch_size"] < 1:
            raise ModelError(f"batch_size must be a positive integer, not {o['batch_size']!r}")
        fraction = o["middle_fraction"]
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise ModelError(f"middle_fraction must be in (0, 1], not {o['middle_fraction']!r}")
        if isinstance(o["max_slices"], bool) or not isinstance(o["max_slices"], int) or o["max_slices"] < 0:
            raise ModelError(f"max_slices must be an integer >= 0 (0 = no limit), not {o['max_slices']!r}")

    def slice_probabilities(self, slices: Sequence[Dataset]) -> np.ndarray:
        """Network probabilities (len(slices), 2), computed ``batch_size`` slices at a time."""
        out = []
        batch_size = int(self.options["batch_size"])
        for start in range(0, len(slices), batch_size):
            batch = np.stack(
                [
                    slice_channels(ds, self.options["channel_formula"], bool(self.options["swap_channels"]))
                    for ds in slices[start : start + batch_size]
                ]
            )
            with torch.inference_mode():
                out.append(self.net(torch.from_numpy(batch).to(self.device)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(LABELS)), dtype=np.float32)

    def predict(self, source: Any) -> Classification:
        """Classify one CT series (a folder, files or datasets of the same series)."""
        slices, localizers = _series_slices(read_datasets(source))
        ordered = order_slices(slices)
        used = middle_indices(len(ordered), float(self.options["middle_fraction"]), int(self.options["max_slices"]))
        run = list(range(len(ordered))) if self.options["infer_all_slices"] else used
        probs = self.slice_probabilities([ordered[i] for i in run])
        used_set = set(used)
        evidence = [
            SliceEvidence(
                sop_instance_uid=str(getattr(ordered[i], "SOPInstanceUID", "")),
                probabilities={name: float(p) for name, p in zip(LABELS, row)},
                used=i in used_set,
            )
            for i, row in zip(run, probs)
        ]
        mean = probs[[k for k, i in enumerate(run) if i in used_set]].mean(axis=0)
        label = LABELS[int(np.argmax(mean))]
        header_value, header_values = contrast_agent(ordered)
        details: dict[str, Any] = {
            "policy": f"mean probability over the middle {float(self.options['middle_fraction']):.3g} of the slices",
            "slices_total": len(ordered),
            "slices_used": len(used),
            "channel_formula": self.options["channel_formula"],
            "swap_channels": bool(self.options["swap_channels"]),
        }
        if localizers:
            details["localizers_skipped"] = localizers
        if len(header_values) > 1:
            details["contrast_agent_values"] = header_values
        return Classification(
            model=self.info.name,
            model_version=self.info.version,
            label=label,
            probabilities={name: float(p) for name, p in zip(LABELS, mean)},
            source_sop_instance_uids=[str(getattr(ds, "SOPInstanceUID", "")) for ds in ordered],
            evidence=evidence,
            header_value=header_value,
            agrees_with_header=(label == "Enhanced") == agent_given(header_value),
            details=details,
        )


register(INFO, EnhancementClassifier)
