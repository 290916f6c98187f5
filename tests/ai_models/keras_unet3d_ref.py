"""tf_keras reference builds of the 3-D U-Nets, written from MI2RLNET_MODELS.md sections 3.1 / 3.2.

They stand in for the original Keras graphs: random weights are saved as
legacy HDF5 and loaded into the PyTorch ports, and both must compute the
same function.  InstanceNorm is ``GroupNormalization(groups=-1, epsilon=1e-3)``
(tensorflow-addons does not exist for this TF).  Inputs have dynamic
spatial size, so the up-path crop is a Lambda slice to the skip's shape.

Import only after ``pytest.importorskip("tf_keras")``.
"""
from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from tf_keras import layers as L  # noqa: E402


def _norm(x):
    return L.GroupNormalization(groups=-1, epsilon=1e-3)(x)


def _crop_to_skip(tensors):
    x, skip = tensors
    shape = tf.shape(skip)
    return x[:, : shape[1], : shape[2], : shape[3], :]


def _pad_transpose(x, f):
    x = L.ZeroPadding3D(((0, 1), (0, 1), (0, 1)))(x)
    return L.Conv3DTranspose(f, 2, strides=2, padding="same", use_bias=False)(x)


def _conv(x, f):
    return L.Conv3D(f, 3, padding="same", use_bias=False)(x)


def _head(x, n_classes):
    logits = L.Conv3D(n_classes, 1, use_bias=True, name="logits")(x)
    return L.Activation("sigmoid" if n_classes == 1 else "softmax")(logits)


def build_in_unet3d(base: int = 32, n_classes: int = 2, noise: bool = False) -> tf_keras.Model:
    """IN-UNet3D (section 3.1); ``noise`` adds the black-blood GaussianNoise(0.1), inert at inference."""
    inp = L.Input((None, None, None, 1))
    x = L.GaussianNoise(0.1)(inp) if noise else inp

    def unit(t, f):
        return L.Activation("relu")(_norm(_conv(t, f)))

    skips = [unit(x, base)]
    x = skips[0]
    for level in range(1, 5):
        x = L.MaxPooling3D(2)(x)
        x = unit(unit(x, base * 2**level), base * 2**level)
        skips.append(x)
    for level, n in zip((3, 2, 1, 0), (2, 2, 2, 1)):
        f = base * 2**level
        up = L.Activation("relu")(_norm(_pad_transpose(x, f)))
        up = L.Lambda(_crop_to_skip)([up, skips[level]])
        x = L.Concatenate()([skips[level], up])
        for _ in range(n):
            x = unit(x, f)
    return tf_keras.Model(inp, _head(x, n_classes))


def _squeeze_excite(x, f):
    s = L.GlobalAveragePooling3D()(x)
    s = L.Dense(f // 16, activation="relu")(s)
    s = L.Dense(f, activation="sigmoid")(s)
    return L.Multiply()([x, L.Reshape((1, 1, 1, f))(s)])


def _residual_se(x, f):
    a = L.LeakyReLU(0.3)(_norm(_conv(x, f)))
    b = _squeeze_excite(_norm(_conv(a, f)), f)
    shortcut = _norm(_conv(x, f))
    return L.LeakyReLU(0.3)(L.Add()([b, shortcut]))


def build_se_unet3d(depth: int = 3, n_classes: int = 3, base: int = 32) -> tf_keras.Model:
    """SE-residual IN-UNet3D (section 3.2), depth 3 or 4."""
    inp = L.Input((None, None, None, 1))
    x = L.GaussianNoise(0.1)(inp)
    skips = [L.LeakyReLU(0.3)(_norm(_conv(x, base)))]
    for level in range(1, depth + 1):
        skips.append(_residual_se(L.MaxPooling3D(2)(skips[-1]), base * 2**level))
    x = skips[-1]
    for level in range(depth - 1, -1, -1):
        f = base * 2**level
        up = L.LeakyReLU(0.3)(_norm(_pad_transpose(x, f)))
        up = L.Lambda(_crop_to_skip)([up, skips[level]])
        x = L.Concatenate()([skips[level], up])
        x = _residual_se(x, f) if level else L.LeakyReLU(0.3)(_norm(_conv(x, f)))
    return tf_keras.Model(inp, _head(x, n_classes))


def randomise(model: tf_keras.Model, seed: int) -> None:
    """Replace every weight with random values of a scale that keeps activations O(1).

    Norm gammas and betas and all biases are randomised too, so a port that
    swapped or dropped any of them would not match.
    """
    rng = np.random.default_rng(seed)
    values = []
    for w in model.weights:
        name, shape = w.name, tuple(w.shape)
        noise = rng.standard_normal(shape, dtype=np.float32)
        if "gamma" in name:
            values.append(1.0 + 0.2 * noise)
        elif "beta" in name or "bias" in name:
            values.append(0.1 * noise)
        else:
            fan_in = int(np.prod(shape[:-2]) * shape[-1]) if "transpose" in name else int(np.prod(shape[:-1]))
            values.append(noise * np.float32(np.sqrt(2.0 / max(fan_in, 1))))
    model.set_weights(values)


def save_random(model: tf_keras.Model, path: Path, seed: int, full_model: bool = False) -> Path:
    """Randomise ``model`` and write it as a legacy HDF5 file (``save_weights`` or ``model.save``)."""
    randomise(model, seed)
    if full_model:
        model.save(path, save_format="h5")
    else:
        model.save_weights(path)
    return path


def with_logits(model: tf_keras.Model) -> tf_keras.Model:
    """The same graph with two outputs: the logits before the final activation, and the probabilities."""
    return tf_keras.Model(model.input, [model.get_layer("logits").output, model.output])


BUILDERS = {
    "in_unet3d": lambda: build_in_unet3d(),
    "se3_1": lambda: build_se_unet3d(depth=3, n_classes=1),
    "se3_3": lambda: build_se_unet3d(depth=3, n_classes=3),
    "se4_3": lambda: build_se_unet3d(depth=4, n_classes=3),
}


@functools.cache
def _weights_dir() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="unet3d_ref_"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


@functools.cache
def reference(kind: str) -> tuple[tf_keras.Model, Path]:
    """A randomised reference network of ``kind`` and its legacy HDF5 weight file, built once per process.

    Test modules share these (building and saving a network costs seconds
    of TF time); the files live in a temporary folder removed at exit.
    """
    model = BUILDERS[kind]()
    path = save_random(model, _weights_dir() / f"{kind}.h5", seed=sum(map(ord, kind)))
    return model, path
