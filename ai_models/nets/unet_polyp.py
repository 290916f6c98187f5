"""The 2D U-Net of MI2RLNet's polyp segmentation (spec section 4.7).

A plain encoder-decoder U-Net with BatchNorm after every 3x3 conv and
transposed convolutions for upsampling; input (N, 3, 512, 512) scaled to
[0, 1], output (N, 1, 512, 512) **logits** (no sigmoid in the network).
Attribute names and Sequential indices reproduce the published checkpoint
keys (spec Appendix B.1, 136 entries, 23,381,121 parameters).

Written from the spec's description, not from the original code.
"""
from __future__ import annotations

import torch
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv (bias) -> BatchNorm -> ReLU; keys ``.0`` (conv) and ``.1`` (norm)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _down(in_channels: int, mid_channels: int, out_channels: int) -> nn.Sequential:
    # Index 0 is the pool, so the convs' keys start at ``.1.0`` as in the checkpoints.
    return nn.Sequential(
        nn.MaxPool2d(2), conv_bn_relu(in_channels, mid_channels), conv_bn_relu(mid_channels, out_channels)
    )


def _up(in_channels: int, mid_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        conv_bn_relu(in_channels, mid_channels),
        conv_bn_relu(mid_channels, out_channels),
        nn.ConvTranspose2d(out_channels, out_channels, kernel_size=2, stride=2),
    )


class PolypUNet(nn.Module):
    """Polyp U-Net; the decoder concatenates (upsampled, skip) with the upsampled path first.

    H and W must be multiples of 16 (four 2x poolings, no padding logic);
    the reference pipeline always feeds 512 x 512.
    """

    def __init__(self) -> None:
        super().__init__()
        self.encoder1 = nn.Sequential(conv_bn_relu(3, 64), conv_bn_relu(64, 64))
        self.encoder2 = _down(64, 128, 128)
        self.encoder3 = _down(128, 256, 256)
        self.encoder4 = _down(256, 512, 512)
        self.bridge = _down(512, 1024, 512)
        self.upconv = nn.ConvTranspose2d(512, 512, kernel_size=2, stride=2)
        self.decoder4 = _up(1024, 512, 256)
        self.decoder3 = _up(512, 256, 128)
        self.decoder2 = _up(256, 128, 64)
        self.decoder1 = nn.Sequential(conv_bn_relu(128, 64), conv_bn_relu(64, 64))
        self.fc = nn.Conv2d(64, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.encoder1(x)
        e2 = self.encoder2(e1)
        e3 = self.encoder3(e2)
        e4 = self.encoder4(e3)
        d = self.upconv(self.bridge(e4))
        d = self.decoder4(torch.cat([d, e4], dim=1))
        d = self.decoder3(torch.cat([d, e3], dim=1))
        d = self.decoder2(torch.cat([d, e2], dim=1))
        d = self.decoder1(torch.cat([d, e1], dim=1))
        return self.fc(d)
