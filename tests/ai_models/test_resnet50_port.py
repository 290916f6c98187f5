"""The PyTorch ResNet50 port against tf_keras' ResNet50, through the same loader users call.

One reference network is built per module (ResNet50 has 25M parameters):
MI2RLNet's view classifier head (1 channel, Dense(1000, softmax) ->
Dense(3, softmax)) at 64x64, with random weights and random BatchNorm
moving statistics so that inference-mode BN is exercised.
"""
from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import torch

from ai_models.errors import WeightError
from ai_models.nets.folding import has_folded_batchnorms
from ai_models.nets.resnet50 import MI2RLResNet50Classifier
from ai_models.registry import load_model

SIZE = 64


def count_with_bn_stats(net: torch.nn.Module) -> int:
    """Parameters plus BatchNorm moving statistics, which is what Keras' count_params reports."""
    stats = sum(v.numel() for k, v in net.state_dict().items() if k.endswith(("running_mean", "running_var")))
    return sum(p.numel() for p in net.parameters()) + stats


def test_parameter_counts_match_the_spec():
    # MI2RLNET_MODELS.md section 0: view 25,633,443 and enhancement 25,635,578, 53,120 of them BN statistics.
    assert count_with_bn_stats(MI2RLResNet50Classifier(1, 3)) == 25_633_443
    assert count_with_bn_stats(MI2RLResNet50Classifier(2, 2)) == 25_635_578
    assert len(MI2RLResNet50Classifier(1, 3).keras_layers()) == 108


def randomise(model, rng: np.random.Generator, calibration: np.ndarray) -> None:
    """Random weights everywhere, BatchNorm moving statistics included.

    Arbitrary moving statistics would let the signal die out over 16
    blocks (the output would hardly depend on the input), so they are first
    set to the statistics of a calibration batch (one training-mode call with
    momentum 0) and then perturbed: BN still normalises with stored numbers
    that differ from the batch's, and the head sees input-dependent features.
    """
    import tf_keras

    norms = [layer for layer in model.layers if isinstance(layer, tf_keras.layers.BatchNormalization)]
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        if layer in norms:
            gamma, beta, mean, var = weights
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.2, beta.shape), mean, var])
        elif layer.name == "predictions":
            layer.set_weights([rng.normal(0, 0.05, weights[0].shape), rng.normal(0, 0.1, weights[1].shape)])
        elif layer.name == "final_layer":
            layer.set_weights([rng.normal(0, 5.0, weights[0].shape), rng.normal(0, 0.5, weights[1].shape)])
        else:
            layer.set_weights([weights[0], rng.normal(0, 0.05, weights[1].shape)])
    for layer in norms:
        layer.momentum = 0.0
    model(calibration, training=True)
    for layer in norms:
        gamma, beta, mean, var = layer.get_weights()
        mean = mean + rng.normal(0, 0.2, mean.shape) * np.sqrt(var)
        layer.set_weights([gamma, beta, mean, var * rng.uniform(0.7, 1.4, var.shape)])


