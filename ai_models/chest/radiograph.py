"""DICOM radiographs (CR / DX) to display-ready float images.

The chest models were trained on pictures, not on stored DICOM values, so
every one of them needs the same first steps before its own normalisation
(MI2RLNET_MODELS.md section 5):

1. the **modality LUT** (Rescale Slope/Intercept or a Modality LUT
   Sequence) turns stored values into modality values;
2. a **VOI transform** picks the displayed range: the dataset's own VOI LUT
   Sequence or Window Center/Width, an explicit :class:`Window`, or none
   (plain min-max);
3. **MONOCHROME1** images (where low values are white) are inverted, so that
   in the result bone, metal and burned-in markers are always bright.

:func:`radiograph_to_unit` does all three and returns float32 in [0, 1];
:func:`scale_to` and :func:`to_uint8` then give the range a particular
model wants.  The Presentation LUT Shape is not applied: for CR/DX it only
restates what the photometric interpretation already says.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi

from ai_models.errors import InputError

VOIFunction = Literal["LINEAR", "LINEAR_EXACT", "SIGMOID"]


@dataclass(frozen=True)
class Window:
    """A DICOM window (PS3.3 C.11.2.1.2) in modality units; ``function`` as in (0028,1056)."""

    center: float
    width: float
    function: VOIFunction = "LINEAR"

    def __post_init__(self) -> None:
        if self.function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
            raise ValueError(f"unsupported VOI LUT function {self.function!r}")
        # PS3.3 C.11.2.1.2: LINEAR needs width >= 1, the other functions width > 0.
        if (self.function == "LINEAR" and self.width < 1) or self.width <= 0:
            raise ValueError(f"window width {self.width} is not valid for {self.function}")


VOIChoice = Literal["dataset", "none"] | Window


def _uid(ds: Dataset) -> str:
    return str(getattr(ds, "SOPInstanceUID", "?"))


def stored_pixels(ds: Dataset, frame: int = 0) -> np.ndarray:
    """The stored values of one grayscale frame, as a 2-D array of the stored dtype.

    Colour images and out-of-range frame numbers are an :class:`InputError`.
    """
    if int(getattr(ds, "SamplesPerPixel", 1)) != 1:
        raise InputError(f"{_uid(ds)}: a grayscale image is needed, this one has {ds.SamplesPerPixel} samples per pixel")
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputError(f"{_uid(ds)}: photometric interpretation {photometric} is not grayscale")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises several unrelated types for bad pixel data
        raise InputError(f"{_uid(ds)}: cannot decode pixel data: {exc}") from exc
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        if not 0 <= frame < frames:
            raise InputError(f"{_uid(ds)}: frame {frame} requested, the image has {frames}")
        pixels = pixels[frame]
    elif frame != 0:
        raise InputError(f"{_uid(ds)}: frame {frame} requested from a single-frame image")
    if pixels.ndim != 2:
        raise InputError(f"{_uid(ds)}: expected a 2-D frame, got shape {pixels.shape}")
    return pixels


def modality_image(ds: Dataset, frame: int = 0) -> np.ndarray:
    """Stored values through the modality LUT (rescale or LUT sequence), as float64."""
    return np.asarray(apply_modality_lut(stored_pixels(ds, frame), ds), dtype=np.float64)


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """Map modality values to [0, 1] with the DICOM window formulas (PS3.3 C.11.2.1.2-3).

    LINEAR uses the standard's "center - 0.5, width - 1" form; LINEAR_EXACT
    maps [c - w/2, c + w/2] linearly; SIGMOID is 1 / (1 + exp(-4 (x - c) / w)).
    """
    x = np.asarray(values, dtype=np.float64)
    if window.function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - window.center) / window.width))
    if window.function == "LINEAR":
        center, width = window.center - 0.5, window.width - 1.0
    else:
        center, width = window.center, window.width
    low, high = center - width / 2, center + width / 2
    if width == 0:  # LINEAR with width 1 is a hard threshold
        return (x > high).astype(np.float64)
    out = (x - center) / width + 0.5
    out[x <= low] = 0.0
    out[x > high] = 1.0
    return out


def dataset_window(ds: Dataset, index: int = 0) -> Window | None:
    """The ``index``-th Window Center/Width pair of the dataset, or None when it has none."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None

    def pick(keyword: str) -> float:
        element = ds[keyword]
        value = element.value
        if element.VM > 1:
            if index >= element.VM:
                raise InputError(f"{_uid(ds)}: {keyword} has {element.VM} values, index {index} requested")
            value = value[index]
        return float(value)

    function = str(getattr(ds, "VOILUTFunction", "") or "LINEAR").upper()
    try:
        return Window(pick("WindowCenter"), pick("WindowWidth"), function)  # type: ignore[arg-type]
    except ValueError as exc:
        raise InputError(f"{_uid(ds)}: unusable window in the header: {exc}") from exc


