"""Read legacy Keras HDF5 weight files and copy them onto PyTorch modules.

Both layouts Keras 2 writes are accepted: ``save_weights`` files (layer
groups at the root) and ``model.save`` files (the same under
``model_weights/``).  Layers are matched either by position among the
weight-bearing layers (what ``load_weights(path)`` does) or by name (what
``load_weights(path, by_name=True)`` does), with full coverage asserted
either way: a network is never left partly random.

Layout rules (channels-last Keras to channels-first torch) follow
MI2RLNET_MODELS.md section 2.4.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ai_models.errors import WeightError


@dataclass
class KerasLayer:
    """One weight-bearing layer of the file, weights in Keras variable order."""

    name: str
    weight_names: list[str]
    arrays: list[np.ndarray]

    def describe(self) -> str:
        shapes = ", ".join(f"{n.split('/')[-1]}{tuple(a.shape)}" for n, a in zip(self.weight_names, self.arrays))
        return f"{self.name} [{shapes}]"


def _decode(values: Sequence[bytes | str]) -> list[str]:
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def read_keras_h5(path: str | Path) -> list[KerasLayer]:
    """Return the weight-bearing layers of a legacy Keras HDF5 file in saved order.

    Raises :class:`WeightError` for files that are not HDF5, are truncated,
    or lack the ``layer_names`` / ``weight_names`` attributes of the legacy
    format (for example Keras 3 ``.weights.h5`` files).
    """
    import h5py

    path = Path(path)
    try:
        handle = h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise WeightError(f"{path}: not a readable HDF5 file ({exc}); truncated or wrong format?") from exc
    layers: list[KerasLayer] = []
    with handle as f:
        root = f.get("model_weights", f)
        if "layer_names" not in root.attrs:
            raise WeightError(
                f"{path}: no 'layer_names' attribute; this is not a legacy Keras HDF5 weight file "
                "(Keras 3 '.weights.h5' files are not supported)"
            )
        for name in _decode(root.attrs["layer_names"]):
            group = root[name]
            weight_names = _decode(group.attrs.get("weight_names", []))
            if not weight_names:
                continue
            try:
                arrays = [np.asarray(group[w]) for w in weight_names]
            except (KeyError, OSError) as exc:
                raise WeightError(f"{path}: layer {name!r} is incomplete ({exc}); truncated file?") from exc
            layers.append(KerasLayer(name, weight_names, arrays))
    if not layers:
        raise WeightError(f"{path}: the file holds no weights")
    return layers


# --- copying one layer -------------------------------------------------------------------------


def _copy(target: torch.Tensor, array: np.ndarray, where: str) -> None:
    if tuple(target.shape) != tuple(array.shape):
        raise WeightError(f"{where}: expected shape {tuple(target.shape)}, found {tuple(array.shape)}")
    with torch.no_grad():
        target.copy_(torch.from_numpy(np.ascontiguousarray(array)).to(target.dtype))


def _take(arrays: Iterator[np.ndarray], what: str, where: str) -> np.ndarray:
    try:
        return next(arrays)
    except StopIteration:
        raise WeightError(f"{where}: the file has no {what} for this layer") from None


def _kernel_to_torch(module: nn.Module, kernel: np.ndarray) -> np.ndarray:
    nd = kernel.ndim
    if isinstance(module, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
        # Keras (*k, out, in) -> torch (in, out, *k), no spatial flip
        return kernel.transpose(nd - 1, nd - 2, *range(nd - 2))
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.groups > 1 and module.groups == module.in_channels:
        # DepthwiseConv2D (*k, C, mult) -> torch (C*mult, 1, *k)
        c, mult = kernel.shape[-2], kernel.shape[-1]
        k = kernel.reshape(*kernel.shape[:-2], c * mult)
        return k.transpose(nd - 2, *range(nd - 2))[:, None]
    # Conv (*k, in, out) -> (out, in, *k)
    return kernel.transpose(nd - 1, nd - 2, *range(nd - 2))


def load_layer(module: nn.Module, arrays: Iterator[np.ndarray], where: str) -> None:
    """Consume this module's Keras variables from ``arrays`` and copy them in.

    Supports convolutions (incl. depthwise and transposed), Linear, BatchNorm
    (gamma, beta, moving mean, moving variance) and affine GroupNorm /
    InstanceNorm (gamma, beta).  The BatchNorm epsilon is the module's own;
    ports must set it to the Keras value.
    """
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        _copy(module.weight, _kernel_to_torch(module, _take(arrays, "kernel", where)), f"{where} kernel")
        if module.bias is not None:
            _copy(module.bias, _take(arrays, "bias", where), f"{where} bias")
    elif isinstance(module, nn.Linear):
        _copy(module.weight, _take(arrays, "kernel", where).T, f"{where} kernel")
        if module.bias is not None:
            _copy(module.bias, _take(arrays, "bias", where), f"{where} bias")
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.affine:
            _copy(module.weight, _take(arrays, "gamma", where), f"{where} gamma")
            _copy(module.bias, _take(arrays, "beta", where), f"{where} beta")
        if module.running_mean is None or module.running_var is None:
            raise WeightError(f"{where}: BatchNorm without running statistics (track_running_stats=False) "
                              "cannot take Keras moving_mean / moving_variance")
        _copy(module.running_mean, _take(arrays, "moving_mean", where), f"{where} moving_mean")
        _copy(module.running_var, _take(arrays, "moving_variance", where), f"{where} moving_variance")
    elif isinstance(module, (nn.GroupNorm, nn.modules.instancenorm._InstanceNorm, nn.LayerNorm)):
        _copy(module.weight, _take(arrays, "gamma", where), f"{where} gamma")
        _copy(module.bias, _take(arrays, "beta", where), f"{where} beta")
    else:
        raise WeightError(f"{where}: no Keras layout rule for torch module {type(module).__name__}")


def _load_group(modules: nn.Module | Sequence[nn.Module], layer: KerasLayer, where: str) -> None:
    group = [modules] if isinstance(modules, nn.Module) else list(modules)
    arrays = iter(layer.arrays)
    for index, module in enumerate(group):
        load_layer(module, arrays, f"{where} ({layer.describe()}) part {index}" if len(group) > 1 else f"{where} ({layer.describe()})")
    leftover = sum(1 for _ in arrays)
    if leftover:
        raise WeightError(f"{where}: file layer {layer.describe()} has {leftover} unused variable(s)")


def load_topological(
    modules: Sequence[nn.Module | Sequence[nn.Module]], layers: list[KerasLayer], source: str | Path
) -> None:
    """Assign file layers to ``modules`` pairwise by position, as Keras ``load_weights`` does.

    ``modules`` lists the port's weight-bearing layers in Keras topological
    order; an entry may be a sequence of modules that together hold one
    Keras layer's variables.
    """
    if len(modules) != len(layers):
        raise WeightError(
            f"{source}: the file has {len(layers)} weight-bearing layers, the network expects {len(modules)}"
            f" (first file layer: {layers[0].name}, last: {layers[-1].name})"
        )
    for index, (module, layer) in enumerate(zip(modules, layers)):
        _load_group(module, layer, f"{source}: layer #{index} {layer.name!r}")


def load_by_name(
    named: Mapping[str, nn.Module | Sequence[nn.Module]], layers: list[KerasLayer], source: str | Path
) -> None:
    """Assign file layers by name; every expected name must be present (no silent skipping)."""
    by_name = {layer.name: layer for layer in layers}
    missing = [name for name in named if name not in by_name]
    if missing:
        raise WeightError(f"{source}: {len(missing)} layer(s) missing from the file, e.g. {missing[:5]}")
    for name, modules in named.items():
        _load_group(modules, by_name[name], f"{source}: layer {name!r}")


def load_keras_weights_topological(
    modules: Sequence[nn.Module | Sequence[nn.Module]], path: str | Path
) -> None:
    """Read ``path`` and assign it by position."""
    load_topological(modules, read_keras_h5(path), path)


def load_keras_weights_by_name(named: Mapping[str, nn.Module | Sequence[nn.Module]], path: str | Path) -> None:
    """Read ``path`` and assign it by layer name."""
    load_by_name(named, read_keras_h5(path), path)
