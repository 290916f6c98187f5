"""The PyTorch 3-D U-Nets against tf_keras references built from the spec, with random legacy-HDF5 weights."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

from ai_models.errors import WeightError
from ai_models.nets.unet3d import InstanceNorm, INUNet3D, SEResUNet3D
from ai_models.weights.keras_h5 import read_keras_h5

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Appendix A of MI2RLNET_MODELS.md, transcribed as written there.
APPENDIX_A2 = """
0:C3(1→32) 1:IN32 2:C3(32→64) 3:IN64 4:C3(64→64) 5:IN64 6:C3(64→128) 7:IN128 8:C3(128→128) 9:IN128
10:C3(128→256) 11:IN256 12:C3(256→256) 13:IN256 14:C3(256→512) 15:IN512 16:C3(512→512) 17:IN512
18:T2(512→256) 19:IN256 20:C3(512→256) 21:IN256 22:C3(256→256) 23:IN256 24:T2(256→128) 25:IN128
26:C3(256→128) 27:IN128 28:C3(128→128) 29:IN128 30:T2(128→64) 31:IN64 32:C3(128→64) 33:IN64
34:C3(64→64) 35:IN64 36:T2(64→32) 37:IN32 38:C3(64→32) 39:IN32 40:C1(32→2,b,softmax)
"""
APPENDIX_A3_BODY = """
0:C3(1→32) 1:IN32 | 2:C3(32→64) 3:IN64 4:C3(64→64) 5:IN64 6:D(64→4,relu) 7:D(4→64,sigmoid)
8:C3(32→64)[shortcut] 9:IN64 | 10:C3(64→128) 11:IN128 12:C3(128→128) 13:IN128 14:D(128→8)
15:D(8→128) 16:C3(64→128)[sc] 17:IN128 | 18:C3(128→256) 19:IN256 20:C3(256→256) 21:IN256
22:D(256→16) 23:D(16→256) 24:C3(128→256)[sc] 25:IN256 | 26:T2(256→128) 27:IN128 28:C3(256→128)
29:IN128 30:C3(128→128) 31:IN128 32:D(128→8) 33:D(8→128) 34:C3(256→128)[sc] 35:IN128 |
36:T2(128→64) 37:IN64 38:C3(128→64) 39:IN64 40:C3(64→64) 41:IN64 42:D(64→4) 43:D(4→64)
44:C3(128→64)[sc] 45:IN64 | 46:T2(64→32) 47:IN32 48:C3(64→32) 49:IN32 |
"""
APPENDIX_A4_TAIL = """
26:C3(256→512) 27:IN512 28:C3(512→512) 29:IN512 30:D(512→32) 31:D(32→512) 32:C3(256→512)[sc]
33:IN512 | 34:T2(512→256) 35:IN256 36:C3(512→256) 37:IN256 38:C3(256→256) 39:IN256
40:D(256→16) 41:D(16→256) 42:C3(512→256)[sc] 43:IN256 | 44:T2(256→128) 45:IN128
46:C3(256→128) 47:IN128 48:C3(128→128) 49:IN128 50:D(128→8) 51:D(8→128) 52:C3(256→128)[sc]
53:IN128 | 54:T2(128→64) 55:IN64 56:C3(128→64) 57:IN64 58:C3(64→64) 59:IN64 60:D(64→4)
61:D(4→64) 62:C3(128→64)[sc] 63:IN64 | 64:T2(64→32) 65:IN32 66:C3(64→32) 67:IN32
68:C1(32→3,b,softmax)
"""


def appendix_shapes(text: str) -> list[list[tuple[int, ...]]]:
    """Keras variable shapes per weight layer from the appendix notation."""
    layers = []
    for index, kind, a, b, _rest in re.findall(r"(\d+):(C3|C1|T2|D|IN)\(?(\d+)(?:→(\d+))?([^\s|]*)", text):
        assert int(index) == len(layers), f"appendix entry {index} out of order"
        a = int(a)
        if kind == "IN":
            layers.append([(a,), (a,)])
        elif kind == "C3":
            layers.append([(3, 3, 3, a, int(b))])
        elif kind == "C1":
            layers.append([(1, 1, 1, a, int(b)), (int(b),)])
        elif kind == "T2":
            layers.append([(2, 2, 2, int(b), a)])
        else:
            layers.append([(a, int(b)), (int(b),)])
    return layers


def a3(classes: int) -> str:
    return APPENDIX_A3_BODY + f"50:C1(32→{classes},b)"


CASES = {
    "in_unet3d": (lambda: INUNet3D(), APPENDIX_A2),
    "se3_1": (lambda: SEResUNet3D(depth=3, n_classes=1), a3(1)),
    "se3_3": (lambda: SEResUNet3D(depth=3, n_classes=3), a3(3)),
    "se4_3": (lambda: SEResUNet3D(depth=4, n_classes=3), APPENDIX_A3_BODY.split("26:")[0] + APPENDIX_A4_TAIL),
}
SIZES = [(16, 16, 16), (20, 24, 18), (17, 19, 21)]


def _port_shapes(net: torch.nn.Module) -> list[list[tuple[int, ...]]]:
    """What the Keras file must hold for ``net``, derived from the torch parameters and the layout rules."""
    out = []
    for m in net.keras_layers():
        if isinstance(m, torch.nn.ConvTranspose3d):
            i, o = m.weight.shape[:2]
            out.append([(*m.weight.shape[2:], o, i)])
        elif isinstance(m, torch.nn.Conv3d):
            o, i = m.weight.shape[:2]
            out.append([(*m.weight.shape[2:], i, o)] + ([(o,)] if m.bias is not None else []))
        elif isinstance(m, torch.nn.Linear):
            out.append([tuple(m.weight.shape[::-1]), tuple(m.bias.shape)])
        else:
            out.append([tuple(m.weight.shape), tuple(m.bias.shape)])
    return [[tuple(int(v) for v in s) for s in layer] for layer in out]


@pytest.mark.parametrize("kind", sorted(CASES))
def test_port_layer_order_and_parameter_count_follow_the_spec(kind):
    build, appendix = CASES[kind]
    net = build()
    assert _port_shapes(net) == appendix_shapes(appendix)
    params = {"in_unet3d": 22_523_362, "se3_1": 7_828_329, "se3_3": 7_828_395, "se4_3": 31_927_003}[kind]
    assert sum(p.numel() for p in net.parameters()) == params


def test_instance_norm_is_the_tfa_formula_and_returns_beta_on_one_voxel():
    torch.manual_seed(0)
    norm = InstanceNorm(4)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(2, 4, 3, 5, 2) * 3 + 1
    mean = x.mean(dim=(2, 3, 4), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(2, 3, 4), keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-3) * norm.weight.view(1, -1, 1, 1, 1) + norm.bias.view(1, -1, 1, 1, 1)
    torch.testing.assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)
    single = norm(torch.randn(1, 4, 1, 1, 1))
    torch.testing.assert_close(single.flatten(), norm.bias.detach())


@pytest.fixture(scope="module")
def keras_ref():
    pytest.importorskip("tf_keras")
    import keras_unet3d_ref

    return keras_unet3d_ref


@pytest.mark.tf
@pytest.mark.parametrize("kind", sorted(CASES))
def test_reference_file_holds_the_appendix_layers_in_order(keras_ref, kind):
    _, path = keras_ref.reference(kind)
    saved = [[tuple(a.shape) for a in layer.arrays] for layer in read_keras_h5(path)]
    assert saved == appendix_shapes(CASES[kind][1])


@pytest.mark.tf
@pytest.mark.parametrize("kind", sorted(CASES))
def test_port_matches_keras_on_even_and_odd_sizes(keras_ref, kind):
    torch.set_num_threads(1)
    model, path = keras_ref.reference(kind)
    both = keras_ref.with_logits(model)
    net = CASES[kind][0]()
    net.load_keras(path)
    net.eval()
    rng = np.random.default_rng(7)
    for size in SIZES:
        x = rng.standard_normal((1, *size, 1)).astype(np.float32)
        ref_logits, ref_probs = (t.numpy() for t in both(x, training=False))
        with torch.no_grad():
            logits = net.logits(torch.from_numpy(x).permute(0, 4, 1, 2, 3))
            probs = net(torch.from_numpy(x).permute(0, 4, 1, 2, 3))
        probs = probs.permute(0, 2, 3, 4, 1).numpy()
        logits = logits.permute(0, 2, 3, 4, 1).numpy()
        assert probs.shape == ref_probs.shape
        assert np.abs(probs - ref_probs).max() < 1e-4, size
        # Logits are O(5); float32 summation order differs between oneDNN and torch.
        assert np.abs(logits - ref_logits).max() < 1e-4 * max(1.0, np.abs(ref_logits).max()) * 5, size
        # Random weights must still give a non-trivial output, or the comparison proves little.
        assert ref_probs.std() > 0.05


@pytest.mark.tf
def test_black_blood_noise_layer_carries_no_weights_and_full_model_files_load(keras_ref, tmp_path):
    """The black-blood graph (GaussianNoise on the input) saved with ``model.save`` loads into the same port."""
    plain, _ = keras_ref.reference("in_unet3d")
    noisy = keras_ref.build_in_unet3d(noise=True)
    noisy.set_weights(plain.get_weights())  # same weight list, or this raises
    full = tmp_path / "full.h5"
    noisy.save(full, save_format="h5")
    net = INUNet3D()
    net.load_keras(full)
    net.eval()
    x = np.random.default_rng(1).standard_normal((1, 16, 18, 16, 1)).astype(np.float32)
    with torch.no_grad():
        out = net(torch.from_numpy(x).permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1).numpy()
    assert np.abs(out - noisy(x, training=False).numpy()).max() < 1e-4


@pytest.mark.tf
def test_a_file_of_the_wrong_network_is_refused(keras_ref):
    _, depth4 = keras_ref.reference("se4_3")
    _, one_class = keras_ref.reference("se3_1")
    with pytest.raises(WeightError, match="69 weight-bearing layers, the network expects 51"):
        SEResUNet3D(depth=3, n_classes=3).load_keras(depth4)
    with pytest.raises(WeightError, match="expected shape"):
        SEResUNet3D(depth=3, n_classes=3).load_keras(one_class)
