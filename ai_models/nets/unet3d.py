"""The two 3-D U-Nets of MI2RLNet in PyTorch: IN-UNet3D and the SE-residual variant.

Architecture and weight order follow MI2RLNET_MODELS.md sections 3.1, 3.2
and Appendix A.2-A.4.  Details that matter for matching the Keras originals
number for number:

* InstanceNorm is the tensorflow-addons form: per sample and channel over
  all spatial axes, biased variance, eps 1e-3, affine.  ``nn.GroupNorm``
  with one group per channel computes exactly that.
* Max pooling is Keras 'valid' (odd sizes are floored).  Every up step
  therefore zero-pads its input by one voxel at the *end* of each spatial
  axis before the stride-2 transposed convolution, normalises (the padded
  border is part of the statistics), and keeps the first ``skip`` voxels:
  the excess is always 1 or 2, so odd sizes work without special cases.
* Concatenation puts the skip channels first.
* Networks return probabilities (softmax over channels, or sigmoid for a
  single channel), as the Keras models do; :meth:`logits` gives the values
  before that last activation.

Each network lists its weight-bearing modules in Keras topological order
through ``keras_layers()`` for :func:`ai_models.weights.keras_h5.load_topological`.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ai_models.weights.keras_h5 import load_keras_weights_topological


class InstanceNorm(nn.GroupNorm):
    """The tfa InstanceNormalization (eps 1e-3, biased variance, affine): a GroupNorm with one group per channel.

    torch refuses to normalise a single voxel, which the deepest level of a
    network fed 16-31 voxels per axis produces; the Keras layer returns
    ``beta`` there (the centred value is 0), and so does this one.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x[0, 0].numel() > 1:
            return super().forward(x)
        return torch.zeros_like(x) + self.bias.view(1, -1, *([1] * (x.dim() - 2)))


def instance_norm(channels: int) -> InstanceNorm:
    return InstanceNorm(channels)


def conv3(in_ch: int, out_ch: int) -> nn.Conv3d:
    """3x3x3 'same' convolution without bias (stride 1, so a symmetric one-voxel pad)."""
    return nn.Conv3d(in_ch, out_ch, kernel_size=3, padding=1, bias=False)


def upsample_to(x: torch.Tensor, up: nn.ConvTranspose3d) -> torch.Tensor:
    """Pad one voxel at the end of each spatial axis, then the stride-2 transposed convolution."""
    return up(F.pad(x, (0, 1, 0, 1, 0, 1)))


