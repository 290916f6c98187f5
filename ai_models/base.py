"""The model base class every registered model derives from."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch

from ai_models.info import ModelInfo
from ai_models.results import Result


def select_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when present, else CPU; anything else is passed to torch."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Model(ABC):
    """A ready-to-run model: weights loaded, network in eval mode on its device.

    Subclasses build their network in ``__init__`` from the resolved weight
    paths and implement :meth:`predict`.  ``predict`` accepts anything
    :func:`ai_models.inputs.read_datasets` accepts.
    """

    info: ClassVar[ModelInfo]

    def __init__(self, weights: dict[str, Path], device: torch.device, **options: Any) -> None:
        self.weights = weights
        self.device = device
        unknown = set(options) - set(self.info.options)
        if unknown:
            raise TypeError(f"{self.info.name}: unknown option(s) {sorted(unknown)}; known: {sorted(self.info.options)}")
        self.options = {**self.info.options, **options}

    @abstractmethod
    def predict(self, source: Any) -> Result:
        """Run the model on DICOM input and return a typed result."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.info.name} v{self.info.version} on {self.device}>"


def _nhwc_inputs(_module: torch.nn.Module, args: tuple) -> tuple:
    return tuple(a.contiguous(memory_format=torch.channels_last) if isinstance(a, torch.Tensor) and a.dim() == 4 else a for a in args)


def channels_last(net: torch.nn.Module) -> torch.nn.Module:
    """Keep a 2-D network's weights and inputs in NHWC ("channels last").

    oneDNN's convolutions run fastest on NHWC on the CPU (measured here: the
    ResNet50 port 2.6x, the lung U-Net 1.3x faster than in NCHW), and CUDA
    uses tensor cores for it.  Numerically the same network; outputs may come
    back NHWC-strided, which reshape/permute handle.
    """
    # Module.to takes memory_format as a keyword (documented); torch's overloads leave it out
    net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    net.register_forward_pre_hook(_nhwc_inputs)
    return net
