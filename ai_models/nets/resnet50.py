"""Keras-applications ResNet50 (v1) in PyTorch, with MI2RLNet's two-dense classifier head.

MI2RLNet's view classifier and enhanced-CT classifier are both
``keras.applications.ResNet50(weights=None, include_top=True, ...)`` with an
extra ``Dense(n, softmax, name="final_layer")`` applied to the 1000-way
softmax ``predictions`` layer (MI2RLNET_MODELS.md sections 4.2 and 4.3).
That Keras flavour differs from torchvision's ResNet50 in ways that change
the numbers, so it is rebuilt here rather than borrowed:

* every convolution has a bias, and BatchNorm uses epsilon 1.001e-5;
* the stem zero-pads by 3 before a 7x7/2 'valid' convolution and zero-pads
  by 1 before a 3x3/2 'valid' max pool (zero padding, not -inf; the inputs
  are post-ReLU so the two agree, and the port uses the pool's own -inf
  padding to save a copy);
* the first block of every stage has a projection shortcut (also in stage
  2, where the stride is 1) and puts the stride on the first 1x1
  convolution (v1, not v1.5).

Weights are assigned **by layer name**: Keras orders ResNet50's layers by
graph depth, not creation order, so position-based loading would pair the
wrong tensors, while the layer names (``conv2_block1_0_conv`` ...) are fixed
strings.  Every expected layer must be present, with the expected shapes,
and the file must not hold weight-bearing layers the network lacks: a
different architecture (ResNet101, another head) is refused with a
:class:`~ai_models.errors.WeightError` instead of being half-loaded.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ai_models.errors import WeightError
from ai_models.nets.folding import refuse_if_folded
from ai_models.weights.keras_h5 import load_by_name, read_keras_h5

KERAS_BN_EPSILON = 1.001e-5
"""The BatchNorm epsilon keras.applications.ResNet50 uses (not Keras' default 1e-3)."""

# (stage name, bottleneck width f, number of blocks, stride of the first block)
_STAGES: tuple[tuple[str, int, int, int], ...] = (
    ("conv2", 64, 3, 1),
    ("conv3", 128, 4, 2),
    ("conv4", 256, 6, 2),
    ("conv5", 512, 3, 2),
)
FEATURES = 2048
"""Width of the global-average-pooled feature vector (4 x 512)."""


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=KERAS_BN_EPSILON)


