"""The PyTorch L/R detector equals a tf_keras build of the same architecture.

The reference is written here from MI2RLNET_MODELS.md section 4.1 with the
layer names the spec lists, filled with random weights (BatchNorm moving
statistics included), saved as legacy HDF5 and loaded through
``load_model("lr-mark", ...)``, the path users take.
"""
from __future__ import annotations

import os

import pytest

pytest.importorskip("tf_keras")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
import torch  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from ai_models import Detection, WeightError, load_model  # noqa: E402
from ai_models.chest.anchors import Letterbox, generate_anchors, nms  # noqa: E402
from ai_models.chest.lr_mark import display_image, preprocess  # noqa: E402
from ai_models.nets.folding import has_folded_batchnorms  # noqa: E402

pytestmark = pytest.mark.tf
L = tf_keras.layers

B0 = [  # kernel, stride, expand, in, out, repeats (section 4.1 table)
    (3, 1, 1, 32, 16, 1), (3, 2, 6, 16, 24, 2), (5, 2, 6, 24, 40, 2), (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3), (5, 2, 6, 112, 192, 4), (3, 1, 6, 192, 320, 1),
]


def _bn(name: str) -> L.Layer:
    return L.BatchNormalization(epsilon=1e-3, name=name)


def _mbconv(x, name, k, s, e, cin, cout):
    inputs, hidden = x, cin * e
    if e != 1:
        x = L.Conv2D(hidden, 1, padding="same", use_bias=False, name=f"{name}_expand_conv")(x)
        x = L.Activation(tf.nn.swish)(_bn(f"{name}_expand_bn")(x))
    x = L.DepthwiseConv2D(k, strides=s, padding="same", use_bias=False, name=f"{name}_dwconv")(x)
    x = L.Activation(tf.nn.swish)(_bn(f"{name}_bn")(x))
    se = L.Reshape((1, 1, hidden))(L.GlobalAveragePooling2D()(x))
    se = L.Conv2D(max(1, int(cin * 0.25)), 1, activation=tf.nn.swish, name=f"{name}_se_reduce")(se)
    se = L.Conv2D(hidden, 1, activation="sigmoid", name=f"{name}_se_expand")(se)
    x = L.Multiply()([x, se])
    x = _bn(f"{name}_project_bn")(L.Conv2D(cout, 1, padding="same", use_bias=False, name=f"{name}_project_conv")(x))
    return L.Add()([x, inputs]) if s == 1 and cin == cout else x


def _conv_block(x, prefix, k, s):
    x = L.Conv2D(64, k, strides=s, padding="same", use_bias=False, name=f"{prefix}_conv")(x)
    return L.ReLU()(_bn(f"{prefix}_bn")(x))


def _dw_block(x, prefix):
    x = L.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"{prefix}_dconv")(x)
    return L.ReLU()(_bn(f"{prefix}_bn")(x))


def _head(name: str, values: int, last_name: str, sigmoid: bool) -> tf_keras.Model:
    inp = L.Input((None, None, 64))
    x = inp
    for i in range(3):
        x = L.Conv2D(64, 3, padding="same", activation="relu", name=f"{name}_conv{i}")(x)
    x = L.Reshape((-1, values))(L.Conv2D(9 * values, 3, padding="same", name=last_name)(x))
    if sigmoid:
        x = L.Activation("sigmoid")(x)
    return tf_keras.Model(inp, x, name=name)


def keras_efficientdet() -> tf_keras.Model:
    """Reference prediction model (raw outputs), names as in the spec, any input size multiple of 128."""
    inp = L.Input((None, None, 3))
    x = L.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inp)
    x = L.Activation(tf.nn.swish)(_bn("stem_bn")(x))
    taps = {}
    for stage, (k, s, e, cin, cout, repeats) in enumerate(B0, start=1):
        for r in range(repeats):
            name = f"block{stage}{'abcd'[r]}"
            x = _mbconv(x, name, k, s if r == 0 else 1, e, cin if r == 0 else cout, cout)
            taps[name] = x
    c3, c4, c5 = taps["block3b"], taps["block5c"], taps["block7a"]
    feats = None
    for i in range(2):
        p = f"BiFPN_{i}"
        if i == 0:
            p3, p4, p5 = (_conv_block(c, f"{p}_{lvl}", 1, 1) for c, lvl in ((c3, "P3"), (c4, "P4"), (c5, "P5")))
            p6 = _conv_block(c5, f"{p}_P6", 3, 2)
            p7 = _conv_block(p6, f"{p}_P7", 3, 2)
        else:
            p3, p4, p5, p6, p7 = (_conv_block(f, f"{p}_P{j + 3}", 1, 1) for j, f in enumerate(feats))
        def up(t):
            return L.UpSampling2D(2)(t)  # nearest

        def down(t):
            return L.MaxPooling2D(2, 2)(t)  # 'valid'

        p6_td = _dw_block(L.Add()([up(p7), p6]), f"{p}_U_P6")
        p5_td = _dw_block(L.Add()([up(p6_td), p5]), f"{p}_U_P5")
        p4_td = _dw_block(L.Add()([up(p5_td), p4]), f"{p}_U_P4")
        p3_out = _dw_block(L.Add()([up(p4_td), p3]), f"{p}_U_P3")
        p4_out = _dw_block(L.Add()([down(p3_out), p4_td, p4]), f"{p}_D_P4")
        p5_out = _dw_block(L.Add()([down(p4_out), p5_td, p5]), f"{p}_D_P5")
        p6_out = _dw_block(L.Add()([down(p5_out), p6_td, p6]), f"{p}_D_P6")
        p7_out = _dw_block(L.Add()([down(p6_out), p7]), f"{p}_D_P7")
        feats = [p3_out, p4_out, p5_out, p6_out, p7_out]
    box_head = _head("box_head", 4, "pyramid_regression", sigmoid=False)
    class_head = _head("class_head", 2, "pyramid_classification", sigmoid=True)
    regression = L.Concatenate(axis=1, name="regression")([box_head(f) for f in feats])
    classification = L.Concatenate(axis=1, name="classification")([class_head(f) for f in feats])
    return tf_keras.Model(inp, [regression, classification], name="efficientdet")


