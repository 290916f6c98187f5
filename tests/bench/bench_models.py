#!/usr/bin/env python
"""Benchmark every registered model on a typical synthetic input.

For each model in ``ai_models.available_models()`` this script writes a
synthetic DICOM input of the size the model meets in practice (CT series
for CT models, MR series for MR models, a full-size radiograph for CR/DX,
an HD frame for endoscopy), creates random-weight files in the original
formats, and times ``predict`` on it in a fresh subprocess, so that the
process's peak resident memory (``getrusage`` maxrss) belongs to that model
alone.

What is reported per model:

- latency of one ``predict`` call (per series or per image: the input is
  one unit), median and best over ``--repeat`` calls, the first (cold)
  call, and the CPU time (all threads) of the median call;
- a split into *pre* (reading DICOM and preprocessing, up to the first
  network call), *net* (inside the top-level torch modules the model
  holds, found by forward hooks: no model code is touched), *between*
  (work between network calls) and *post* (after the last network call);
- memory: resident set after loading and the rise of the peak during
  ``predict`` (CPU), or ``torch.cuda.max_memory_allocated`` (CUDA);
- for Keras-derived networks with a reference builder (``KERAS_RECIPES``),
  the tf_keras reference timed on exactly the tensors the port's network
  received in the same run, and the ratio port / reference (network time
  only, since the reference has no DICOM pipeline of ours; best of the
  repeats on both sides, the figure least disturbed by other processes),
  and the same ratio of medians;
- ``load``: the 1-minute load average around the measurement.  Above the
  number of CPUs, other processes competed for them and the times are
  inflated (torch's OpenMP threads suffer more from that than TF's pool).

Random weights: ``torch_pickle`` files are written as ``{"net": state_dict}``
from the port's own initial state the moment the model asks for them (a
wrapper around the shared checkpoint loader, installed in the child only),
then read back through the real loader.  ``keras_h5`` files are written by
the tf_keras reference builder (``save_weights``) in a separate child, so
TensorFlow never shares a process with the port being measured.  A model
whose weight files cannot be made this way is skipped, with the reason.

Run from the repository root::

    python tests/bench/bench_models.py --quick                 # small inputs, all models
    python tests/bench/bench_models.py --models bet-t1,polyp --repeat 2
    python tests/bench/bench_models.py --device cuda --json out.json

This is a script, not a test: pytest does not collect ``bench_*.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
TEST_HELPERS = REPO / "tests" / "ai_models"  # home of the tf_keras reference builders
RESULT_PREFIX = "BENCH_RESULT "
MAX_CAPTURE_BYTES = 2 << 30  # network inputs kept for the reference run
MB = 1024.0 * 1024.0

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# ------------------------------------------------------------------------------------------------
# Synthetic DICOM inputs
# ------------------------------------------------------------------------------------------------

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
DX_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
VL_ENDOSCOPIC_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.1"


@dataclass(frozen=True)
class InputPlan:
    """One synthetic input: what it is, its size, and whether the model sees it as a series or an image."""

    kind: str  # "ct", "mr", "dx", "es"
    rows: int
    cols: int
    slices: int = 1
    pixel_mm: float = 1.0
    slice_mm: float = 1.0

    @property
    def label(self) -> str:
        if self.slices > 1:
            return f"{self.kind.upper()} {self.rows}x{self.cols}x{self.slices}"
        return f"{self.kind.upper()} {self.rows}x{self.cols}"

    @property
    def key(self) -> str:
        return f"{self.kind}_{self.rows}x{self.cols}x{self.slices}"


def plan_input(modalities: tuple[str, ...], quick: bool) -> InputPlan | None:
    """The typical input of a model, chosen from what it accepts; None when there is no generator."""
    mods = set(modalities)
    if "CT" in mods:
        if quick:
            return InputPlan("ct", 256, 256, 64, pixel_mm=1.5, slice_mm=3.0)
        return InputPlan("ct", 512, 512, 300, pixel_mm=0.78, slice_mm=1.25)
    if "MR" in mods:
        if quick:
            return InputPlan("mr", 128, 128, 48, pixel_mm=2.0, slice_mm=3.0)
        return InputPlan("mr", 256, 256, 180, pixel_mm=1.0, slice_mm=1.0)
    if mods & {"DX", "CR"}:
        return InputPlan("dx", 1250, 1024, pixel_mm=0.28) if quick else InputPlan("dx", 2500, 2048, pixel_mm=0.14)
    if "ES" in mods:
        return InputPlan("es", 576, 720) if quick else InputPlan("es", 1080, 1920)
    return None


def _new_dataset(sop_class: str, modality: str, study: str, series: str):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Modality = modality
    ds.PatientID = "BENCH"
    ds.PatientName = "BENCH^SYNTHETIC"
    return ds


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _write_volume(folder: Path, plan: InputPlan, slice_values: Callable[[int, np.ndarray, np.ndarray], np.ndarray],
                  modality: str, sop_class: str, intercept: float) -> None:
    """Axial series, one file per slice, values -> int16 with the given Rescale Intercept."""
    from pydicom.uid import generate_uid

    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    # Coordinates in mm from the image centre.
    yy, xx = np.mgrid[: plan.rows, : plan.cols].astype(np.float32)
    yy = (yy - plan.rows / 2) * plan.pixel_mm
    xx = (xx - plan.cols / 2) * plan.pixel_mm
    for k in range(plan.slices):
        ds = _new_dataset(sop_class, modality, study, series)
        ds.FrameOfReferenceUID = frame
        z = (k - plan.slices / 2) * plan.slice_mm
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-plan.cols / 2 * plan.pixel_mm, -plan.rows / 2 * plan.pixel_mm, z]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [plan.pixel_mm, plan.pixel_mm]
        ds.SliceThickness = plan.slice_mm
        ds.Rows, ds.Columns = plan.rows, plan.cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, intercept
        values = slice_values(k, yy, xx)
        ds.PixelData = np.clip(np.round(values - intercept), -32768, 32767).astype("<i2").tobytes()
        ds.save_as(folder / f"{modality}{k:04d}.dcm", enforce_file_format=True)


def write_ct(folder: Path, plan: InputPlan, rng: np.random.Generator) -> None:
    """Abdomen-to-chest CT: body, liver, kidneys, aorta, spine, lungs in the upper third; HU with noise."""
    half_z = plan.slices * plan.slice_mm / 2

    def values(k: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        z = (k - plan.slices / 2) * plan.slice_mm
        hu = np.full(yy.shape, -1000.0, np.float32)
        hu[_ellipse(yy, xx, 10, 0, 120, 165)] = 40.0
        if z > 0.35 * half_z:
            hu[_ellipse(yy, xx, -5, -75, 75, 60)] = -850.0
            hu[_ellipse(yy, xx, -5, 75, 75, 60)] = -850.0
        else:
            hu[_ellipse(yy, xx, -20, -70, 70, 80)] = 60.0  # liver
            for cx in (-55.0, 55.0):
                if abs(z + 0.3 * half_z) < 0.25 * half_z:
                    hu[_ellipse(yy, xx, 45, cx, 28, 20)] = 180.0  # kidneys
        hu[_ellipse(yy, xx, 25, 0, 12, 12)] = 200.0  # aorta
        hu[_ellipse(yy, xx, 70, 0, 18, 18)] = 700.0  # vertebra
        return hu + rng.normal(0, 12, yy.shape).astype(np.float32)

    _write_volume(folder, plan, values, "CT", CT_IMAGE_STORAGE, intercept=-1024.0)


def write_mr(folder: Path, plan: InputPlan, rng: np.random.Generator) -> None:
    """T1-like head: bright scalp/skull marrow shell, brain with darker ventricles, noise."""
    half_z = plan.slices * plan.slice_mm / 2

    def values(k: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        z = (k - plan.slices / 2) * plan.slice_mm / half_z  # -1..1
        scale = float(np.sqrt(max(0.0, 1.0 - (z * 0.95) ** 2)))
        out = np.zeros(yy.shape, np.float32)
        if scale > 0:
            out[_ellipse(yy, xx, 0, 0, 95 * scale, 78 * scale)] = 900.0
            out[_ellipse(yy, xx, 0, 0, 88 * scale, 71 * scale)] = 60.0
            out[_ellipse(yy, xx, 0, 0, 84 * scale, 67 * scale)] = 520.0
            out[_ellipse(yy, xx, -5, 0, 25 * scale, 10 * scale)] = 150.0
        return out + np.abs(rng.normal(0, 15, yy.shape)).astype(np.float32)

    _write_volume(folder, plan, values, "MR", MR_IMAGE_STORAGE, intercept=0.0)


def write_dx(folder: Path, plan: InputPlan, rng: np.random.Generator) -> None:
    """PA chest radiograph, 14-bit MONOCHROME2: bright body and spine, darker lungs, a bright 'L' marker."""
    from pydicom.uid import generate_uid

    yy, xx = np.mgrid[: plan.rows, : plan.cols].astype(np.float32)
    yy, xx = yy / plan.rows, xx / plan.cols
    image = np.full(yy.shape, 1500.0, np.float32)
    image[_ellipse(yy, xx, 0.55, 0.5, 0.5, 0.45)] = 9000.0
    image[_ellipse(yy, xx, 0.45, 0.3, 0.3, 0.15)] = 4500.0
    image[_ellipse(yy, xx, 0.45, 0.7, 0.3, 0.15)] = 4500.0
    image[(np.abs(xx - 0.5) < 0.04) & (yy > 0.15)] = 12000.0
    marker = (slice(int(0.08 * plan.rows), int(0.12 * plan.rows)), slice(int(0.85 * plan.cols), int(0.88 * plan.cols)))
    image[marker] = 16000.0
    image += rng.normal(0, 120, image.shape).astype(np.float32)
    ds = _new_dataset(DX_PRESENTATION_STORAGE, "DX", generate_uid(), generate_uid())
    ds.ViewPosition = "PA"
    ds.ImagerPixelSpacing = [plan.pixel_mm, plan.pixel_mm]
    ds.Rows, ds.Columns = plan.rows, plan.cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 14, 13, 0
    ds.PixelData = np.clip(image, 0, 16383).astype("<u2").tobytes()
    ds.save_as(folder / "DX0001.dcm", enforce_file_format=True)


def write_es(folder: Path, plan: InputPlan, rng: np.random.Generator) -> None:
    """Colonoscopy frame: reddish mucosa, vignetting, one brighter polyp-like blob; RGB 8-bit."""
    from pydicom.uid import generate_uid

    yy, xx = np.mgrid[: plan.rows, : plan.cols].astype(np.float32)
    yy, xx = yy / plan.rows, xx / plan.cols
    light = np.clip(1.2 - 1.2 * np.hypot(yy - 0.5, xx - 0.5), 0.1, 1.0)
    rgb = np.stack([170 * light, 90 * light, 75 * light], axis=-1)
    rgb[_ellipse(yy, xx, 0.35, 0.62, 0.12, 0.09)] = (235, 140, 120)
    rgb += rng.normal(0, 6, rgb.shape)
    ds = _new_dataset(VL_ENDOSCOPIC_STORAGE, "ES", generate_uid(), generate_uid())
    ds.Rows, ds.Columns = plan.rows, plan.cols
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.clip(rgb, 0, 255).astype(np.uint8).tobytes()
    ds.save_as(folder / "ES0001.dcm", enforce_file_format=True)


WRITERS: dict[str, Callable[[Path, InputPlan, np.random.Generator], None]] = {
    "ct": write_ct, "mr": write_mr, "dx": write_dx, "es": write_es,
}


# ------------------------------------------------------------------------------------------------
# Random weights
# ------------------------------------------------------------------------------------------------


def _resnet50_classifier(in_channels: int, classes: int, size: int) -> Any:
    """MI2RLNet's ResNet50 classifier (spec 4.2/4.3): Keras ResNet50 with its 1000-way top, then Dense(classes)."""
    import tf_keras

    base = tf_keras.applications.ResNet50(weights=None, include_top=True, input_shape=(size, size, in_channels))
    out = tf_keras.layers.Dense(classes, activation="softmax", name="final_layer")(base.output)
    return tf_keras.Model(base.input, out)


