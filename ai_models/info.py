"""What a model is, without the model: its name, task, inputs, outputs, weight files and options.

Plain data with no torch import, so that the registry, the catalog, rule
validation and the node's parent process can describe every model without
loading one; :mod:`ai_models.base` and :mod:`ai_models.registry` both build on it.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

WeightFormat = Literal["keras_h5", "torch_pickle"]
InputKind = Literal["image", "series"]
OutputKind = Literal["classification", "detection", "segmentation"]


@dataclass(frozen=True)
class WeightSpec:
    """One weight file a model needs.  ``key`` names it in configuration."""

    key: str
    format: WeightFormat
    description: str
    original_name: str = ""
    optional: bool = False


@dataclass(frozen=True)
class ModelInfo:
    """What a model does, what it accepts, and what it needs to run."""

    name: str
    task: str
    modalities: tuple[str, ...]
    input_kind: InputKind
    output_kind: OutputKind
    version: str
    description: str
    weights: tuple[WeightSpec, ...] = ()
    labels: tuple[str, ...] = ()
    header_fix: str | None = None
    caveats: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def needs_weights(self) -> bool:
        return any(not w.optional for w in self.weights)
