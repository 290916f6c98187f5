"""Chest view classifier: pre-processing known answers, header agreement, and predict() against Keras."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from test_radiograph import make_radiograph

from ai_models.chest.view import LABELS, header_agreement, header_view, preprocess
from ai_models.errors import InputError
from ai_models.registry import get_info, load_model


def test_registration_describes_the_header_fix():
    info = get_info("chest-view")
    assert info.labels == ("PA", "Lateral", "Others")
    assert info.modalities == ("CR", "DX") and info.input_kind == "image" and info.output_kind == "classification"
    assert info.header_fix == "ViewPosition"
    assert [(w.key, w.format) for w in info.weights] == [("weights", "keras_h5")]


def marker_image() -> np.ndarray:
    """512x512 stored values: background 0, a 1000 block (25 %), a 500 band (1.95 %), a 4000 marker (0.2 %)."""
    img = np.zeros((512, 512), dtype=np.uint16)
    img[:128] = 1000
    img[200:210] = 500
    img[500] = 4000
    return img


def test_percentile_scaling_and_truncation_monochrome2():
    out = preprocess(make_radiograph(marker_image()))
    assert out.shape == (512, 512) and out.dtype == np.float32
    # The 99th percentile is the 1000 block: it and the brighter marker saturate at 255;
    # the 500 band is 127.5, truncated (not rounded) to 127.
    assert out[0, 0] == 255 and out[500, 7] == 255 and out[205, 3] == 127 and out[300, 300] == 0


def test_monochrome1_is_inverted_before_scaling():
    out = preprocess(make_radiograph(marker_image(), "MONOCHROME1"))
    # Inverted unit values: background 1, block 0.75, band 0.875, marker 0; the 99th percentile is now 1.
    assert out[300, 300] == 255 and out[0, 0] == 191 and out[205, 3] == 223 and out[500, 7] == 0


def test_any_size_is_resized_to_512_and_rescale_does_not_matter():
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 4000, (96, 80)).astype(np.uint16)
    plain = preprocess(make_radiograph(pixels))
    rescaled = preprocess(make_radiograph(pixels, RescaleSlope=3, RescaleIntercept=-1000))
    assert plain.shape == (512, 512)
    np.testing.assert_array_equal(plain, rescaled)
    assert set(np.unique(plain)) <= set(range(256))


def test_constant_image_is_an_input_error():
    with pytest.raises(InputError, match="constant"):
        preprocess(make_radiograph(np.full((64, 64), 9, dtype=np.uint16)))


@pytest.mark.parametrize(
    ("label", "position", "agrees"),
    [
        ("PA", "PA", True), ("PA", "AP", True), ("Lateral", "PA", False), ("Others", "AP", False),
        ("Lateral", "LL", True), ("Lateral", "rl", True), ("PA", "LATERAL", False),
        ("PA", "RLO", None), ("Lateral", None, None),
    ],
)
def test_header_agreement(label, position, agrees):
    assert header_agreement(label, position) is agrees


def test_header_view_reads_view_position():
    assert header_view(make_radiograph(marker_image(), ViewPosition=" LL ")) == "LL"
    assert header_view(make_radiograph(marker_image(), ViewPosition="")) is None
    assert header_view(make_radiograph(marker_image())) is None


def synthetic_radiographs() -> list:
    """Three asymmetric non-square images (so a transposed or flipped input would be noticed)."""
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[0:160, 0:128]
    images = []
    for k, (photometric, view) in enumerate([("MONOCHROME2", "PA"), ("MONOCHROME1", "LL"), ("MONOCHROME2", "AP")]):
        blob = np.exp(-(((yy - 40 - 30 * k) / 25.0) ** 2 + ((xx - 30 - 20 * k) / 15.0) ** 2))
        pixels = 300 + 8 * xx + 3000 * blob + rng.normal(0, 40, xx.shape)
        images.append(make_radiograph(np.clip(pixels, 0, 4095).astype(np.uint16), photometric, ViewPosition=view))
    return images


@pytest.fixture(scope="module")
def keras_view(tmp_path_factory):
    """A randomised Keras view network at 512x512 (BN calibrated on the test images) and its HDF5 file."""
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    pytest.importorskip("tf_keras")
    from test_resnet50_port import build_reference

    images = synthetic_radiographs()
    inputs = np.stack([preprocess(ds) for ds in images])[..., None]
    model = build_reference(1, 3, np.random.default_rng(5), size=512, calibration=inputs)
    path = tmp_path_factory.mktemp("view") / "view.h5"
    model.save_weights(path)
    return model, path, images, inputs


@pytest.mark.tf
def test_predict_matches_keras_on_the_same_image(keras_view):
    torch.set_num_threads(1)
    keras_model, path, images, inputs = keras_view
    reference = keras_model.predict(inputs, verbose=0)
    # The network reacts to orientation, so a transposed or mirrored input would fail the comparison below.
    mirrored = keras_model.predict(inputs[:, :, ::-1], verbose=0)
    assert np.abs(mirrored - reference).max() > 1e-3
    model = load_model("chest-view", weights=path, device="cpu")
    for ds, expected in zip(images, reference):
        result = model.predict(ds)
        probs = np.array([result.probabilities[name] for name in LABELS])
        assert np.abs(probs - expected).max() < 1e-4
        assert result.label == LABELS[int(np.argmax(expected))]
        assert result.model == "chest-view" and result.source_sop_instance_uids == [ds.SOPInstanceUID]
        assert result.header_value == ds.ViewPosition
        assert result.agrees_with_header is header_agreement(result.label, ds.ViewPosition)


@pytest.mark.tf
def test_predict_takes_one_image(keras_view):
    _, path, images, _ = keras_view
    model = load_model("chest-view", weights=path, device="cpu")
    with pytest.raises(InputError, match="one image"):
        model.predict(images[:2])