def _from_test_helpers(module: str, function: str, *args: Any) -> Any:
    """Call a tf_keras reference builder that lives with the port's tests."""
    sys.path.insert(0, str(TEST_HELPERS))
    import importlib

    return getattr(importlib.import_module(module), function)(*args)


@dataclass(frozen=True)
class KerasReference:
    """How to build the tf_keras original of one weight file, and which port module runs that network."""

    build: Callable[[], Any]
    port_module: str = "net"


# Per Keras-derived model: weight key -> reference.  Models with keras_h5 weights that are missing
# here are skipped (the script cannot write their files).
KERAS_RECIPES: dict[str, dict[str, KerasReference]] = {
    "chest-view": {"weights": KerasReference(lambda: _resnet50_classifier(1, 3, 512))},
    "enhancement": {"weights": KerasReference(lambda: _resnet50_classifier(2, 2, 256))},
    "lung": {"weights": KerasReference(lambda: _from_test_helpers("test_lung", "keras_lung_unet"))},
    "lr-mark": {"weights": KerasReference(lambda: _from_test_helpers("test_lr_mark_port", "keras_efficientdet"))},
    "liver": {"weights": KerasReference(lambda: _from_test_helpers("keras_unet3d_ref", "build_in_unet3d"))},
    "blackblood": {
        "weights": KerasReference(lambda: _from_test_helpers("keras_unet3d_ref", "build_in_unet3d", 32, 2, True))
    },
    # Default kidney configuration (stages="2_1"): localisation net, then the primary kidney+tumour net.
    "kidney": {
        "stage1": KerasReference(
            lambda: _from_test_helpers("keras_unet3d_ref", "build_se_unet3d", 3, 1), "networks.stage1"
        ),
        "stage2_1": KerasReference(
            lambda: _from_test_helpers("keras_unet3d_ref", "build_se_unet3d", 3, 3), "networks.stage2_1"
        ),
    },
}