class Bottleneck(nn.Module):
    """One Keras ``block1``: 1x1 (stride) -> 3x3 'same' -> 1x1 (4f), plus shortcut, add, ReLU.

    ``name`` is the Keras prefix, e.g. ``conv3_block1``; :meth:`keras_layers`
    maps the Keras layer names under that prefix onto this block's modules.
    """

    def __init__(self, name: str, in_channels: int, filters: int, stride: int, projection: bool) -> None:
        super().__init__()
        self.name = name
        out_channels = 4 * filters
        self.shortcut_conv = nn.Conv2d(in_channels, out_channels, 1, stride=stride) if projection else None
        self.shortcut_bn = _bn(out_channels) if projection else None
        self.conv1 = nn.Conv2d(in_channels, filters, 1, stride=stride)
        self.bn1 = _bn(filters)
        # Keras 'same' with stride 1 and an odd kernel is a symmetric pad of 1.
        self.conv2 = nn.Conv2d(filters, filters, 3, padding=1)
        self.bn2 = _bn(filters)
        self.conv3 = nn.Conv2d(filters, out_channels, 1)
        self.bn3 = _bn(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut_conv is not None and self.shortcut_bn is not None:
            shortcut = self.shortcut_bn(self.shortcut_conv(x))
        else:
            shortcut = x
        # In-place ReLU and add: every tensor changed here was just made by a
        # convolution or BatchNorm, and one pass fewer over each activation counts on CPU.
        y = F.relu_(self.bn1(self.conv1(x)))
        y = F.relu_(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu_(y.add_(shortcut))

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        """Convolution / BatchNorm attribute pairs for :func:`~ai_models.nets.folding.fold_batchnorms`."""
        return [("shortcut_conv", "shortcut_bn"), ("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")]

    def keras_layers(self) -> dict[str, nn.Module]:
        layers: dict[str, nn.Module] = {}
        if self.shortcut_conv is not None and self.shortcut_bn is not None:
            layers[f"{self.name}_0_conv"] = self.shortcut_conv
            layers[f"{self.name}_0_bn"] = self.shortcut_bn
        for index, (conv, bn) in enumerate(((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)), 1):
            layers[f"{self.name}_{index}_conv"] = conv
            layers[f"{self.name}_{index}_bn"] = bn
        return layers


class ResNet50Backbone(nn.Module):
    """Keras ResNet50 v1 up to and including global average pooling: (N, C, H, W) -> (N, 2048).

    ``in_channels`` replaces the usual 3 (MI2RLNet trains from scratch on 1-
    or 2-channel inputs).  Any input of at least 32x32 works; the stride is 32.
    """

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1_conv = nn.Conv2d(in_channels, 64, 7, stride=2)
        self.conv1_bn = _bn(64)
        blocks: list[Bottleneck] = []
        channels = 64
        for stage, filters, count, stride in _STAGES:
            for index in range(1, count + 1):
                first = index == 1
                blocks.append(
                    Bottleneck(f"{stage}_block{index}", channels, filters, stride if first else 1, projection=first)
                )
                channels = 4 * filters
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (3, 3, 3, 3))
        x = F.relu_(self.conv1_bn(self.conv1_conv(x)))
        # Keras zero-pads before this pool; max_pool2d pads with -inf.  After the ReLU every
        # value is >= 0 and every window holds at least one real value, so both give the same
        # maximum, without materialising a padded copy of the stem's output.
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        x = self.blocks(x)
        return x.mean(dim=(2, 3))

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        """The stem's convolution / BatchNorm pair (the blocks declare their own)."""
        return [("conv1_conv", "conv1_bn")]

    def keras_layers(self) -> dict[str, nn.Module]:
        """Keras layer name -> the torch module holding that layer's weights (106 entries)."""
        layers: dict[str, nn.Module] = {"conv1_conv": self.conv1_conv, "conv1_bn": self.conv1_bn}
        for block in cast("Iterable[Bottleneck]", self.blocks):  # Sequential yields plain Modules
            layers.update(block.keras_layers())
        return layers


class MI2RLResNet50Classifier(nn.Module):
    """ResNet50 -> ``predictions`` Dense(1000, softmax) -> ``final_layer`` Dense(n, softmax).

    The 1000-way layer is not ImageNet's: MI2RLNet built ResNet50 with
    ``include_top=True, weights=None`` and trained it end to end, so its
    softmax is part of the network and is reproduced.  ``forward`` returns
    class probabilities (rows sum to 1).
    """

    def __init__(self, in_channels: int, num_classes: int, top_classes: int = 1000) -> None:
        super().__init__()
        self.backbone = ResNet50Backbone(in_channels)
        self.predictions = nn.Linear(FEATURES, top_classes)
        self.final_layer = nn.Linear(top_classes, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled 2048-vector (Keras ``avg_pool`` output)."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top = torch.softmax(self.predictions(self.backbone(x)), dim=1)
        return torch.softmax(self.final_layer(top), dim=1)

    def keras_layers(self) -> dict[str, nn.Module]:
        """All 108 weight-bearing Keras layers by name (MI2RLNET_MODELS.md Appendix A.5)."""
        refuse_if_folded(self)
        return {**self.backbone.keras_layers(), "predictions": self.predictions, "final_layer": self.final_layer}

    def load_keras_h5(self, path: str | Path) -> None:
        """Copy a legacy Keras HDF5 file (``save_weights`` or ``model.save``) into this network.

        Raises :class:`WeightError` when the file is unreadable, lacks a layer,
        has a layer of another shape, or has weight-bearing layers this
        network does not have.
        """
        layers = read_keras_h5(path)
        expected = self.keras_layers()
        extra = [layer.name for layer in layers if layer.name not in expected]
        if extra:
            present = {layer.name for layer in layers}
            missing = [name for name in expected if name not in present]
            raise WeightError(
                f"{path}: the file is from a different architecture: {len(extra)} weight-bearing layer(s) "
                f"that this ResNet50 classifier lacks, e.g. {extra[:5]}, and {len(missing)} of its layers "
                f"missing, e.g. {missing[:5]}"
            )
        load_by_name(expected, layers, path)