def crop_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Keep the first voxels of ``x`` so that its spatial size equals that of ``like``."""
    d, h, w = like.shape[-3:]
    return x[..., :d, :h, :w]


def _head_activation(logits: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


class KerasLoadable(nn.Module):
    """Shared loading for networks whose weights come from a topological Keras HDF5 file."""

    def keras_layers(self) -> list[nn.Module]:  # pragma: no cover - overridden
        raise NotImplementedError

    def load_keras(self, path: str | Path) -> None:
        """Copy a legacy Keras HDF5 file (``save_weights`` or ``model.save``) into this network by position."""
        load_keras_weights_topological(self.keras_layers(), path)


# --- IN-UNet3D (section 3.1, Appendix A.2) ------------------------------------------------------


class _ConvUnit(nn.Module):
    """Conv 3x3x3 (no bias) -> InstanceNorm -> activation."""

    def __init__(self, in_ch: int, out_ch: int, slope: float = 0.0) -> None:
        super().__init__()
        self.conv = conv3(in_ch, out_ch)
        self.norm = instance_norm(out_ch)
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        return F.leaky_relu(x, self.slope) if self.slope else F.relu(x)

    def keras_layers(self) -> list[nn.Module]:
        return [self.conv, self.norm]


class _UpStep(nn.Module):
    """Pad, transposed conv, IN, ReLU, crop, concatenate [skip, up], then ``n`` conv units."""

    def __init__(self, in_ch: int, out_ch: int, n: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(in_ch, out_ch, kernel_size=2, stride=2, bias=False)
        self.up_norm = instance_norm(out_ch)
        self.convs = nn.ModuleList([_ConvUnit(2 * out_ch if i == 0 else out_ch, out_ch) for i in range(n)])

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.up_norm(upsample_to(x, self.up)))
        x = torch.cat([skip, crop_to(x, skip)], dim=1)
        for unit in self.convs:
            x = unit(x)
        return x

    def keras_layers(self) -> list[nn.Module]:
        layers: list[nn.Module] = [self.up, self.up_norm]
        for unit in cast("Iterable[_ConvUnit]", self.convs):  # ModuleList yields plain Modules
            layers.extend(unit.keras_layers())
        return layers


class INUNet3D(KerasLoadable):
    """IN-UNet3D of the Liver and Black-blood modules: 1 channel in, ``n_classes`` softmax out (NCDHW).

    Fully convolutional: any D, H, W of at least 16 (four poolings) works.
    """

    def __init__(self, base: int = 32, n_classes: int = 2) -> None:
        super().__init__()
        f = [base * 2**i for i in range(5)]
        self.enc = nn.ModuleList([nn.ModuleList([_ConvUnit(1, f[0])])])
        for i in range(1, 5):
            self.enc.append(nn.ModuleList([_ConvUnit(f[i - 1], f[i]), _ConvUnit(f[i], f[i])]))
        self.dec = nn.ModuleList(
            [_UpStep(f[4], f[3], 2), _UpStep(f[3], f[2], 2), _UpStep(f[2], f[1], 2), _UpStep(f[1], f[0], 1)]
        )
        self.head = nn.Conv3d(f[0], n_classes, kernel_size=1, bias=True)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-3:]) < 16:
            raise ValueError(f"IN-UNet3D needs at least 16 voxels per axis, got {tuple(x.shape[-3:])}")
        skips = []
        for i, level in enumerate(self.enc):
            if i:
                x = F.max_pool3d(x, 2)
            for unit in cast(nn.ModuleList, level):  # each level is a ModuleList of conv units
                x = unit(x)
            skips.append(x)
        for step, skip in zip(self.dec, reversed(skips[:-1])):
            x = step(x, skip)
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _head_activation(self.logits(x))

    def keras_layers(self) -> list[nn.Module]:
        """The 41 weight-bearing layers in Appendix A.2 order."""
        layers: list[nn.Module] = []
        # ModuleLists yield plain Modules: enc holds ModuleLists of _ConvUnit, dec the _UpSteps
        for level in self.enc:
            for unit in cast("Iterable[_ConvUnit]", level):
                layers.extend(unit.keras_layers())
        for step in cast("Iterable[_UpStep]", self.dec):
            layers.extend(step.keras_layers())
        layers.append(self.head)
        return layers


# --- SE-residual IN-UNet3D (section 3.2, Appendix A.3 / A.4) -------------------------------------

LEAKY_SLOPE = 0.3
SE_RATIO = 16


class _SqueezeExcite(nn.Module):
    """Global average pool -> Dense(f/16, ReLU) -> Dense(f, sigmoid) -> channel-wise scale."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.squeeze = nn.Linear(channels, channels // SE_RATIO)
        self.excite = nn.Linear(channels // SE_RATIO, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.excite(F.relu(self.squeeze(x.mean(dim=(2, 3, 4))))))
        return x * w[:, :, None, None, None]

    def keras_layers(self) -> list[nn.Module]:
        return [self.squeeze, self.excite]


class _ResidualSE(nn.Module):
    """Conv-IN-LReLU, Conv-IN, SE, plus an IN-normalised 3x3x3 conv shortcut of the block input; add, LReLU."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.unit = _ConvUnit(in_ch, out_ch, LEAKY_SLOPE)
        self.conv = conv3(out_ch, out_ch)
        self.norm = instance_norm(out_ch)
        self.se = _SqueezeExcite(out_ch)
        self.short = conv3(in_ch, out_ch)
        self.short_norm = instance_norm(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = self.se(self.norm(self.conv(self.unit(x))))
        return F.leaky_relu(main + self.short_norm(self.short(x)), LEAKY_SLOPE)

    def keras_layers(self) -> list[nn.Module]:
        return [*self.unit.keras_layers(), self.conv, self.norm, *self.se.keras_layers(), self.short, self.short_norm]


class _SEDecoder(nn.Module):
    """Up block: pad, transposed conv, IN, LReLU, crop-concatenate [skip, up], residual SE block."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(in_ch, out_ch, kernel_size=2, stride=2, bias=False)
        self.up_norm = instance_norm(out_ch)
        self.block = _ResidualSE(2 * out_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.up_norm(upsample_to(x, self.up)), LEAKY_SLOPE)
        return self.block(torch.cat([skip, crop_to(x, skip)], dim=1))

    def keras_layers(self) -> list[nn.Module]:
        return [self.up, self.up_norm, *self.block.keras_layers()]


class SEResUNet3D(KerasLoadable):
    """The kidney-cascade network: ``depth`` 3 (modes 1, 2_1, 2_3-2_5) or 4 (mode 2_2).

    ``n_classes`` 1 gives a sigmoid output (stage 1), otherwise softmax.
    Any D, H, W of at least ``2**depth`` works.
    """

    def __init__(self, depth: int = 3, n_classes: int = 3, base: int = 32) -> None:
        super().__init__()
        if depth not in (3, 4):
            raise ValueError(f"depth must be 3 or 4, got {depth}")
        self.depth = depth
        f = [base * 2**i for i in range(depth + 1)]
        self.stem = _ConvUnit(1, f[0], LEAKY_SLOPE)
        self.enc = nn.ModuleList([_ResidualSE(f[i - 1], f[i]) for i in range(1, depth + 1)])
        self.dec = nn.ModuleList([_SEDecoder(f[i + 1], f[i]) for i in range(depth - 1, 0, -1)])
        self.final_up = nn.ConvTranspose3d(f[1], f[0], kernel_size=2, stride=2, bias=False)
        self.final_up_norm = instance_norm(f[0])
        self.final = _ConvUnit(2 * f[0], f[0], LEAKY_SLOPE)
        self.head = nn.Conv3d(f[0], n_classes, kernel_size=1, bias=True)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-3:]) < 2**self.depth:
            raise ValueError(f"depth-{self.depth} network needs at least {2**self.depth} voxels per axis, got {tuple(x.shape[-3:])}")
        skips = [self.stem(x)]
        for block in self.enc:
            skips.append(block(F.max_pool3d(skips[-1], 2)))
        x = skips[-1]
        for dec, skip in zip(self.dec, reversed(skips[1:-1])):
            x = dec(x, skip)
        up = F.leaky_relu(self.final_up_norm(upsample_to(x, self.final_up)), LEAKY_SLOPE)
        x = self.final(torch.cat([skips[0], crop_to(up, skips[0])], dim=1))
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _head_activation(self.logits(x))

    def keras_layers(self) -> list[nn.Module]:
        """51 (depth 3, Appendix A.3) or 69 (depth 4, A.4) weight-bearing layers in Keras order."""
        layers: list[nn.Module] = [*self.stem.keras_layers()]
        for block in cast("Iterable[_ResidualSE]", self.enc):  # ModuleList yields plain Modules
            layers.extend(block.keras_layers())
        for dec in cast("Iterable[_SEDecoder]", self.dec):
            layers.extend(dec.keras_layers())
        layers.extend([self.final_up, self.final_up_norm, *self.final.keras_layers(), self.head])
        return layers


@torch.inference_mode()
def run_network(net: nn.Module, volume: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """Apply a 3-D network to one single-channel (D, H, W) float array; return its (C, D, H, W) output."""
    x = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None].to(device)
    return net(x)[0].float().cpu().numpy()