def install_torch_capture() -> None:
    """Make empty placeholder ``.pth`` files turn into the port's own random state on first load.

    Installed before any model module is imported, in the measuring child
    only: the model then reads a real ``{"net": state_dict}`` file through
    the real, strict loader.
    """
    import torch

    from ai_models.weights import torch_checkpoint

    real = torch_checkpoint.load_state_dict

    def write_then_load(module: Any, path: str | Path, **kwargs: Any) -> None:
        if Path(path).stat().st_size == 0:
            torch.save({"net": module.state_dict()}, path)
        real(module, path, **kwargs)

    torch_checkpoint.load_state_dict = write_then_load


def required_weights(info: Any) -> list[Any]:
    return [spec for spec in info.weights if not spec.optional]


def keras_path(workdir: Path, key: str) -> Path:
    return workdir / f"{key}.h5"


def weight_path(workdir: Path, spec: Any) -> Path:
    return workdir / f"{spec.key}.pth" if spec.format == "torch_pickle" else keras_path(workdir, spec.key)


def prepare_weights(info: Any, workdir: Path) -> str | None:
    """Create placeholders for torch files; return why the model cannot be benchmarked, if so."""
    for spec in required_weights(info):
        if spec.format == "torch_pickle":
            weight_path(workdir, spec).write_bytes(b"")
        elif spec.format == "keras_h5":
            if spec.key not in KERAS_RECIPES.get(info.name, {}):
                return f"no tf_keras builder for weight {spec.key!r} (add one to KERAS_RECIPES)"
        else:
            return f"unknown weight format {spec.format!r}"
    return None