def _randomise(model: tf_keras.Model, rng: np.random.Generator) -> None:
    """Random weights with O(1) activations: scaled kernels, random biases and BN statistics."""
    for layer in model.layers:
        if isinstance(layer, tf_keras.Model):
            _randomise(layer, rng)
            continue
        new = []
        for w in layer.weights:
            shape, name = tuple(w.shape), w.name
            if "moving_variance" in name or "gamma" in name:
                new.append(rng.uniform(0.5, 1.5, shape))
            elif "kernel" in name:
                fan_in = np.prod(shape[:-1]) if "depthwise" not in name else np.prod(shape[:2])
                new.append(rng.normal(0, np.sqrt(1.0 / fan_in), shape))
            else:  # bias, beta, moving_mean
                new.append(rng.normal(0, 0.2, shape))
        if new:
            layer.set_weights([a.astype(np.float32) for a in new])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tf_keras.backend.clear_session()
    model = keras_efficientdet()
    _randomise(model, np.random.default_rng(7))
    path = tmp_path_factory.mktemp("lrmark") / "lrmark.h5"
    model.save_weights(str(path))
    return model, path


def _torch_raw(detector, image_nchw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        reg, cls = detector.net(torch.from_numpy(image_nchw))
    return reg[0].numpy(), cls[0].numpy()


def test_weight_file_has_the_spec_layer_counts(reference):
    model, path = reference
    weight_layers = [layer for layer in model.layers if layer.weights]
    assert len(weight_layers) == 182
    assert model.count_params() == 4_175_314
    with h5py.File(path) as f:
        assert "box_head" in [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]


def test_raw_outputs_match_keras_reference(reference):
    torch.set_num_threads(1)
    model, path = reference
    detector = load_model("lr-mark", weights=path, device="cpu")
    assert has_folded_batchnorms(detector.net)  # the folded network users run is what is compared
    rng = np.random.default_rng(0)
    for size in (128, 256):
        image = rng.normal(0, 1, (1, size, size, 3)).astype(np.float32)
        k_reg, k_cls = (np.asarray(t)[0] for t in model(image, training=False))
        t_reg, t_cls = _torch_raw(detector, np.ascontiguousarray(image.transpose(0, 3, 1, 2)))
        assert t_reg.shape == k_reg.shape == (len(generate_anchors(size)), 4)
        # the comparison is not between near-zero or saturated tensors
        assert np.abs(k_reg).max() > 0.1 and k_cls.std() > 0.05
        assert np.abs(t_reg - k_reg).max() < 1e-4
        assert np.abs(t_cls - k_cls).max() < 1e-4


def test_output_count_at_512_equals_anchor_count(reference):
    torch.set_num_threads(1)
    detector = load_model("lr-mark", weights=reference[1], device="cpu")
    reg, cls = _torch_raw(detector, np.zeros((1, 3, 512, 512), np.float32))
    assert reg.shape == (49_104, 4) and cls.shape == (49_104, 2)


def test_nms_matches_tensorflow():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 400, (300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(10, 120, (300, 2))], axis=1)
    scores = rng.uniform(0, 1, 300)
    # TF takes (y1, x1, y2, x2); IoU is symmetric in the axes, so the order does not matter.
    expected = tf.image.non_max_suppression(boxes[:, [1, 0, 3, 2]], scores, 300, 0.5).numpy()
    np.testing.assert_array_equal(nms(boxes, scores, 0.5, 300), expected)