def build_reference(in_channels: int, classes: int, rng: np.random.Generator, size: int = SIZE,
                    calibration: np.ndarray | None = None):
    """MI2RLNet's classifier exactly as the spec describes it (sections 4.2/4.3), randomised.

    ``calibration`` (N, size, size, in_channels) sets the BN statistics;
    other test modules pass their own pre-processed inputs so that the
    network reacts to them.
    """
    import tf_keras

    # Keras draws the convolution kernels from its own generator: seed it from ``rng`` so that
    # every run builds the same network (the head is scaled up on purpose, so an unlucky
    # network amplifies float32 rounding more than most, and that must not vary between runs).
    tf_keras.utils.set_random_seed(int(rng.integers(2**31)))
    base = tf_keras.applications.ResNet50(weights=None, include_top=True, input_shape=(size, size, in_channels))
    out = tf_keras.layers.Dense(classes, activation="softmax", name="final_layer")(base.output)
    model = tf_keras.Model(base.input, out)
    if calibration is None:
        calibration = rng.normal(0, 1, (8, size, size, in_channels)).astype(np.float32)
    randomise(model, rng, calibration)
    return model


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The Keras view network, its weights-only and full-model files, inputs and reference outputs."""
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    tf_keras = pytest.importorskip("tf_keras")
    rng = np.random.default_rng(1234)
    model = build_reference(1, 3, rng)
    folder = tmp_path_factory.mktemp("resnet50")
    weights_only, full = folder / "view_weights.h5", folder / "view_full.h5"
    model.save_weights(weights_only)
    model.save(full)
    x = rng.normal(0, 1, (4, SIZE, SIZE, 1)).astype(np.float32)
    features = tf_keras.Model(model.input, model.get_layer("avg_pool").output).predict(x, verbose=0)
    return {
        "model": model,
        "weights_only": weights_only,
        "full": full,
        "x": x,
        "probs": model.predict(x, verbose=0),
        "features": features,
        "names": [layer.name for layer in model.layers if layer.weights],
    }


@pytest.mark.tf
def test_the_port_names_exactly_the_keras_weight_layers(reference):
    assert sorted(MI2RLResNet50Classifier(1, 3).keras_layers()) == sorted(reference["names"])
    # The reason for by-name loading: Keras' order is not creation order (spec section 2.1).
    assert reference["names"].index("conv2_block1_0_conv") > reference["names"].index("conv2_block1_2_conv")


@pytest.mark.tf
@pytest.mark.parametrize("kind", ["weights_only", "full"])
def test_port_matches_keras_through_load_model(reference, kind):
    torch.set_num_threads(1)
    model = load_model("chest-view", weights=reference[kind], device="cpu")
    assert not model.net.training
    assert has_folded_batchnorms(model.net)  # what is compared below is the folded network users run
    x = torch.from_numpy(reference["x"]).permute(0, 3, 1, 2)
    with torch.inference_mode():
        probs = model.net(x).numpy()
        features = model.net.features(x).numpy()
    ref_probs, ref_features = reference["probs"], reference["features"]
    # The comparison must not be trivial: outputs differ between inputs and are not saturated.
    assert np.ptp(ref_probs, axis=0).max() > 0.1 and ref_probs.max(axis=1).min() < 0.99
    assert np.abs(probs - ref_probs).max() < 1e-4
    assert np.abs(features - ref_features).max() < 1e-4 * np.abs(ref_features).max()


def names_of(attrs, key: str) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in attrs[key]]


def set_names(attrs, key: str, names: list[str]) -> None:
    """Write a name list attribute the way Keras does (variable-length strings)."""
    attrs[key] = np.array(names, dtype=h5py.string_dtype())


@pytest.mark.tf
def test_truncated_file_is_a_weight_error(reference, tmp_path):
    data = reference["weights_only"].read_bytes()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightError, match="truncated"):
        MI2RLResNet50Classifier(1, 3).load_keras_h5(truncated)


@pytest.mark.tf
def test_missing_layer_is_named(reference, tmp_path):
    edited = tmp_path / "missing.h5"
    edited.write_bytes(reference["weights_only"].read_bytes())
    with h5py.File(edited, "r+") as f:
        set_names(f.attrs, "layer_names", [n for n in names_of(f.attrs, "layer_names") if n != "conv4_block3_2_bn"])
    with pytest.raises(WeightError, match="conv4_block3_2_bn"):
        MI2RLResNet50Classifier(1, 3).load_keras_h5(edited)


@pytest.mark.tf
def test_extra_layers_mean_another_architecture(reference, tmp_path):
    # A ResNet101-like file holds every ResNet50 name plus more; it must not half-load.
    edited = tmp_path / "extra.h5"
    edited.write_bytes(reference["weights_only"].read_bytes())
    with h5py.File(edited, "r+") as f:
        group = f.create_group("conv4_block7_1_conv")
        set_names(group.attrs, "weight_names", ["conv4_block7_1_conv/kernel:0"])
        group.create_dataset("conv4_block7_1_conv/kernel:0", data=np.zeros((1, 1, 1024, 256), np.float32))
        set_names(f.attrs, "layer_names", names_of(f.attrs, "layer_names") + ["conv4_block7_1_conv"])
    with pytest.raises(WeightError, match="conv4_block7_1_conv"):
        MI2RLResNet50Classifier(1, 3).load_keras_h5(edited)


@pytest.mark.tf
def test_other_input_channels_and_head_give_shapes_in_the_error(reference):
    # The view file (1 channel, 3 classes) offered to the enhancement network (2 channels).
    with pytest.raises(WeightError, match=r"conv1_conv.*\(64, 2, 7, 7\).*\(64, 1, 7, 7\)"):
        MI2RLResNet50Classifier(2, 3).load_keras_h5(reference["full"])
    with pytest.raises(WeightError, match=r"final_layer.*\(2, 1000\).*\(3, 1000\)"):
        MI2RLResNet50Classifier(1, 2).load_keras_h5(reference["weights_only"])


@pytest.mark.tf
def test_unrelated_keras_model_is_refused(tmp_path):
    tf_keras = pytest.importorskip("tf_keras")
    small = tf_keras.Sequential([
        tf_keras.layers.Input((16, 16, 1)),
        tf_keras.layers.Conv2D(4, 3),
        tf_keras.layers.GlobalAveragePooling2D(),
        tf_keras.layers.Dense(2),
    ])
    path = tmp_path / "small.h5"
    small.save_weights(path)
    with pytest.raises(WeightError, match="conv"):
        load_model("chest-view", weights=path, device="cpu")
