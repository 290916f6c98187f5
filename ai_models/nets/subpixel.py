"""Nearest-neighbour x2 upsampling followed by a 3x3 'same' convolution, computed at the low resolution.

After a nearest x2 upsampling every 2x2 block of the input to the 3x3
convolution repeats one pixel, so each output pixel sees only a 2x2
neighbourhood of the *low*-resolution image.  Which 2x2 neighbourhood, and
which sums of the nine kernel taps weigh it, depends only on the output
pixel's phase (row and column parity):

* even output row: low rows (i-1, i) with kernel rows (0, 1+2);
* odd output row: low rows (i, i+1) with kernel rows (0+1, 2);

and the same for columns.  So the pair equals one 2x2 convolution of the
low-resolution input with four phase kernels (4 x out channels), whose
outputs are interleaved into the high-resolution map.  That does 4/9 of the
multiply-adds and never materialises the upsampled tensor: in the lung
U-Net's decoder (1024x1024 at the top) these convolutions are a third of
the network's arithmetic and the upsampled inputs its largest allocations.
Zero padding agrees at the borders: the 'same' padding row of the
upsampled image is a padding row of the low-resolution one.

:meth:`UpsampleConv3x3.from_conv` builds the module from a loaded
``nn.Conv2d``; the kernel sums run in float64, so the result differs from
upsample-then-convolve by float32 rounding only.
"""
from __future__ import annotations

import torch
from torch import nn

# Rows (or columns) of a 3x3 kernel summed into the 2 taps of each phase.
_PHASE_TAPS = torch.tensor(
    [
        [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]],  # even output row/column: taps on low i-1 and i
        [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]],  # odd: taps on low i and i+1
    ],
    dtype=torch.float64,
)


class UpsampleConv3x3(nn.Module):
    """``conv(interpolate(x, scale_factor=2, mode='nearest'))`` for a 3x3, stride-1, padding-1 conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        # Output channel g * out_channels + o is phase g = 2 * row parity + column parity.
        self.phases = nn.Conv2d(in_channels, 4 * out_channels, kernel_size=2, padding=1, bias=True)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> UpsampleConv3x3:
        """The equivalent module for ``conv``, with its weights (and device and dtype)."""
        if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1:
            raise ValueError(f"needs a 3x3 convolution with stride 1, padding 1, no dilation or groups; got {conv}")
        module = cls(conv.in_channels, conv.out_channels).to(device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            weight = conv.weight.double()
            taps = _PHASE_TAPS.to(weight.device)
            kernels = [
                torch.einsum("ak,oikl,bl->oiab", taps[row], weight, taps[col]) for row in (0, 1) for col in (0, 1)
            ]
            module.phases.weight.copy_(torch.cat(kernels).to(conv.weight.dtype))
            bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels, device=weight.device)
            assert module.phases.bias is not None  # __init__ builds phases with bias=True
            module.phases.bias.copy_(bias.repeat(4).to(conv.weight.dtype))
        module.train(conv.training)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        c = self.out_channels
        # (n, h+1, w+1, 4c) whatever the memory format; phase (r, s) of output (i, j) sits at (i + r, j + s).
        y = self.phases(x).permute(0, 2, 3, 1).unflatten(3, (2, 2, c))
        out = torch.empty((n, h, 2, w, 2, c), dtype=y.dtype, device=y.device)
        for r in (0, 1):
            for s in (0, 1):
                out[:, :, r, :, s, :] = y[:, r:r + h, s:s + w, r, s, :]
        # Logical NCHW on channels-last memory, which is what the convolutions after it want.
        return out.view(n, 2 * h, 2 * w, c).permute(0, 3, 1, 2)
