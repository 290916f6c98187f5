"""Kidney and kidney-tumour segmentation on abdominal CT (MI2RLNet ``KidneyTumorSegmentation``), PyTorch port.

The KiTS19 cascade of MI2RLNET_MODELS.md section 4.5, run on a DICOM series.
Everything happens on ``raw``: the series in canonical layout (axis 0 feet
to head, axis 1 anterior to posterior, axis 2 patient right to left), HU,
which is the layout the original built from its KiTS NIfTI files.  Spacing
is never used, as in the original: every resampling is index based.

* **Stage 1** (Coreline, depth-3 SE-residual U-Net, sigmoid) finds the
  kidneys in two overlapping halves of the body (columns [0, 0.6W) and the
  mirrored [0.4W, W)), each squeezed to a ``cube``^3 input.  Volumes with
  more than ``cube`` slices go through windows of ``cube`` slices every
  ``cube // 2`` (plus a last one flush with the end) whose probabilities
  are averaged where they overlap; this is what the original intended (its
  HEAD added every window at the last window's position).  The two halves
  are united in the overlap columns, a half with more than 70 blobs is
  discarded, and the largest blob becomes label 1, the second label 2 when
  it is over a fifth of the largest.
* **Stage 2_1** (Coreline, the primary product) re-segments each kidney in
  its bounding box +-16 voxels at ``cube``^3 (the patient-left one
  mirrored), 3 classes, keeps the largest blob, and pastes right then left.
  No kidney gives an empty mask; one kidney is placed by its columns.
* **Stages 2_2-2_5** (MI2RL fine models, native resolution) run only with
  ``stages="all"``.  They use the KiTS file layout ``(x, y, z)`` with z from
  head to feet, as the original did.  Where the spec leaves the exact
  off-by-one of the original paste open, each crop's prediction goes back
  onto the voxels it was cut from.

Labels: 0 background, 1 kidney, 2 kidney tumour (KiTS19).

Two attributes exist so tests can run the logic at a size a CPU handles in
seconds: ``cube`` (network input edge of stages 1 and 2_1; default 200, as
the weights were trained) and ``fine_box`` (the 2_3-2_5 box, default
(380, 230, 72) voxels in x, y, z).  ``networks`` maps stage keys to the
loaded networks; it may be replaced by any module with the same input and
output convention (probabilities, NCDHW), or given to :meth:`with_networks`.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from ai_models.base import Model, select_device
from ai_models.errors import WeightError
from ai_models.info import ModelInfo, WeightSpec
from ai_models.nets.unet3d import SEResUNet3D, run_network
from ai_models.registry import register
from ai_models.resample import resample_index
from ai_models.results import Segmentation
from ai_models.volume import read_volume, require_modality, segmentation_from_canonical

STAGES = ("stage1", "stage2_1", "stage2_2", "stage2_3", "stage2_4", "stage2_5")
PRIMARY_STAGES = ("stage1", "stage2_1")
LABELS = {1: "kidney", 2: "kidney tumor"}

AIR_HU = -1024.0
COARSE_WINDOW = (-300.0, 600.0)
FINE_WINDOW = (-100.0, 300.0)
FINE_MEAN, FINE_STD = 80.965447, 58.843571
BOX_MARGIN = 16
MAX_COMPONENTS = 70
SECOND_KIDNEY_FRACTION = 0.2
CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


def _architecture(stage: str) -> SEResUNet3D:
    if stage == "stage1":
        return SEResUNet3D(depth=3, n_classes=1)
    return SEResUNet3D(depth=4 if stage == "stage2_2" else 3, n_classes=3)


def coarse_normalise(hu: np.ndarray) -> np.ndarray:
    """Window [-300, 600] HU scaled to [0, 1] (stages 1 and 2_1)."""
    low, high = COARSE_WINDOW
    return np.clip((hu - low) / (high - low), 0.0, 1.0).astype(np.float32)


def components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """26-connected labelling: the label array and the size of each component (index 0 unused)."""
    labels, count = ndimage.label(mask, structure=CONNECTIVITY_26)
    return labels, np.bincount(labels.ravel(), minlength=count + 1)


def largest_component(labelmap: np.ndarray) -> np.ndarray:
    """Keep the labels of the largest 26-connected blob of ``labelmap > 0``; all zero beyond 70 blobs."""
    labels, sizes = components(labelmap > 0)
    if len(sizes) == 1 or len(sizes) - 1 > MAX_COMPONENTS:
        return np.zeros_like(labelmap)
    keep = labels == int(np.argmax(sizes[1:]) + 1)
    return np.where(keep, labelmap, 0).astype(labelmap.dtype)


def two_largest(mask: np.ndarray) -> np.ndarray:
    """Largest blob -> 1, second largest -> 2 if over a fifth of the largest, rest dropped."""
    labels, sizes = components(mask)
    out = np.zeros(mask.shape, dtype=np.uint8)
    if len(sizes) == 1:
        return out
    ranked = np.argsort(sizes[1:])[::-1] + 1
    out[labels == ranked[0]] = 1
    if len(ranked) > 1 and sizes[ranked[1]] > SECOND_KIDNEY_FRACTION * sizes[ranked[0]]:
        out[labels == ranked[1]] = 2
    return out


def window_starts(n: int, window: int) -> list[int]:
    """Start slices of the sliding windows for ``n > window`` slices: every window/2, plus one flush with the end."""
    starts = list(range(0, n - window + 1, window // 2))
    if starts[-1] != n - window:
        starts.append(n - window)
    return starts


def _crop_slices(lo: np.ndarray, hi: np.ndarray, shape: tuple[int, ...], end_margin: int) -> tuple[slice, ...]:
    """[max(0, lo), min(dim - end_margin, hi)) per axis."""
    return tuple(slice(max(0, int(a)), min(d - end_margin, int(b))) for a, b, d in zip(lo, hi, shape))


class KidneyTumorSegmentation(Model):
    """The KiTS19 cascade on a CT series; stage 2_1 is the result, other stages go to ``details``."""

    info = ModelInfo(
        name="kidney",
        task="kidney and kidney tumour segmentation on abdominal CT",
        modalities=("CT",),
        input_kind="series",
        output_kind="segmentation",
        version="1.0.0",
        description=(
            "MI2RLNet KidneyTumorSegmentation (KiTS19 cascade): stage 1 locates the kidneys in each half "
            "of the body, stage 2_1 segments kidney and tumour per kidney; SE-residual 3-D U-Nets at 200^3. "
            "Fine models 2_2-2_5 run with stages='all'."
        ),
        weights=(
            WeightSpec("stage1", "keras_h5", "stage 1 (Coreline, kidney localisation), depth 3, 1 class", "model0.h5"),
            WeightSpec("stage2_1", "keras_h5", "stage 2_1 (Coreline, kidney + tumour), depth 3, 3 classes", "model1.h5"),
            WeightSpec("stage2_2", "keras_h5", "stage 2_2 (MI2RL 'tumor'), depth 4; stages='all' only", "model2.h5", True),
            WeightSpec("stage2_3", "keras_h5", "stage 2_3 (MI2RL), depth 3; stages='all' only", "model3.h5", True),
            WeightSpec("stage2_4", "keras_h5", "stage 2_4 (MI2RL, focal-dice), depth 3; stages='all' only", "model4.h5", True),
            WeightSpec("stage2_5", "keras_h5", "stage 2_5 (MI2RL), depth 3; stages='all' only", "model5.h5", True),
        ),
        labels=("kidney", "kidney tumor"),
        caveats=(
            "Trained on KiTS19 (CC BY-NC-SA 4.0): research use; not for clinical or commercial use without review.",
            "Voxel spacing is ignored (index-based resampling to 200^3), as in the original; very unusual "
            "fields of view or slice counts change the effective scale.",
            "Weights were trained with keras_contrib InstanceNorm (divides by sigma + 1e-3); inference uses the "
            "tfa form sqrt(var + 1e-3) like the original HEAD.",
            "Stages 2_2-2_5 were trained on resampled ('interpolated') KiTS volumes but run at native resolution, "
            "as in the original: expect a scale mismatch; they are reported in details only.",
        ),
        options={"stages": "2_1"},
    )

    cube: int = 200
    fine_box: tuple[int, int, int] = (380, 230, 72)

    def __init__(
        self,
        weights: dict[str, Path],
        device: torch.device,
        *,
        networks: Mapping[str, nn.Module] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(weights, device, **options)
        stages = self.options["stages"]
        if stages not in ("2_1", "all"):
            raise ValueError(f"kidney: option stages must be '2_1' or 'all', not {stages!r}")
        self.stages = PRIMARY_STAGES if stages == "2_1" else STAGES
        if networks is None:
            missing = [key for key in self.stages if key not in weights]
            if missing:
                raise WeightError(f"kidney: stages={stages!r} needs weight file(s) for {missing}")
            networks = {}
            for key in self.stages:
                net = _architecture(key)
                net.load_keras(weights[key])
                networks[key] = net
        else:
            missing = [key for key in self.stages if key not in networks]
            if missing:
                raise ValueError(f"kidney: networks for {missing} are missing")
        self.networks: dict[str, nn.Module] = {key: networks[key].to(device).eval() for key in self.stages}

    @classmethod
    def with_networks(
        cls, networks: Mapping[str, nn.Module], device: str | torch.device = "cpu", **options: Any
    ) -> KidneyTumorSegmentation:
        """Build the pipeline around given networks instead of weight files (tests, experiments)."""
        return cls(weights={}, device=select_device(device), networks=networks, **options)

    def _infer(self, stage: str, array: np.ndarray) -> np.ndarray:
        return run_network(self.networks[stage], array, self.device)

    # --- stage 1 ---------------------------------------------------------------------------------

    def _half_probability_small(self, slab: np.ndarray) -> np.ndarray:
        """At most ``cube`` slices: centre them in an air-filled frame, one cube, keep the slab's slices."""
        z, h, w = slab.shape
        cube = self.cube
        offset = (cube - z) // 2
        frame = np.full((cube, h, w), AIR_HU, dtype=np.float32)
        frame[offset : offset + z] = slab
        x = coarse_normalise(resample_index(frame, (cube, cube, cube), linear=True, default=AIR_HU))
        return self._infer("stage1", x)[0][offset : offset + z]

    def _half_probability_large(self, slab: np.ndarray) -> np.ndarray:
        """More than ``cube`` slices: overlapping windows, each averaged in at its own slices."""
        z, h, w = slab.shape
        cube = self.cube
        total = np.zeros((z, cube, cube), dtype=np.float32)
        count = np.zeros((z, 1, 1), dtype=np.float32)
        for start in window_starts(z, cube):
            window = slab[start : start + cube]
            x = coarse_normalise(resample_index(window, (cube, cube, cube), linear=True, default=AIR_HU))
            total[start : start + cube] += self._infer("stage1", x)[0]
            count[start : start + cube] += 1
        return total / count

    def _half_mask(self, slab: np.ndarray) -> np.ndarray:
        z, h, w = slab.shape
        if z <= self.cube:
            probability = self._half_probability_small(slab)
        else:
            probability = self._half_probability_large(slab)
        binary = (probability > 0.5).astype(np.uint8)
        mask = resample_index(binary, (z, h, w), linear=False)
        if len(components(mask)[1]) - 1 > MAX_COMPONENTS:
            return np.zeros_like(mask)
        return mask

    def stage1(self, raw: np.ndarray) -> np.ndarray:
        """Kidney localisation: labels 1 (largest blob) and 2 (second, if large enough); not side-specific."""
        width = raw.shape[2]
        right_end, left_start = int(0.6 * width), int(0.4 * width)
        right = self._half_mask(raw[:, :, :right_end])
        left = self._half_mask(np.ascontiguousarray(raw[:, :, left_start:][:, :, ::-1]))[:, :, ::-1]
        union = np.zeros(raw.shape, dtype=np.uint8)
        union[:, :, :right_end] = right
        union[:, :, left_start:] |= left
        return two_largest(union)

    # --- stage 2_1 -------------------------------------------------------------------------------

    @staticmethod
    def kidneys(mode1: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """The stage-1 kidneys as (side, mask), patient right first; sides from the column positions."""
        first, second = mode1 == 1, mode1 == 2
        n1, n2 = int(first.sum()), int(second.sum())
        if n1 == 0:
            return []
        if n2 > SECOND_KIDNEY_FRACTION * n1:
            if np.nonzero(first)[2].mean() <= np.nonzero(second)[2].mean():
                return [("right", first), ("left", second)]
            return [("right", second), ("left", first)]
        side = "right" if np.nonzero(first)[2].min() < mode1.shape[2] / 2 else "left"
        return [(side, first)]

    def stage2_1(self, raw: np.ndarray, mode1: np.ndarray) -> np.ndarray:
        """Kidney (1) and tumour (2) per kidney, at ``cube``^3 in each kidney's box +-16 voxels."""
        out = np.zeros(raw.shape, dtype=np.uint8)
        cube = self.cube
        for side, kidney in self.kidneys(mode1):
            where = np.nonzero(kidney)
            lo = np.array([a.min() for a in where]) - BOX_MARGIN
            hi = np.array([a.max() for a in where]) + BOX_MARGIN + 1
            box = _crop_slices(lo, hi, raw.shape, 0)
            crop = raw[box]
            if side == "left":
                crop = crop[:, :, ::-1]
            x = coarse_normalise(resample_index(crop, (cube, cube, cube), linear=True, default=AIR_HU))
            labels = np.argmax(self._infer("stage2_1", x), axis=0).astype(np.uint8)
            labels = resample_index(labels, crop.shape, linear=False)
            if side == "left":
                labels = labels[:, :, ::-1]
            labels = largest_component(labels)
            region = out[box]
            if side == "right":
                region[...] = labels
            else:
                region[labels > 0] = labels[labels > 0]
        return out

    # --- stages 2_2 - 2_5 (KiTS file layout: x, y, z with z head to feet) -----------------------

    def _fine_predict(self, stage: str, crop: np.ndarray, standardise: str) -> np.ndarray:
        x = np.clip(crop, *FINE_WINDOW).astype(np.float32)
        if standardise == "fixed":
            x = (x - FINE_MEAN) / FINE_STD
        else:
            span = float(x.max() - x.min())
            x = (x - x.min()) / span if span > 0 else np.zeros_like(x)
        # The networks need 2**depth voxels per axis; tiny crops (where the original failed) are padded.
        need = 2 ** (4 if stage == "stage2_2" else 3)
        pad = [(0, max(0, need - s)) for s in x.shape]
        x = np.pad(x, pad, mode="minimum")
        labels = np.argmax(self._infer(stage, x), axis=0).astype(np.uint8)
        return labels[tuple(slice(0, s) for s in crop.shape)]

    def stage2_2(self, img: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Per side of the x midline: bbox crop of the stage-1 mask, left side mirrored, depth-4 net."""
        out = np.zeros(img.shape, dtype=np.uint8)
        xs = np.arange(img.shape[0])[:, None, None]
        for mirrored, side in ((False, xs < img.shape[0] / 2), (True, xs >= img.shape[0] / 2)):
            cut = mask & side
            if not cut.any():
                continue  # the original crashed here; an absent kidney simply yields nothing
            where = np.nonzero(cut)
            box = _crop_slices(
                np.array([a.min() for a in where]), np.array([a.max() for a in where]) + 1, img.shape, 1
            )
            crop = img[box]
            if crop.size == 0:
                continue
            if mirrored:
                crop = crop[::-1]
            labels = self._fine_predict("stage2_2", crop, "fixed")
            out[box] = labels[::-1] if mirrored else labels
        return out

    def stage_box(self, stage: str, img: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Stages 2_3-2_5: a ``fine_box`` around the mask centre, padded with the crop minimum."""
        out = np.zeros(img.shape, dtype=np.uint8)
        if not mask.any():
            return out
        where = np.nonzero(mask)
        centre = np.array([(a.min() + a.max()) // 2 for a in where])
        size = np.array(self.fine_box)
        box = _crop_slices(centre - size // 2, centre - size // 2 + size, img.shape, 1)
        crop = img[box]
        if crop.size == 0:
            return out
        diff = size - np.array(crop.shape)
        diff += diff % 2
        before = diff // 2
        padded = np.pad(crop, [(int(b), int(b)) for b in before], mode="minimum")
        padded = padded[tuple(slice(0, int(s)) for s in size)]
        labels = self._fine_predict(stage, padded, "fixed" if stage == "stage2_5" else "minmax")
        out[box] = labels[tuple(slice(int(b), int(b) + s) for b, s in zip(before, crop.shape))]
        return out

    def fine_stages(self, raw: np.ndarray, mode1: np.ndarray) -> dict[str, np.ndarray]:
        """Run 2_2-2_5 in the KiTS layout and return their masks in the ``raw`` layout."""
        img = np.ascontiguousarray(np.transpose(raw[::-1], (2, 1, 0)))
        mask = np.transpose((mode1 > 0)[::-1], (2, 1, 0))

        def back(m: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(np.transpose(m, (2, 1, 0))[::-1])

        results = {"stage2_2": back(self.stage2_2(img, mask))}
        for stage in ("stage2_3", "stage2_4", "stage2_5"):
            results[stage] = back(self.stage_box(stage, img, mask))
        return results

    # --- whole cascade ---------------------------------------------------------------------------

    def cascade(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        """All configured stages on a canonical HU volume; masks keyed by stage, in ``raw`` layout."""
        masks = {"stage1": self.stage1(raw)}
        masks["stage2_1"] = self.stage2_1(raw, masks["stage1"])
        if "stage2_2" in self.stages:
            masks.update(self.fine_stages(raw, masks["stage1"]))
        return masks

    def predict(self, source: Any) -> Segmentation:
        volume = read_volume(source, values="hu")
        require_modality(volume, self.info.name, self.info.modalities)
        raw, _, mapping = volume.canonical()
        masks = self.cascade(raw)
        sides = [side for side, _ in self.kidneys(masks["stage1"])]
        return segmentation_from_canonical(
            volume,
            masks["stage2_1"],
            mapping,
            model=self.info.name,
            model_version=self.info.version,
            label_names=LABELS,
            details={
                "kidneys_found": sides,
                "stages": list(self.stages),
                # Every stage's own mask on the series grid; stage1 labels are blob ranks, not sides.
                "stage_masks": {
                    key: np.ascontiguousarray(mapping.invert(m)).astype(np.uint8) for key, m in masks.items()
                },
            },
        )


register(KidneyTumorSegmentation.info, KidneyTumorSegmentation)