def _apply_voi_lut_sequence(values: np.ndarray, ds: Dataset, index: int) -> np.ndarray:
    """Apply the dataset's VOI LUT Sequence item and scale its output range to [0, 1]."""
    items = ds.VOILUTSequence
    if index >= len(items):
        raise InputError(f"{_uid(ds)}: VOI LUT Sequence has {len(items)} item(s), index {index} requested")
    bits = int(items[index].LUTDescriptor[2])
    # The LUT indexes integer modality values; rescaled CR/DX values are integral.
    mapped = apply_voi(np.rint(values).astype(np.int64), ds, index=index)
    return mapped.astype(np.float64) / float(2**bits - 1)


def min_max_to_unit(values: np.ndarray) -> np.ndarray:
    """Linear map of the image's own minimum and maximum onto 0 and 1 (a constant image gives 0)."""
    x = np.asarray(values, dtype=np.float64)
    low, high = float(x.min()), float(x.max())
    if high <= low:
        return np.zeros_like(x)
    return (x - low) / (high - low)


def radiograph_to_unit(
    ds: Dataset, *, voi: VOIChoice = "dataset", voi_index: int = 0, frame: int = 0
) -> np.ndarray:
    """A radiograph as float32 in [0, 1], with dense structures bright.

    ``voi`` chooses the displayed range:

    * ``"dataset"``: the VOI LUT Sequence if present, else the Window
      Center/Width (``voi_index`` picks among alternatives), else min-max;
    * ``"none"``: min-max of the modality values, i.e. no clipping at all
      (what SimpleITK-based readers see);
    * a :class:`Window`: that window, in modality units.

    MONOCHROME1 images are inverted after the VOI step (``1 - v``), so a
    MONOCHROME1 and a MONOCHROME2 file with the same stored values give
    mirror images of each other.
    """
    values = modality_image(ds, frame)
    if isinstance(voi, Window):
        unit = apply_window(values, voi)
    elif voi == "none":
        unit = min_max_to_unit(values)
    elif voi == "dataset":
        if ds.get("VOILUTSequence"):
            unit = _apply_voi_lut_sequence(values, ds, voi_index)
        else:
            window = dataset_window(ds, voi_index)
            unit = apply_window(values, window) if window is not None else min_max_to_unit(values)
    else:
        raise ValueError(f"voi must be 'dataset', 'none' or a Window, not {voi!r}")
    if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
        unit = 1.0 - unit
    return np.clip(unit, 0.0, 1.0).astype(np.float32)


def scale_to(unit: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [0, 1] linearly onto [low, high] (float32)."""
    return (low + np.asarray(unit, dtype=np.float32) * (high - low)).astype(np.float32)


def to_uint8(unit: np.ndarray) -> np.ndarray:
    """[0, 1] to an 8-bit picture (rounded), as PNG-trained models expect."""
    return np.rint(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)
