"""The MI2RLNet L/R marker detector (EfficientDet-D0-like), in PyTorch.

Follows MI2RLNET_MODELS.md section 4.1: an EfficientNet-B0 backbone, the
early, simplified BiFPN of the xuannianz code base repeated twice (width 64,
unweighted sums, depthwise-only fusion blocks), and two heads shared across
P3..P7 without BatchNorm.  Every BatchNorm uses the Keras default epsilon
1e-3, and every stride-2 'same' convolution pads like TensorFlow (the extra
pixel goes at the end), so that weights trained in Keras give the same
numbers here.

The network returns raw head outputs only: box regressions (N, A, 4) and
class probabilities (N, A, 2) with A anchors in level-major, then
(y, x, anchor) row-major order.  Anchors, decoding and NMS live in
:mod:`ai_models.chest.anchors`, outside the graph.

:meth:`EfficientDetD0Lite.keras_layers` maps the Keras layer names
(``stem_conv``, ``block2a_expand_conv``, ``BiFPN_0_U_P6_dconv``,
``box_head``...) onto the torch modules that hold their weights, for
by-name loading.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ai_models.nets.folding import refuse_if_folded

BN_EPS = 1e-3  # Keras BatchNormalization default, used everywhere in this model
BIFPN_WIDTH = 64
BIFPN_REPEATS = 2
NUM_ANCHORS = 9
NUM_CLASSES = 2


def _tf_same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Pad ``x`` the way TensorFlow's 'same' does: total pad split with the extra pixel at the end.

    Same result as ``F.pad``, but only the border strips are zeroed instead of
    the whole new tensor before the copy: for the 96-channel 256x256
    activation of block 2a that halves the cost of padding.
    """
    (top, bottom), (left, right) = (_same_pads(x.shape[-2], kernel, stride), _same_pads(x.shape[-1], kernel, stride))
    if not (top or bottom or left or right):
        return x
    height, width = x.shape[-2], x.shape[-1]
    out = torch.empty(
        (*x.shape[:-2], height + top + bottom, width + left + right),
        dtype=x.dtype,
        device=x.device,
        memory_format=torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format,
    )
    out[..., :top, :] = 0
    out[..., top + height :, :] = 0
    out[..., :, :left] = 0
    out[..., :, left + width :] = 0
    out[..., top : top + height, left : left + width] = x
    return out


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of one axis under TensorFlow's 'same' rule."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'same' padding for any stride (asymmetric when needed).

    With stride 1 and an odd kernel TensorFlow's padding is symmetric, so the
    convolution pads by itself; only stride 2 needs the explicit, asymmetric
    ``F.pad`` (a copy of the whole activation, which is why it is avoided
    where it can be).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False):
        explicit_pad = not (stride == 1 and kernel % 2 == 1)
        padding = 0 if explicit_pad else kernel // 2
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=padding, groups=groups, bias=bias)
        self.explicit_pad = explicit_pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.explicit_pad:
            x = _tf_same_pad(x, self.kernel_size[0], self.stride[0])
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


# --- EfficientNet-B0 -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _StageSpec:
    kernel: int
    stride: int
    expand: int
    in_ch: int
    out_ch: int
    repeats: int


# Stages 1..7 of EfficientNet-B0 (section 4.1 table); blocks are named block{stage}{a,b,c,d}.
B0_STAGES: tuple[_StageSpec, ...] = (
    _StageSpec(3, 1, 1, 32, 16, 1),
    _StageSpec(3, 2, 6, 16, 24, 2),
    _StageSpec(5, 2, 6, 24, 40, 2),
    _StageSpec(3, 2, 6, 40, 80, 3),
    _StageSpec(5, 1, 6, 80, 112, 3),
    _StageSpec(5, 2, 6, 112, 192, 4),
    _StageSpec(3, 1, 6, 192, 320, 1),
)
# Feature taps C3, C4, C5: outputs of blocks 3b, 5c and 7a.
FEATURE_BLOCKS = ("block3b", "block5c", "block7a")


