"""Typed results of every model.

The node turns these into DICOM SR / SEG / derived images; researchers read
them directly.  Every result names the model and version that produced it so
that reruns can be versioned downstream.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SliceEvidence:
    """The model's output on one source image, kept to explain a series decision."""

    sop_instance_uid: str
    probabilities: dict[str, float]
    used: bool = True


@dataclass
class Classification:
    """A label for an image or series, with class probabilities.

    ``header_value`` is what the DICOM header claims for the same property
    (e.g. Contrast/Bolus Agent, View Position) when the model is a header-fix
    check; ``agrees_with_header`` is None when the header cannot be compared
    (an empty View Position, say).  For contrast, an absent or empty agent
    means "no contrast", so it compares: that omission is what the fix is for.
    """

    model: str
    model_version: str
    label: str
    probabilities: dict[str, float]
    source_sop_instance_uids: list[str]
    evidence: list[SliceEvidence] = field(default_factory=list)
    header_value: str | None = None
    agrees_with_header: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def confidence(self) -> float:
        return float(self.probabilities[self.label])


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in original-image pixel coordinates (x right, y down).

    Coordinates are in pixels of the source image's Rows x Columns grid, so
    they can go straight into an SR SCOORD or an eraser.
    """

    x0: float
    y0: float
    x1: float
    y1: float
    label: str
    score: float
    sop_instance_uid: str = ""


@dataclass
class Detection:
    """All boxes a detector found, over one or more source images."""

    model: str
    model_version: str
    boxes: list[Box]
    source_sop_instance_uids: list[str]
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Segmentation:
    """A label map in the geometry of the source images.

    ``mask`` has shape (n_frames, rows, cols) and integer labels; frame i lies
    on ``source_sop_instance_uids[i]`` (one frame per source image, in the
    order given, so SEG frames can reference the right instances).  Label 0
    is background; ``label_names`` maps the others to names such as "lung".
    ``spacing_mm`` is (slice, row, col) spacing when known, and
    ``volumes_ml`` the volume per label name when it makes sense.
    """

    model: str
    model_version: str
    mask: np.ndarray
    label_names: dict[int, str]
    source_sop_instance_uids: list[str]
    spacing_mm: tuple[float, float, float] | None = None
    volumes_ml: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mask.ndim != 3:
            raise ValueError(f"mask must be (frames, rows, cols), got shape {self.mask.shape}")
        if self.mask.shape[0] != len(self.source_sop_instance_uids):
            raise ValueError(
                f"mask has {self.mask.shape[0]} frames but {len(self.source_sop_instance_uids)} source UIDs"
            )


Result = Classification | Detection | Segmentation