def child_weights(name: str, workdir: Path) -> dict[str, Any]:
    """Child: write every Keras file of ``name`` from its reference builder (random initial weights)."""
    import tf_keras

    for key, reference in KERAS_RECIPES[name].items():
        tf_keras.backend.clear_session()
        reference.build().save_weights(str(keras_path(workdir, key)))
    return {"written": sorted(KERAS_RECIPES[name])}


# ------------------------------------------------------------------------------------------------
# Measurement
# ------------------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def max_rss_mb() -> float:
    """Peak resident set of this process so far (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def top_level_modules(model: Any) -> dict[str, Any]:
    """The torch modules a model object holds, by attribute path (containers opened one level)."""
    from torch import nn

    found: dict[str, nn.Module] = {}
    for attr, value in vars(model).items():
        if isinstance(value, (nn.ModuleList, nn.ModuleDict)):
            found.update({f"{attr}.{k}": m for k, m in value.named_children()})
        elif isinstance(value, nn.Module):
            found[attr] = value
        elif isinstance(value, (list, tuple)):
            found.update({f"{attr}.{i}": m for i, m in enumerate(value) if isinstance(m, nn.Module)})
        elif isinstance(value, dict):
            found.update({f"{attr}.{k}": m for k, m in value.items() if isinstance(m, nn.Module)})
    return found


class NetworkTimer:
    """Forward hooks on a model's top-level modules: when each network call started and ended.

    ``capture`` names modules whose inputs are kept (as numpy) for the
    reference run.  On CUDA the hooks synchronise so that the intervals
    cover the kernels, not just their launch.
    """

    def __init__(self, modules: dict[str, Any], device: Any, capture: set[str]) -> None:
        import torch

        self._sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        self.calls: list[tuple[str, float, float]] = []
        self.captured: dict[str, list[np.ndarray]] = {name: [] for name in capture}
        self.capturing = bool(capture)
        self._open: dict[str, float] = {}
        for name, module in modules.items():
            module.register_forward_pre_hook(self._pre(name))
            module.register_forward_hook(self._post(name))

    def _pre(self, name: str) -> Callable[..., None]:
        def hook(_module: Any, args: tuple) -> None:
            if self.capturing and name in self.captured and args:
                self.captured[name].append(args[0].detach().float().cpu().numpy())
            self._sync()
            self._open[name] = time.perf_counter()

        return hook

    def _post(self, name: str) -> Callable[..., None]:
        def hook(_module: Any, _args: tuple, _output: Any) -> None:
            self._sync()
            self.calls.append((name, self._open.pop(name), time.perf_counter()))

        return hook

    def stages(self, start: float, end: float) -> dict[str, float]:
        """Split [start, end] into pre / net / between / post from the recorded calls."""
        total = end - start
        if not self.calls:
            return {"total": total, "pre": float("nan"), "net": float("nan"), "between": float("nan"),
                    "post": float("nan"), "calls": 0}
        net = sum(e - s for _, s, e in self.calls)
        pre = self.calls[0][1] - start
        post = end - max(e for _, _, e in self.calls)
        by_module: dict[str, float] = {}
        calls_by_module: dict[str, int] = {}
        for name, s, e in self.calls:
            by_module[name] = by_module.get(name, 0.0) + (e - s)
            calls_by_module[name] = calls_by_module.get(name, 0) + 1
        return {"total": total, "pre": pre, "net": net, "between": total - pre - net - post, "post": post,
                "calls": len(self.calls), "by_module": by_module, "calls_by_module": calls_by_module}


def child_measure(name: str, workdir: Path, input_dir: Path, device_name: str, repeat: int) -> dict[str, Any]:
    """Child: load ``name`` with the prepared weights and time ``predict`` on ``input_dir``."""
    install_torch_capture()
    import torch

    from ai_models import get_info, load_model

    info = get_info(name)
    weights = {spec.key: weight_path(workdir, spec) for spec in required_weights(info)}
    load_before = os.getloadavg()[0]
    rss_start = max_rss_mb()
    t = time.perf_counter()
    model = load_model(name, weights=weights, device=device_name)
    load_s = time.perf_counter() - t
    rss_loaded = max_rss_mb()
    device = model.device
    capture = {ref.port_module for ref in KERAS_RECIPES.get(name, {}).values()}
    timer = NetworkTimer(top_level_modules(model), device, capture)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    runs = []
    for i in range(repeat):
        timer.calls.clear()
        cpu_start, start = cpu_seconds(), time.perf_counter()
        result = model.predict(input_dir)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        runs.append({**timer.stages(start, time.perf_counter()), "cpu": cpu_seconds() - cpu_start})
        if i == 0:
            timer.capturing = False
            summary = _summarise(result)

    captured_bytes = sum(a.nbytes for arrays in timer.captured.values() for a in arrays)
    capture_note = None
    if timer.captured and captured_bytes <= MAX_CAPTURE_BYTES:
        for module, arrays in timer.captured.items():
            np.savez(workdir / f"capture_{module}.npz", *arrays)
    elif timer.captured:
        capture_note = f"network inputs too large to keep ({captured_bytes / MB:.0f} MB)"
    out: dict[str, Any] = {
        "load_s": load_s,
        "runs": runs,
        "rss_start_mb": rss_start,
        "rss_loaded_mb": rss_loaded,
        "rss_peak_mb": max_rss_mb(),
        "loadavg": max(load_before, os.getloadavg()[0]),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "result": summary,
        "capture_note": capture_note,
    }
    if device.type == "cuda":
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated(device) / MB
    return out


def _summarise(result: Any) -> str:
    """A short, PHI-free description of a result, to show the run did something."""
    mask = getattr(result, "mask", None)
    if mask is not None:
        return f"mask {tuple(mask.shape)}, {float(np.count_nonzero(mask)) / mask.size:.1%} foreground"
    if hasattr(result, "boxes"):
        return f"{len(result.boxes)} boxes"
    if hasattr(result, "label"):
        return f"label {result.label}"
    return type(result).__name__


def child_reference(name: str, workdir: Path, repeat: int) -> dict[str, Any]:
    """Child: time each tf_keras reference on the inputs the port's network received."""
    import tensorflow as tf

    per_module: dict[str, float] = {}
    per_module_median: dict[str, float] = {}
    for key, reference in KERAS_RECIPES[name].items():
        capture = workdir / f"capture_{reference.port_module}.npz"
        if not capture.exists():
            return {"error": f"no captured inputs for {reference.port_module}"}
        with np.load(capture) as data:
            inputs = [np.moveaxis(data[k], 1, -1) for k in data.files]  # channels-first -> channels-last
        if not inputs:
            continue  # the port never ran this network on this input (e.g. a cascade stage found nothing)
        model = reference.build()
        model.load_weights(str(keras_path(workdir, key)))
        model.predict_on_batch(inputs[0])  # build the graph once, outside the timing
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            for x in inputs:
                model.predict_on_batch(x)
            times.append(time.perf_counter() - start)
        per_module[reference.port_module] = min(times)
        per_module_median[reference.port_module] = statistics.median(times)
    if not per_module:
        return {"error": "the port ran none of the reference networks"}
    return {"net_s": per_module, "net_median_s": per_module_median, "tf": tf.__version__, "tf_threads": tf.config.threading.get_intra_op_parallelism_threads()}


