"""The CPU speed-ups of the ports change no result: BatchNorm folding, TF padding, sub-pixel upsampling, allocator tuning.

The end-to-end equivalence with the tf-keras references (through
``load_model``, which folds) lives in the port tests; these tests pin each
mechanism on its own, with BatchNorm statistics far from the identity so
that a wrong fold could not hide.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ai_models.nets.efficientdet import EfficientDetD0Lite, _same_pads, _tf_same_pad
from ai_models.nets.folding import FoldedBatchNorm, fold_batchnorms, fold_into_conv, has_folded_batchnorms
from ai_models.nets.resnet50 import MI2RLResNet50Classifier
from ai_models.nets.subpixel import UpsampleConv3x3
from ai_models.nets.unet2d_lung import LungUNet


def _randomise_batchnorms(net: nn.Module, generator: torch.Generator) -> None:
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) * 2 - 1)
            module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) - 0.5)


@pytest.mark.parametrize("groups,bias", [(1, False), (1, True), (8, False)])
def test_fold_into_conv_is_conv_then_batchnorm(groups, bias):
    generator = torch.Generator().manual_seed(groups + bias)
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=groups, bias=bias)
    bn = nn.BatchNorm2d(8, eps=1e-3)
    _randomise_batchnorms(bn, generator)
    x = torch.randn(2, 8, 9, 7, generator=generator)
    with torch.no_grad():
        plain = conv(x)
        expected = bn.eval()(plain)
        assert (expected - plain).abs().max() > 0.1  # the BatchNorm is far from the identity
        fold_into_conv(conv, bn)
        assert conv.bias is not None
        torch.testing.assert_close(conv(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "build,shape,expected_folds",
    [
        (EfficientDetD0Lite, (1, 3, 128, 128), 74),
        (lambda: MI2RLResNet50Classifier(2, 2), (2, 2, 64, 64), 53),
    ],
    ids=["efficientdet", "resnet50"],
)
def test_folded_network_computes_the_same(build, shape, expected_folds):
    generator = torch.Generator().manual_seed(7)
    net = build().eval()
    _randomise_batchnorms(net, generator)
    x = torch.randn(*shape, generator=generator)
    with torch.inference_mode():
        before = net(x)
        assert fold_batchnorms(net) == expected_folds
        after = net(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert has_folded_batchnorms(net)
    for a, b in zip(before if isinstance(before, tuple) else (before,), after if isinstance(after, tuple) else (after,)):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    with pytest.raises(RuntimeError, match="folded"):
        net.keras_layers()


def test_folding_refuses_training_mode_and_is_idempotent():
    net = EfficientDetD0Lite()
    with pytest.raises(RuntimeError, match="eval mode"):
        fold_batchnorms(net)
    net.eval()
    assert fold_batchnorms(net) == 74
    assert fold_batchnorms(net) == 0
    assert isinstance(net.backbone.stem_bn, FoldedBatchNorm)


@pytest.mark.parametrize("in_ch,out_ch,rows,cols,bias,nhwc", [
    (3, 5, 7, 9, True, False),    # odd sizes: every border case of both phases
    (8, 4, 16, 16, True, True),
    (16, 8, 1, 1, False, False),  # a single pixel: all taps but the centre block fall on padding
    (4, 6, 2, 5, True, True),
])
def test_upsample_conv_equals_upsample_then_conv(in_ch, out_ch, rows, cols, bias, nhwc):
    generator = torch.Generator().manual_seed(rows * cols)
    conv = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=bias).double()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator, dtype=torch.float64))
    x = torch.randn(2, in_ch, rows, cols, generator=generator, dtype=torch.float64)
    if nhwc:
        x = x.to(memory_format=torch.channels_last)
    expected = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    got = UpsampleConv3x3.from_conv(conv)(x)
    assert got.shape == expected.shape == (2, out_ch, 2 * rows, 2 * cols)
    assert torch.allclose(got, expected, atol=1e-12, rtol=0)


def test_upsample_conv_refuses_other_convolutions():
    for conv in (nn.Conv2d(4, 4, 3, padding=0), nn.Conv2d(4, 4, 3, padding=1, stride=2), nn.Conv2d(4, 4, 5, padding=2),
                 nn.Conv2d(4, 4, 3, padding=1, groups=2)):
        with pytest.raises(ValueError, match="3x3 convolution with stride 1, padding 1"):
            UpsampleConv3x3.from_conv(conv)


def test_lung_unet_with_folded_upsampling_computes_the_same():
    torch.manual_seed(3)
    net = LungUNet().eval()
    for conv in net.keras_layers():  # larger weights than the default init, so a wrong fold shows
        with torch.no_grad():
            conv.weight.mul_(3.0)
    x = torch.randn(1, 1, 64, 48)
    with torch.inference_mode():
        expected = net(x)
        net.fold_upsampling()
        got = net(x)
    assert all(stage.upsampling_folded for stage in (net.up4, net.up3, net.up2, net.up1))
    assert expected.std() > 0.05
    assert (got - expected).abs().max() < 1e-5
    with pytest.raises(RuntimeError, match="upsampling convolutions were folded"):
        net.keras_layers()


@pytest.mark.parametrize("shape", [(1, 3, 512, 512), (2, 5, 7, 9), (1, 4, 8, 8)])
@pytest.mark.parametrize("kernel,stride", [(3, 2), (5, 2), (3, 1), (2, 1), (4, 2)])
@pytest.mark.parametrize("nhwc", [False, True])
def test_tf_same_pad_equals_f_pad(shape, kernel, stride, nhwc):
    x = torch.randn(*shape)
    if nhwc:
        x = x.contiguous(memory_format=torch.channels_last)
    (top, bottom), (left, right) = _same_pads(shape[2], kernel, stride), _same_pads(shape[3], kernel, stride)
    padded = _tf_same_pad(x, kernel, stride)
    assert torch.equal(padded, F.pad(x, (left, right, top, bottom)))
    assert padded.is_contiguous(memory_format=torch.channels_last) or not nhwc


ALLOCATOR_PROBE = textwrap.dedent(
    """
    import ctypes, sys
    from ai_models.allocator import retain_freed_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    applied = retain_freed_memory()
    block = libc.malloc(16 << 20)
    mapped = libc.mallinfo2().hblkhd
    libc.free(block)
    kept = libc.mallinfo2().fordblks
    print(applied, mapped >= 16 << 20, kept >= 16 << 20)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
@pytest.mark.parametrize("setting,expected", [("1", "True False True"), ("0", "False True False")])
def test_allocator_keeps_large_blocks_in_the_heap(setting, expected):
    """Tuned: a 16 MiB block comes from the heap and stays there when freed; untuned: mmap'd and unmapped."""
    env = {**os.environ, "AI_MODELS_MALLOC_TUNING": setting}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    out = subprocess.run([sys.executable, "-c", ALLOCATOR_PROBE], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == expected.split()
