"""The 2D U-Net of MI2RLNet's MRI/MRA brain extraction (spec section 4.8).

Bilinear-upsampling U-Net with BatchNorm, one input channel (an MR slice)
and one output channel (brain logit).  Attribute names and Sequential
indices are chosen so that ``state_dict()`` has exactly the keys of the
published checkpoints (spec Appendix B.2, 128 entries, 17,266,241
parameters); do not rename them.

Written from the spec's description, not from any upstream U-Net code.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DoubleConv(nn.Module):
    """Two (3x3 conv with bias -> BatchNorm -> ReLU) stages.

    Kept in one Sequential called ``double_conv`` so that the convs sit at
    indices 0 and 3 and the norms at 1 and 4, as in the checkpoints.
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None) -> None:
        super().__init__()
        mid = mid_channels or out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid, kernel_size=3, padding=1),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Down(nn.Module):
    """Halve the resolution (2x2 max-pool), then a DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Bilinear x2 upsampling, pad to the skip's size, concatenate (skip, up), DoubleConv.

    The padding puts ``diff // 2`` before and the rest after on each axis,
    which is what lets the network take slices of any size (odd sizes lose
    a row at each pooling; the pad restores it).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        dy = skip.shape[2] - x.shape[2]
        dx = skip.shape[3] - x.shape[3]
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class OutConv(nn.Module):
    """1x1 convolution to the single logit channel (no activation)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class BetUNet(nn.Module):
    """Slice-wise brain-extraction U-Net: (N, 1, H, W) intensities -> (N, 1, H, W) logits.

    Any H and W of at least 16 work; the output has the input's size.
    """

    def __init__(self) -> None:
        super().__init__()
        self.In = DoubleConv(1, 64)
        self.down1 = Down(64, 128)
        self.down2 = Down(128, 256)
        self.down3 = Down(256, 512)
        self.down4 = Down(512, 512)
        self.up1 = Up(1024, 256)
        self.up2 = Up(512, 128)
        self.up3 = Up(256, 64)
        self.up4 = Up(128, 64)
        self.Out = OutConv(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.In(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.Out(x)
