"""The CPU speed-ups of the ports change no result: BatchNorm folding, TF padding, allocator tuning.

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
