"""The MI2RLNet chest X-ray lung segmentation U-Net, in PyTorch.

Architecture and weight order follow MI2RLNET_MODELS.md section 4.4 and
Appendix A.1: 22 Conv2D 3x3 'same' layers, all with bias and ReLU except the
final 1-channel sigmoid.  The network is fully convolutional; the original
runs it at 1024x1024, and any size divisible by 16 (four 2x2 poolings) gives
the same per-pixel computation, which is what the equivalence tests rely on.

The Keras file stores layers under auto-generated names (``conv2d_17``...),
so :meth:`LungUNet.keras_layers` lists the convolutions in Keras topological
order for position-based loading.
"""
from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ai_models.nets.subpixel import UpsampleConv3x3


def _conv(in_ch: int, out_ch: int) -> nn.Conv2d:
    # 3x3 'same' with stride 1 is a symmetric one-pixel pad in torch.
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=True)


class _UpStage(nn.Module):
    """Nearest x2 upsampling, two convs, skip concatenation (skip first), one fusing conv.

    After :meth:`fold_upsampling` the upsampling and ``conv_a`` are one
    :class:`UpsampleConv3x3` that works at the low resolution.
    """

    def __init__(self, in_ch: int, mid_ch: int, skip_ch: int) -> None:
        super().__init__()
        self.conv_a: nn.Module = _conv(in_ch, mid_ch)
        self.conv_b = _conv(mid_ch, mid_ch)
        self.fuse = _conv(skip_ch + mid_ch, mid_ch)

    @property
    def upsampling_folded(self) -> bool:
        return isinstance(self.conv_a, UpsampleConv3x3)

    def fold_upsampling(self) -> None:
        if not self.upsampling_folded:
            # unfolded, conv_a is still the 3x3 convolution _conv built
            self.conv_a = UpsampleConv3x3.from_conv(cast(nn.Conv2d, self.conv_a))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if not self.upsampling_folded:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = F.relu_(self.conv_a(x))
        x = F.relu_(self.conv_b(x))
        return F.relu_(self.fuse(torch.cat([skip, x], dim=1)))


class LungUNet(nn.Module):
    """1-channel in, 1-channel sigmoid probability out, NCHW."""

    def __init__(self) -> None:
        super().__init__()
        # Encoder: (in, out) of the two convs per level; level 5 has one conv only.
        self.enc1 = nn.ModuleList([_conv(1, 32), _conv(32, 32)])
        self.enc2 = nn.ModuleList([_conv(32, 64), _conv(64, 64)])
        self.enc3 = nn.ModuleList([_conv(64, 64), _conv(64, 64)])
        self.enc4 = nn.ModuleList([_conv(64, 128), _conv(128, 128)])
        self.bottom = _conv(128, 256)
        self.up4 = _UpStage(256, 256, skip_ch=128)
        self.up3 = _UpStage(256, 256, skip_ch=64)
        self.up2 = _UpStage(256, 128, skip_ch=64)
        self.up1 = _UpStage(128, 64, skip_ch=32)
        self.head = _conv(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 16 or x.shape[-2] % 16:
            raise ValueError(f"input height and width must be multiples of 16, got {tuple(x.shape[-2:])}")
        skips = []
        for level in (self.enc1, self.enc2, self.enc3, self.enc4):
            for conv in level:
                # In place: the convolution's fresh output is the only reference, and at 1024x1024
                # a separate ReLU output would be another 128-256 MB to allocate and fault in.
                x = F.relu_(conv(x))
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = F.relu_(self.bottom(x))
        for stage, skip in zip(self._decoder(), reversed(skips)):
            x = stage(x, skip)
        return torch.sigmoid(self.head(x))

    def _decoder(self) -> tuple[_UpStage, ...]:
        """The up stages, deepest first (the order of forward and of the Keras layers)."""
        return (self.up4, self.up3, self.up2, self.up1)

    def fold_upsampling(self) -> None:
        """Compute each decoder stage's upsampling + first convolution at the low resolution.

        Same function (float32 rounding aside), 4/9 of those convolutions'
        arithmetic and no upsampled tensors (see :mod:`ai_models.nets.subpixel`):
        about a fifth of the network's work at 1024x1024.  One-way, like
        BatchNorm folding: load the Keras weights first.
        """
        for stage in self._decoder():
            stage.fold_upsampling()

    def keras_layers(self) -> list[nn.Module]:
        """The 22 convolutions in Keras topological order (Appendix A.1)."""
        if any(stage.upsampling_folded for stage in self._decoder()):
            raise RuntimeError("the decoder's upsampling convolutions were folded; load Keras weights into a fresh LungUNet")
        layers: list[nn.Module] = []
        for level in (self.enc1, self.enc2, self.enc3, self.enc4):
            layers.extend(level)
        layers.append(self.bottom)
        for stage in self._decoder():
            layers.extend([stage.conv_a, stage.conv_b, stage.fuse])
        layers.append(self.head)
        return layers
