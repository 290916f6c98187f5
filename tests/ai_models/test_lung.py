"""Lung segmentation port: equivalence with a tf_keras reference, pre/post-processing, weight errors."""
from __future__ import annotations

import os
import warnings

import pytest

pytest.importorskip("tf_keras")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tf_keras  # noqa: E402
import torch  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from ai_models import InputError, Segmentation, WeightError, get_info, load_model  # noqa: E402
from ai_models.chest.lung import clean_mask, preprocess, resize_mask  # noqa: E402
from ai_models.chest.radiograph import radiograph_to_unit, to_uint8  # noqa: E402

pytestmark = pytest.mark.tf
L = tf_keras.layers
SIZE = 128  # the net is fully convolutional; the original 1024 is too slow for a CPU test

# Appendix A.1: (in, out) of the 22 convolutions in Keras topological order.
APPENDIX_A1 = [
    (1, 32), (32, 32), (32, 64), (64, 64), (64, 64), (64, 64), (64, 128), (128, 128), (128, 256),
    (256, 256), (256, 256), (384, 256), (256, 256), (256, 256), (320, 256), (256, 128), (128, 128),
    (192, 128), (128, 64), (64, 64), (96, 64), (64, 1),
]


def keras_lung_unet(base: int = 32) -> tf_keras.Model:
    """Section 4.4 written in tf_keras, auto-generated layer names as in the original."""

    def conv(x, filters, activation="relu"):
        return L.Conv2D(filters, 3, padding="same", activation=activation)(x)

    inp = L.Input((None, None, 1))
    skips, x = [], inp
    for filters in (base, 2 * base, 2 * base, 4 * base):
        x = conv(conv(x, filters), filters)
        skips.append(x)
        x = L.MaxPooling2D(2)(x)
    x = conv(x, 8 * base)
    for filters, skip in zip((8 * base, 8 * base, 4 * base, 2 * base), reversed(skips)):
        x = conv(conv(L.UpSampling2D(2)(x), filters), filters)
        x = conv(L.Concatenate()([skip, x]), filters)
    return tf_keras.Model(inp, conv(x, 1, activation="sigmoid"))


def _randomise(model: tf_keras.Model, rng: np.random.Generator) -> None:
    for layer in model.layers:
        if layer.weights:
            kernel, bias = layer.get_weights()
            fan_in = np.prod(kernel.shape[:-1])
            layer.set_weights([
                rng.normal(0, np.sqrt(2.0 / fan_in), kernel.shape).astype(np.float32),
                rng.normal(0, 0.1, bias.shape).astype(np.float32),
            ])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tf_keras.backend.clear_session()
    model = keras_lung_unet()
    _randomise(model, np.random.default_rng(5))
    folder = tmp_path_factory.mktemp("lung")
    weights_only, full_model = folder / "lung_weights.h5", folder / "Lung_segmentation.hdf5"
    model.save_weights(str(weights_only))
    with warnings.catch_warnings():  # "HDF5 is legacy": exactly the format the original shipped
        warnings.simplefilter("ignore", UserWarning)
        model.save(str(full_model), save_format="h5")
    return model, weights_only, full_model


def _radiograph(rows: int, cols: int, spacing: str | None = "PixelSpacing") -> Dataset:
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:rows, 0:cols]
    pixels = (1500 + 1000 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + rng.normal(0, 100, (rows, cols))).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if spacing:
        setattr(ds, spacing, [0.2, 0.15])
    ds.PixelData = pixels.tobytes()
    return ds


def test_reference_matches_appendix_a1(reference):
    model = reference[0]
    convs = [layer for layer in model.layers if layer.weights]
    assert [(c.kernel.shape[2], c.kernel.shape[3]) for c in convs] == APPENDIX_A1
    assert model.count_params() == 5_468_897


@pytest.mark.parametrize("which", ["weights_only", "full_model"])
def test_net_matches_keras_reference(reference, which):
    torch.set_num_threads(1)
    model, weights_only, full_model = reference
    segmenter = load_model("lung", weights=weights_only if which == "weights_only" else full_model, device="cpu")
    assert segmenter.net.up1.upsampling_folded  # the network users run, decoder folded at load
    image = np.random.default_rng(0).normal(0, 1, (1, SIZE, SIZE, 1)).astype(np.float32)
    expected = np.asarray(model(image, training=False))[0, :, :, 0]
    got = segmenter.probabilities(np.ascontiguousarray(image.transpose(0, 3, 1, 2)))
    assert expected.std() > 0.05  # neither constant nor all saturated
    assert np.abs(got - expected).max() < 1e-4


def test_predict_end_to_end(reference):
    torch.set_num_threads(1)
    model, weights_only, _ = reference
    ds = _radiograph(200, 160)
    segmenter = load_model("lung", weights=weights_only, device="cpu", clean=False)
    segmenter.input_size = SIZE
    result = segmenter.predict(ds)
    assert isinstance(result, Segmentation)
    assert result.mask.shape == (1, 200, 160) and result.mask.dtype == np.uint8
    assert result.label_names == {1: "lung"}
    assert result.source_sop_instance_uids == [ds.SOPInstanceUID]
    assert result.spacing_mm == (1.0, 0.2, 0.15)
    # The same steps done with the Keras reference: 8-bit picture, z-score, net, > 0.5, back to size.
    gray = to_uint8(radiograph_to_unit(ds))
    probabilities = np.asarray(model(preprocess(gray, SIZE).transpose(0, 2, 3, 1)))[0, :, :, 0]
    expected = resize_mask(np.where(probabilities > 0.5, 255, 0).astype(np.uint8), 200, 160)
    assert 0 < expected.sum() < expected.size
    np.testing.assert_array_equal(result.mask[0], expected.astype(np.uint8))