class MBConv(nn.Module):
    """Mobile inverted bottleneck with squeeze-and-excitation (inference form: no drop-connect)."""

    def __init__(self, name: str, kernel: int, stride: int, expand: int, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.name = name
        hidden = in_ch * expand
        squeezed = max(1, int(in_ch * 0.25))
        self.expand_conv = SameConv2d(in_ch, hidden, 1) if expand != 1 else None
        self.expand_bn = _bn(hidden) if expand != 1 else None
        self.dwconv = SameConv2d(hidden, hidden, kernel, stride=stride, groups=hidden)
        self.bn = _bn(hidden)
        self.se_reduce = nn.Conv2d(hidden, squeezed, 1, bias=True)
        self.se_expand = nn.Conv2d(squeezed, hidden, 1, bias=True)
        self.project_conv = SameConv2d(hidden, out_ch, 1)
        self.project_bn = _bn(out_ch)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In-place activations, gating and residual add: each tensor changed in place was just
        # made by a convolution or BatchNorm (``x`` itself is never written).
        h = x
        if self.expand_conv is not None:
            assert self.expand_bn is not None  # built together with expand_conv
            h = F.silu(self.expand_bn(self.expand_conv(h)), inplace=True)
        h = F.silu(self.bn(self.dwconv(h)), inplace=True)
        gate = F.silu(self.se_reduce(h.mean(dim=(2, 3), keepdim=True)))
        h = h.mul_(torch.sigmoid(self.se_expand(gate)))
        h = self.project_bn(self.project_conv(h))
        return h.add_(x) if self.residual else h

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        """Convolution / BatchNorm attribute pairs for :func:`~ai_models.nets.folding.fold_batchnorms`."""
        return [("expand_conv", "expand_bn"), ("dwconv", "bn"), ("project_conv", "project_bn")]

    def keras_layers(self) -> dict[str, nn.Module]:
        parts = ["expand_conv", "expand_bn"] if self.expand_conv is not None else []
        parts += ["dwconv", "bn", "se_reduce", "se_expand", "project_conv", "project_bn"]
        return {f"{self.name}_{part}": getattr(self, part) for part in parts}


class EfficientNetB0(nn.Module):
    """Backbone without top; returns C3, C4, C5."""

    def __init__(self) -> None:
        super().__init__()
        self.stem_conv = SameConv2d(3, 32, 3, stride=2)
        self.stem_bn = _bn(32)
        blocks = []
        for stage_index, spec in enumerate(B0_STAGES, start=1):
            for repeat in range(spec.repeats):
                blocks.append(
                    MBConv(
                        name=f"block{stage_index}{'abcdefgh'[repeat]}",
                        kernel=spec.kernel,
                        stride=spec.stride if repeat == 0 else 1,
                        expand=spec.expand,
                        in_ch=spec.in_ch if repeat == 0 else spec.out_ch,
                        out_ch=spec.out_ch,
                    )
                )
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.silu(self.stem_bn(self.stem_conv(x)))
        features = []
        for block in self.blocks:
            x = block(x)
            if block.name in FEATURE_BLOCKS:
                features.append(x)
        return features

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        return [("stem_conv", "stem_bn")]

    def keras_layers(self) -> dict[str, nn.Module]:
        layers: dict[str, nn.Module] = {"stem_conv": self.stem_conv, "stem_bn": self.stem_bn}
        for block in cast("Iterable[MBConv]", self.blocks):  # ModuleList yields plain Modules
            layers.update(block.keras_layers())
        return layers


# --- BiFPN ---------------------------------------------------------------------------------------


class _ConvBlock(nn.Module):
    """Conv (no bias) -> BN -> ReLU; named ``<prefix>_conv`` / ``<prefix>_bn`` in Keras."""

    def __init__(self, in_ch: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = SameConv2d(in_ch, BIFPN_WIDTH, kernel, stride=stride)
        self.bn = _bn(BIFPN_WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        return [("conv", "bn")]


class _DepthwiseBlock(nn.Module):
    """Depthwise 3x3 only (no pointwise conv, no bias) -> BN -> ReLU; ``<prefix>_dconv`` / ``_bn``."""

    def __init__(self) -> None:
        super().__init__()
        self.dconv = SameConv2d(BIFPN_WIDTH, BIFPN_WIDTH, 3, groups=BIFPN_WIDTH)
        self.bn = _bn(BIFPN_WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.dconv(x)))

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        return [("dconv", "bn")]


def _upsample(x: torch.Tensor) -> torch.Tensor:
    """Keras UpSampling2D(2): nearest neighbour x2."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def _downsample(x: torch.Tensor) -> torch.Tensor:
    """Keras MaxPooling2D(2, 2) with 'valid' padding."""
    return F.max_pool2d(x, 2, 2)


LEVELS = ("P3", "P4", "P5", "P6", "P7")
FUSION_NAMES = ("U_P6", "U_P5", "U_P4", "U_P3", "D_P4", "D_P5", "D_P6", "D_P7")


class BiFPNLayer(nn.Module):
    """One top-down + bottom-up pass with plain sums (the ``weighted_bifpn`` flag was ignored)."""

    def __init__(self, index: int, first_in_channels: tuple[int, int, int] | None) -> None:
        super().__init__()
        self.index = index
        if first_in_channels is not None:
            c3, c4, c5 = first_in_channels
            inputs = {
                "P3": _ConvBlock(c3, 1, 1),
                "P4": _ConvBlock(c4, 1, 1),
                "P5": _ConvBlock(c5, 1, 1),
                "P6": _ConvBlock(c5, 3, 2),
                "P7": _ConvBlock(BIFPN_WIDTH, 3, 2),
            }
        else:
            inputs = {level: _ConvBlock(BIFPN_WIDTH, 1, 1) for level in LEVELS}
        self.inputs = nn.ModuleDict(inputs)
        self.fusions = nn.ModuleDict({name: _DepthwiseBlock() for name in FUSION_NAMES})

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.index == 0:
            c3, c4, c5 = features
            p3, p4, p5 = self.inputs["P3"](c3), self.inputs["P4"](c4), self.inputs["P5"](c5)
            p6 = self.inputs["P6"](c5)
            p7 = self.inputs["P7"](p6)
        else:
            p3, p4, p5, p6, p7 = (self.inputs[level](f) for level, f in zip(LEVELS, features))
        up, down, fuse = _upsample, _downsample, self.fusions
        p6_td = fuse["U_P6"](up(p7) + p6)
        p5_td = fuse["U_P5"](up(p6_td) + p5)
        p4_td = fuse["U_P4"](up(p5_td) + p4)
        p3_out = fuse["U_P3"](up(p4_td) + p3)
        p4_out = fuse["D_P4"](down(p3_out) + p4_td + p4)
        p5_out = fuse["D_P5"](down(p4_out) + p5_td + p5)
        p6_out = fuse["D_P6"](down(p5_out) + p6_td + p6)
        p7_out = fuse["D_P7"](down(p6_out) + p7)
        return [p3_out, p4_out, p5_out, p6_out, p7_out]

    def keras_layers(self) -> dict[str, nn.Module]:
        prefix = f"BiFPN_{self.index}"
        # ModuleDict yields plain Modules; __init__ fills these two with the blocks named here
        inputs = cast("Mapping[str, _ConvBlock]", self.inputs)
        fusions = cast("Mapping[str, _DepthwiseBlock]", self.fusions)
        layers: dict[str, nn.Module] = {}
        for level in LEVELS:
            layers[f"{prefix}_{level}_conv"] = inputs[level].conv
            layers[f"{prefix}_{level}_bn"] = inputs[level].bn
        for name in FUSION_NAMES:
            layers[f"{prefix}_{name}_dconv"] = fusions[name].dconv
            layers[f"{prefix}_{name}_bn"] = fusions[name].bn
        return layers


# --- heads ---------------------------------------------------------------------------------------


class _Head(nn.Module):
    """3 x (Conv 3x3, 64, bias, ReLU) then Conv 3x3 to ``NUM_ANCHORS * values`` channels; no BN."""

    def __init__(self, values_per_anchor: int) -> None:
        super().__init__()
        self.values = values_per_anchor
        self.convs = nn.ModuleList(SameConv2d(BIFPN_WIDTH, BIFPN_WIDTH, 3, bias=True) for _ in range(3))
        self.output = SameConv2d(BIFPN_WIDTH, NUM_ANCHORS * values_per_anchor, 3, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.relu(conv(x))
        x = self.output(x)
        # (N, A*V, H, W) -> (N, H, W, A*V) -> (N, H*W*A, V): the Keras reshape order (y, x, anchor).
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, self.values)

    def keras_modules(self) -> list[nn.Module]:
        """The inner convs in the order their variables are concatenated in the file."""
        return [*self.convs, self.output]


class EfficientDetD0Lite(nn.Module):
    """Image (N, 3, H, W), H and W multiples of 128 -> (regression (N, A, 4), probabilities (N, A, 2))."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = EfficientNetB0()
        # Channels of C3, C4, C5 (blocks 3b, 5c, 7a).
        channels = (B0_STAGES[2].out_ch, B0_STAGES[4].out_ch, B0_STAGES[6].out_ch)
        self.bifpn = nn.ModuleList(BiFPNLayer(i, channels if i == 0 else None) for i in range(BIFPN_REPEATS))
        self.box_head = _Head(4)
        self.class_head = _Head(NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[-1] % 128 or x.shape[-2] % 128:
            raise ValueError(f"input height and width must be multiples of 128, got {tuple(x.shape[-2:])}")
        features = self.backbone(x)
        for layer in self.bifpn:
            features = layer(features)
        regression = torch.cat([self.box_head(f) for f in features], dim=1)
        logits = torch.cat([self.class_head(f) for f in features], dim=1)
        return regression, torch.sigmoid(logits)

    def keras_layers(self) -> dict[str, nn.Module | list[nn.Module]]:
        """Keras layer name -> module(s) holding its weights; 182 entries (section 4.1)."""
        refuse_if_folded(self)
        layers: dict[str, nn.Module | list[nn.Module]] = dict(self.backbone.keras_layers())
        for layer in cast("Iterable[BiFPNLayer]", self.bifpn):  # ModuleList yields plain Modules
            layers.update(layer.keras_layers())
        layers["box_head"] = self.box_head.keras_modules()
        layers["class_head"] = self.class_head.keras_modules()
        return layers