def _tf_reference_detections(model, image_nchw, letterbox: Letterbox, threshold: float):
    """Section 4.1 post-processing written with TF ops, as the original graph does it."""
    reg, cls = (np.asarray(t)[0].astype(np.float64) for t in model(image_nchw.transpose(0, 2, 3, 1), training=False))
    anchors = generate_anchors(512)
    w = anchors[:, 2] - anchors[:, 0]
    h = anchors[:, 3] - anchors[:, 1]
    boxes = anchors + 0.2 * reg * np.stack([w, h, w, h], axis=1)
    boxes = np.clip(boxes, 0, 511)
    out = []
    for label in (0, 1):
        idx = np.flatnonzero(cls[:, label] > threshold)
        keep = tf.image.non_max_suppression(boxes[idx], cls[idx, label], 300, 0.5).numpy()
        out += [(cls[i, label], label, boxes[i]) for i in idx[keep]]
    out.sort(key=lambda item: -item[0])
    out = out[:300]
    mapped = [letterbox.to_original(b) for _, _, b in out]
    return [s for s, _, _ in out], [lab for _, lab, _ in out], np.array(mapped).reshape(-1, 4), cls


def _radiograph(rows: int, cols: int) -> Dataset:
    rng = np.random.default_rng(1)
    pixels = rng.integers(200, 3800, (rows, cols), dtype=np.uint16)
    pixels[20:60, 30:40] = 4095  # a bright "L"-like stroke
    pixels[50:60, 30:70] = 4095
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR Image Storage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    return ds


def test_predict_end_to_end_matches_reference_pipeline(reference):
    torch.set_num_threads(1)
    model, path = reference
    ds = _radiograph(300, 700)
    image, letterbox = preprocess(display_image(ds))
    # Pick a threshold in the middle of a wide gap of the reference scores, so that tiny
    # fp32 differences cannot move a box across it; ~50 candidates per run.
    _, _, _, cls = _tf_reference_detections(model, image, letterbox, threshold=2.0)
    top = np.sort(cls.ravel())[::-1][:200]
    gap = int(np.argmax(top[20:-1] - top[21:])) + 20
    threshold = float((top[gap] + top[gap + 1]) / 2)
    scores, labels, boxes, _ = _tf_reference_detections(model, image, letterbox, threshold)

    detector = load_model("lr-mark", weights=path, device="cpu", score_threshold=threshold)
    result = detector.predict(ds)
    assert isinstance(result, Detection)
    assert result.source_sop_instance_uids == [ds.SOPInstanceUID]
    assert len(result.boxes) == len(scores) > 0
    got = np.array([[b.x0, b.y0, b.x1, b.y1] for b in result.boxes])
    np.testing.assert_allclose(got, boxes, atol=1e-2)
    np.testing.assert_allclose([b.score for b in result.boxes], scores, atol=1e-5)
    assert [b.label for b in result.boxes] == [("left", "right")[lab] for lab in labels]
    assert all(b.sop_instance_uid == ds.SOPInstanceUID for b in result.boxes)
    assert got[:, 0::2].min() >= 0 and got[:, 0::2].max() <= 699
    assert got[:, 1::2].min() >= 0 and got[:, 1::2].max() <= 299


def test_missing_layer_raises_weight_error(reference, tmp_path):
    broken = tmp_path / "missing.h5"
    with h5py.File(reference[1]) as src, h5py.File(broken, "w") as dst:
        names = [n.decode() if isinstance(n, bytes) else n for n in src.attrs["layer_names"]]
        kept = [n for n in names if n != "BiFPN_1_D_P7_bn"]
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        dst.attrs["layer_names"] = np.array([n.encode() for n in kept])
        for n in kept:
            src.copy(src[n], dst, name=n)
    with pytest.raises(WeightError, match="BiFPN_1_D_P7_bn"):
        load_model("lr-mark", weights=broken, device="cpu")


def test_misshapen_head_raises_weight_error(reference, tmp_path):
    broken = tmp_path / "three_classes.h5"
    broken.write_bytes(reference[1].read_bytes())
    with h5py.File(broken, "r+") as f:
        group = f["class_head"]
        names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
        kernel = names[-2]  # the last conv's kernel: 18 = 9 anchors x 2 classes
        assert group[kernel].shape == (3, 3, 64, 18)
        del group[kernel]
        group.create_dataset(kernel, data=np.zeros((3, 3, 64, 27), np.float32))
    with pytest.raises(WeightError, match=r"class_head.*\(18, 64, 3, 3\).*\(27, 64, 3, 3\)"):
        load_model("lr-mark", weights=broken, device="cpu")


def test_truncated_file_raises_weight_error(reference, tmp_path):
    data = reference[1].read_bytes()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightError, match="truncated"):
        load_model("lr-mark", weights=truncated, device="cpu")
