"""Index-space resampling exactly as the MI2RLNet 3-D pipelines did it.

Two conventions occur in the originals, and the weights were trained with
them, so each is reproduced with the library the original used:

* :func:`resample_index` is the kidney cascade's SimpleITK resampler: the
  input is put on a unit grid at origin 0, and output voxel ``i`` samples
  input index ``i * n_in / n_out`` (corner-aligned, *not* centre-aligned;
  the last output voxels of an upsampling fall past the last input voxel
  and get the nearest edge value or ``default`` beyond half a voxel).
* :func:`zoom_to_shape` is ``scipy.ndimage.zoom`` (Liver, Black-blood):
  output voxel ``i`` samples input ``i * (n_in - 1) / (n_out - 1)``, so
  the first and last voxels of both grids coincide.  On integer arrays
  scipy rounds the interpolated values, which for a label map is the
  linear interpolation thresholded at one half.  With mode 'constant' a
  floating-point overshoot of the last sample can put a whole edge plane
  at ``cval`` 0 (e.g. 48 -> 24 rows); the originals had that too, and it
  is kept for parity.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def resample_index(array: np.ndarray, shape: Sequence[int], *, linear: bool, default: float = 0.0) -> np.ndarray:
    """Resample a 3-D array to ``shape`` on index-based unit spacing (SimpleITK ResampleImageFilter).

    Linear interpolation runs in float32 whatever the input type; nearest
    keeps the input type (use it for masks and probability maps that are
    thresholded afterwards).
    """
    import SimpleITK as sitk

    if tuple(array.shape) == tuple(shape):
        return array.copy()
    data = array.astype(np.float32) if linear else np.ascontiguousarray(array)
    image = sitk.GetImageFromArray(data)
    in_size = image.GetSize()
    out_size = [int(s) for s in reversed(tuple(shape))]
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(image)
    resampler.SetOutputSpacing([i / o for i, o in zip(in_size, out_size)])
    resampler.SetSize(out_size)
    resampler.SetInterpolator(sitk.sitkLinear if linear else sitk.sitkNearestNeighbor)
    resampler.SetDefaultPixelValue(float(default))
    return sitk.GetArrayFromImage(resampler.Execute(image))


def zoom_to_shape(array: np.ndarray, shape: Sequence[int], *, order: int) -> np.ndarray:
    """``scipy.ndimage.zoom`` with the factors that give exactly ``shape`` (mode 'constant', grid_mode False)."""
    factors = [o / i for o, i in zip(shape, array.shape)]
    out = ndimage.zoom(array, factors, order=order, mode="constant")
    if out.shape != tuple(shape):  # pragma: no cover - guards against float rounding in scipy's size rule
        raise RuntimeError(f"zoom produced {out.shape}, wanted {tuple(shape)}")
    return out


def zoom_by(array: np.ndarray, factors: float | Sequence[float], *, order: int) -> np.ndarray:
    """``scipy.ndimage.zoom`` by factors (output size ``round(n * f)``), mode 'constant'."""
    return ndimage.zoom(array, factors, order=order, mode="constant")