def test_spacing_falls_back_to_imager_pixel_spacing_and_sizes_must_agree(reference):
    segmenter = load_model("lung", weights=reference[1], device="cpu")
    segmenter.input_size = 64
    result = segmenter.predict(_radiograph(64, 80, spacing="ImagerPixelSpacing"))
    assert result.spacing_mm == (1.0, 0.2, 0.15) and result.details["spacing_source"] == "ImagerPixelSpacing"
    assert segmenter.predict(_radiograph(64, 80, spacing=None)).spacing_mm is None
    with pytest.raises(InputError, match="different sizes"):
        segmenter.predict([_radiograph(64, 80), _radiograph(80, 64)])


def test_preprocess_at_1024_z_scores_the_resized_image():
    gray = np.zeros((2500, 2048), np.uint8)
    gray[:1250] = 200
    image = preprocess(gray)
    assert image.shape == (1, 1, 1024, 1024) and image.dtype == np.float32
    assert abs(float(image.mean())) < 1e-5 and abs(float(image.std()) - 1.0) < 1e-4
    # half bright, half dark: after z-scoring the two halves are +1 and -1
    assert np.allclose(image[0, 0, 100], 1.0) and np.allclose(image[0, 0, 900], -1.0)
    assert np.all(np.isfinite(preprocess(np.full((50, 60), 7, np.uint8))))  # constant image: no division by 0


def test_mask_resize_keeps_a_rectangle_in_place():
    mask = np.zeros((1024, 1024), np.uint8)
    mask[100:200, 300:600] = 255  # rows 100..199, cols 300..599
    exact = resize_mask(mask, 2048, 2048)
    rows, cols = np.nonzero(exact)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (200, 399, 600, 1199)
    assert exact.sum() == 200 * 600
    # Non-square original 2500 x 2048: the rectangle maps to rows 244..488, cols 600..1200 (scaled edges)
    odd = resize_mask(mask, 2500, 2048)
    rows, cols = np.nonzero(odd)
    row_scale = 2500 / 1024
    assert abs(rows.min() - 100 * row_scale) <= 1 and abs(rows.max() + 1 - 200 * row_scale) <= 1
    assert (cols.min(), cols.max()) == (600, 1199)
    # still a filled rectangle; bilinear + threshold may drop a corner pixel where both edges are fractional
    assert odd[rows.min() + 1 : rows.max(), cols.min() + 1 : cols.max()].all()
    assert abs(int(odd.sum()) - 100 * row_scale * 600) <= 2 * 600 + 4


def test_clean_mask_keeps_the_two_largest_regions():
    mask = np.zeros((256, 256), np.uint8)
    mask[20:200, 20:100] = 255  # left lung
    mask[20:180, 140:230] = 255  # right lung
    mask[220:240, 120:140] = 255  # a third, smaller blob
    mask[5:7, 5:7] = 255  # speckle removed by the opening
    cleaned = clean_mask(mask)
    assert cleaned[100, 60] == 255 and cleaned[100, 180] == 255
    assert cleaned[230, 130] == 0 and cleaned[6, 6] == 0
    n_labels, _ = cv2.connectedComponents((cleaned > 0).astype(np.uint8))
    assert n_labels - 1 == 2


def test_misshapen_weights_raise_weight_error_naming_layer_and_shapes(tmp_path):
    tf_keras.backend.clear_session()
    narrow = keras_lung_unet(base=16)
    path = tmp_path / "narrow.h5"
    narrow.save_weights(str(path))
    with pytest.raises(WeightError, match=r"layer #0 'conv2d.*expected shape \(32, 1, 3, 3\), found \(16, 1, 3, 3\)"):
        load_model("lung", weights=path, device="cpu")


def test_wrong_layer_count_and_truncated_file_raise_weight_error(reference, tmp_path):
    tf_keras.backend.clear_session()
    inp = L.Input((None, None, 1))
    small = tf_keras.Model(inp, L.Conv2D(32, 3, padding="same")(inp))
    path = tmp_path / "one_layer.h5"
    small.save_weights(str(path))
    with pytest.raises(WeightError, match="1 weight-bearing layers, the network expects 22"):
        load_model("lung", weights=path, device="cpu")
    for source in reference[1:]:
        data = source.read_bytes()
        truncated = tmp_path / f"truncated_{source.name}"
        truncated.write_bytes(data[: len(data) * 2 // 3])
        with pytest.raises(WeightError, match="truncated"):
            load_model("lung", weights=truncated, device="cpu")


def test_registration():
    info = get_info("lung")
    assert info.modalities == ("CR", "DX")
    assert (info.input_kind, info.output_kind) == ("image", "segmentation")
    assert [(w.key, w.format) for w in info.weights] == [("weights", "keras_h5")]
    assert info.options["threshold"] == 0.5