# ------------------------------------------------------------------------------------------------
# Orchestration
# ------------------------------------------------------------------------------------------------


@dataclass
class Row:
    model: str
    input: str = ""
    unit: str = ""
    status: str = "ok"
    latency_s: float = float("nan")
    best_s: float = float("nan")
    cpu_s: float = float("nan")
    first_s: float = float("nan")
    pre_s: float = float("nan")
    net_s: float = float("nan")
    between_s: float = float("nan")
    post_s: float = float("nan")
    net_calls: int = 0
    load_s: float = float("nan")
    rss_loaded_mb: float = float("nan")
    peak_rise_mb: float = float("nan")
    gpu_peak_mb: float = float("nan")
    loadavg: float = float("nan")
    ref_net_s: float = float("nan")
    ratio: float = float("nan")
    ratio_median: float = float("nan")
    result: str = ""
    notes: list[str] = field(default_factory=list)


def run_child(args: list[str], timeout: float) -> dict[str, Any]:
    """Run this script as a child; return its JSON result or {"error": ...}."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}


def bench_model(info: Any, input_dir: Path, plan: InputPlan, args: argparse.Namespace, scratch: Path) -> Row:
    row = Row(model=info.name, input=plan.label, unit=info.input_kind)
    workdir = Path(tempfile.mkdtemp(prefix=f"{info.name}-", dir=scratch))
    reason = prepare_weights(info, workdir)
    if reason:
        row.status, row.notes = "skipped", [reason]
        return row
    recipe = KERAS_RECIPES.get(info.name)
    if recipe and any(s.format == "keras_h5" for s in info.weights):
        made = run_child(["--child", "weights", "--model", info.name, "--workdir", str(workdir)], args.timeout)
        if "error" in made:
            row.status, row.notes = "skipped", [f"cannot write Keras weights: {made['error']}"]
            return row
    common = ["--model", info.name, "--workdir", str(workdir), "--repeat", str(args.repeat)]
    measured = run_child(
        ["--child", "measure", *common, "--input", str(input_dir), "--device", args.device], args.timeout
    )
    if "error" in measured:
        row.status, row.notes = "failed", [measured["error"]]
        return row
    runs = measured["runs"]
    median = sorted(runs, key=lambda r: r["total"])[(len(runs) - 1) // 2]  # lower median: a real run
    row.latency_s, row.first_s, row.cpu_s = median["total"], runs[0]["total"], median["cpu"]
    row.best_s = min(r["total"] for r in runs)
    row.pre_s, row.net_s, row.between_s, row.post_s = (median[k] for k in ("pre", "net", "between", "post"))
    row.net_calls = median["calls"]
    row.load_s = measured["load_s"]
    row.rss_loaded_mb = measured["rss_loaded_mb"]
    row.peak_rise_mb = measured["rss_peak_mb"] - measured["rss_loaded_mb"]
    row.gpu_peak_mb = measured.get("gpu_peak_mb", float("nan"))
    row.loadavg = measured["loadavg"]
    row.result = measured["result"]
    if not median["calls"]:
        row.notes.append("no top-level network call seen: only the total is timed")
    elif len(median["by_module"]) > 1 or recipe:
        counts = ", ".join(f"{m} x{n}" for m, n in median["calls_by_module"].items())
        row.notes.append(f"network calls: {counts}")
    if recipe:
        if measured.get("capture_note"):
            row.notes.append(measured["capture_note"])
        else:
            ref = run_child(["--child", "reference", *common], args.timeout)
            if "error" in ref:
                row.notes.append(f"reference: {ref['error']}")
            else:
                row.ref_net_s = sum(ref["net_s"].values())
                port = min(sum(r.get("by_module", {}).get(m, 0.0) for m in ref["net_s"]) for r in runs)
                row.ratio = port / row.ref_net_s
                # Best-of can flatter either side (tf_keras alternated between 5 s and 10 s calls of the
                # lung U-Net in one process), so the median-to-median ratio is printed too.
                port_median = statistics.median(sum(r.get("by_module", {}).get(m, 0.0) for m in ref["net_s"]) for r in runs)
                row.ratio_median = port_median / sum(ref["net_median_s"].values())
    return row


def machine_description(device: str) -> str:
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    text = (f"{cpu}, {os.cpu_count()} logical CPUs, {mem_gb:.0f} GiB RAM; Python {platform.python_version()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    if device != "cpu" and torch.cuda.is_available():
        text += f"; GPU {torch.cuda.get_device_name(0)}"
    return text


def _fmt(value: float, digits: int = 2) -> str:
    return "-" if value != value else f"{value:.{digits}f}"  # NaN -> "-"


def print_table(rows: list[Row], device: str) -> None:
    header = ["model", "input", "unit", "latency s", "best s", "first s", "CPU s", "pre s", "net s", "between s", "post s",
              "net calls", "load s", "RSS loaded MB", "peak rise MB"]
    if device != "cpu":
        header.append("GPU peak MB")
    header += ["ref net s", "port/ref", "port/ref median", "load"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        if r.status != "ok":
            continue
        cells = [r.model, r.input, r.unit, _fmt(r.latency_s), _fmt(r.best_s), _fmt(r.first_s), _fmt(r.cpu_s), _fmt(r.pre_s), _fmt(r.net_s),
                 _fmt(r.between_s), _fmt(r.post_s), str(r.net_calls), _fmt(r.load_s), _fmt(r.rss_loaded_mb, 0),
                 _fmt(r.peak_rise_mb, 0)]
        if device != "cpu":
            cells.append(_fmt(r.gpu_peak_mb, 0))
        cells += [_fmt(r.ref_net_s), _fmt(r.ratio), _fmt(r.ratio_median), _fmt(r.loadavg, 1)]
        print("| " + " | ".join(cells) + " |")
    print()
    for r in rows:
        line = f"- {r.model}: {r.status}"
        if r.result:
            line += f"; result {r.result}"
        if r.notes:
            line += "; " + "; ".join(r.notes)
        print(line)


def bench_all(infos: list[Any], args: argparse.Namespace, scratch: Path) -> list[Row]:
    """Write each input once, then benchmark every model on its input."""
    rng = np.random.default_rng(0)
    inputs: dict[str, Path] = {}
    rows: list[Row] = []
    for info in infos:
        plan = plan_input(info.modalities, args.quick)
        if plan is None:
            rows.append(Row(info.name, status="skipped", notes=[f"no synthetic input for modalities {info.modalities}"]))
            continue
        if plan.key not in inputs:
            folder = scratch / plan.key
            folder.mkdir()
            WRITERS[plan.kind](folder, plan, rng)
            inputs[plan.key] = folder
        print(f"# {info.name}: {plan.label} ...", file=sys.stderr, flush=True)
        rows.append(bench_model(info, inputs[plan.key], plan, args, scratch))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated model names (default: all registered)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--repeat", type=int, default=3, help="timed predict calls per model (the first is cold)")
    parser.add_argument("--quick", action="store_true", help="smaller inputs")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per child process")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--scratch", type=Path, help="folder for inputs and weights (default: a temp dir)")
    parser.add_argument("--child", choices=["weights", "measure", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        handlers = {
            "weights": lambda: child_weights(args.model, args.workdir),
            "measure": lambda: child_measure(args.model, args.workdir, args.input, args.device, args.repeat),
            "reference": lambda: child_reference(args.model, args.workdir, args.repeat),
        }
        print(RESULT_PREFIX + json.dumps(handlers[args.child]()), flush=True)
        return 0

    import ai_models
    from ai_models.registry import IMPORT_ERRORS

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device visible to torch")
    infos = ai_models.available_models()
    if args.models:
        wanted = [m.strip() for m in args.models.split(",") if m.strip()]
        known = {i.name for i in infos}
        unknown = [m for m in wanted if m not in known]
        if unknown:
            parser.error(f"unknown model(s) {unknown}; registered: {sorted(known)}")
        infos = [i for i in infos if i.name in wanted]

    print(f"# Machine: {machine_description(args.device)}")
    print(f"# Mode: {'quick' if args.quick else 'full'}, device {args.device}, repeat {args.repeat}")
    for module, error in IMPORT_ERRORS.items():
        print(f"# not registered (import failed): {module}: {error}")
    scratch = Path(tempfile.mkdtemp(prefix="bench-models-", dir=args.scratch))
    try:
        rows = bench_all(infos, args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # inputs and weight files are hundreds of MB
    print()
    print_table(rows, args.device)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2, allow_nan=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
