"""Kidney cascade: geometry on synthetic CT with stand-in networks, cascade rules, weights, and a random-weight run."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from phantoms3d import abdomen_ct, dice
from torch import nn

from ai_models import Segmentation, WeightError, get_info, load_model
from ai_models.abdomen.kidney import (
    FINE_MEAN,
    FINE_STD,
    KidneyTumorSegmentation,
    coarse_normalise,
    largest_component,
    two_largest,
    window_starts,
)
from ai_models.base import select_device
from ai_models.volume import read_volume


def _unit(hu: float) -> float:
    return float(coarse_normalise(np.array(hu, dtype=np.float32)))


class IntensityBands(nn.Module):
    """A deterministic stand-in network: classes by thresholds on the normalised input intensity.

    One edge gives a 1-channel 0/1 "sigmoid" map (stage 1); two edges give a
    3-class one-hot "softmax" (background, kidney, tumour).  The edges sit
    halfway between the phantom's tissue values, so interpolation blur
    moves boundaries symmetrically.
    """

    def __init__(self, *edges_hu: float) -> None:
        super().__init__()
        self.edges = [_unit(e) for e in edges_hu]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.edges) == 1:
            return (x > self.edges[0]).float()
        classes = sum((x[:, 0] > e).long() for e in self.edges)
        return nn.functional.one_hot(classes, 3).permute(0, 4, 1, 2, 3).float()


# Phantom values: body 40 HU, kidney 200 HU, tumour 420 HU.
STAND_INS = {"stage1": IntensityBands(120.0), "stage2_1": IntensityBands(120.0, 310.0)}


def _model(cube: int | None = None, **options) -> KidneyTumorSegmentation:
    model = KidneyTumorSegmentation.with_networks(STAND_INS, **options)
    if cube is not None:
        model.cube = cube
    return model


def _check_against_truth(phantom, seg: Segmentation, min_dice: float = 0.95) -> None:
    truth = phantom.truth_for(seg.source_sop_instance_uids)
    assert seg.mask.shape == truth.shape and seg.mask.dtype == np.uint8
    for label in (1, 2):
        if (truth == label).any():
            assert dice(seg.mask == label, truth == label) > min_dice, label
        else:
            assert not (seg.mask == label).any()


def _patient_x(volume, mask: np.ndarray) -> float:
    """LPS x (mm; positive = patient left) of the centroid of ``mask`` on the volume grid."""
    z, y, x = (float(a.mean()) for a in np.nonzero(mask))
    return volume.to_sitk().TransformContinuousIndexToPhysicalPoint((x, y, z))[0]


def test_both_kidneys_land_on_the_phantom_through_flips_and_shuffling():
    # Columns toward patient right, slices stacked head to feet, files shuffled: every axis needs care.
    phantom = abdomen_ct(row_dir=(-1.0, 0.0, 0.0), col_dir=(0.0, -1.0, 0.0), shuffle_seed=3)
    seg = _model().predict(phantom.datasets)  # default 200^3 cube
    _check_against_truth(phantom, seg)
    assert seg.label_names == {1: "kidney", 2: "kidney tumor"}
    assert seg.details["kidneys_found"] == ["right", "left"]
    volume = read_volume(phantom.datasets)
    assert seg.source_sop_instance_uids == volume.sop_instance_uids
    # The tumour is in the patient-left kidney; the larger (right) kidney is at negative x.
    assert _patient_x(volume, seg.mask == 2) > 15
    largest_kidney = two_largest(seg.mask == 1) == 1
    assert _patient_x(volume, largest_kidney) < -15
    truth = phantom.truth_for(seg.source_sop_instance_uids)
    for label, name in seg.label_names.items():
        assert seg.volumes_ml[name] == pytest.approx((truth == label).sum() * volume.voxel_volume_ml, rel=0.05)


def test_more_slices_than_the_cube_use_each_window_at_its_own_slices():
    """260 slices, kidneys in slices ~28-42 which only the first 200-slice window covers."""
    phantom = abdomen_ct(n_slices=260, kidney_z=-236.0, shuffle_seed=None)
    truth_slices = np.nonzero(phantom.truth_for([ds.SOPInstanceUID for ds in phantom.datasets]).any(axis=(1, 2)))[0]
    assert truth_slices.max() < 60  # the last window starts at 60
    seg = _model().predict(phantom.datasets)
    _check_against_truth(phantom, seg)
    truth = phantom.truth_for(seg.source_sop_instance_uids)
    assert dice(seg.details["stage_masks"]["stage1"] > 0, truth > 0) > 0.95


@pytest.mark.parametrize(
    ("n_slices", "kidney_z", "step"),
    [(30, 0.0, 2.5), (100, -80.0, 2.5), (70, 30.0, -2.0)],
    ids=["under-cube", "over-cube", "over-cube-feet-first"],
)
def test_shrunken_cube_keeps_the_geometry(n_slices, kidney_z, step):
    phantom = abdomen_ct(n_slices=n_slices, kidney_z=kidney_z, slice_step=step)
    _check_against_truth(phantom, _model(cube=48).predict(phantom.datasets))


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_single_kidney_is_found_on_its_side(side):
    phantom = abdomen_ct(kidneys=side)
    seg = _model(cube=48).predict(phantom.datasets)
    assert seg.details["kidneys_found"] == [side]
    _check_against_truth(phantom, seg)


def test_no_kidney_gives_an_empty_mask():
    phantom = abdomen_ct(kidneys="none")
    seg = _model(cube=48).predict(phantom.datasets)
    assert seg.details["kidneys_found"] == [] and not seg.mask.any()
    assert seg.volumes_ml == {"kidney": 0.0, "kidney tumor": 0.0}


class FineBands(nn.Module):
    """3-class stand-in for the fine stages, with edges on a given HU -> input scale."""

    def __init__(self, scale) -> None:
        super().__init__()
        self.edges = [scale(120.0), scale(250.0)]  # kidney/body and tumour/kidney (tumour clips to 300)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        classes = sum((x[:, 0] > e).long() for e in self.edges)
        return nn.functional.one_hot(classes, 3).permute(0, 4, 1, 2, 3).float()


def _fine_stand_ins() -> dict[str, nn.Module]:
    fixed = FineBands(lambda hu: (hu - FINE_MEAN) / FINE_STD)
    # The min-max crops span air (-100 after clipping) to tumour (300).
    minmax = FineBands(lambda hu: (hu + 100.0) / 400.0)
    return {**STAND_INS, "stage2_2": fixed, "stage2_3": minmax, "stage2_4": minmax, "stage2_5": fixed}


@pytest.mark.parametrize("kidneys", ["both", "left"])
def test_fine_stages_land_on_the_phantom_at_native_resolution(kidneys):
    """Stages 2_2-2_5 work in the KiTS (x, y, z) layout with mirroring; their masks must come back in place."""
    phantom = abdomen_ct(kidneys=kidneys, row_dir=(-1.0, 0.0, 0.0), slice_step=-2.5)
    model = KidneyTumorSegmentation.with_networks(_fine_stand_ins(), stages="all")
    model.cube = 48
    if kidneys == "left":
        model.fine_box = (96, 80, 40)  # otherwise the default 380 x 230 x 72, padded around this small volume
    seg = model.predict(phantom.datasets)
    truth = phantom.truth_for(seg.source_sop_instance_uids)
    for stage in ("stage2_2", "stage2_3", "stage2_4", "stage2_5"):
        mask = seg.details["stage_masks"][stage]
        for label in (1, 2):
            assert dice(mask == label, truth == label) > 0.95, (stage, label)


def test_non_ct_series_is_refused():
    phantom = abdomen_ct()
    for ds in phantom.datasets:
        ds.Modality = "MR"
    with pytest.raises(Exception, match="takes CT"):
        _model(cube=48).predict(phantom.datasets)


def test_window_starts_cover_every_slice_and_end_flush():
    assert window_starts(230, 200) == [0, 30]
    assert window_starts(400, 200) == [0, 100, 200]
    assert window_starts(450, 200) == [0, 100, 200, 250]
    for n in range(201, 700, 37):
        starts = window_starts(n, 200)
        covered = np.zeros(n, bool)
        for s in starts:
            covered[s : s + 200] = True
        assert covered.all() and starts[-1] == n - 200


def test_component_rules():
    mask = np.zeros((10, 10, 30), np.uint8)
    mask[1:4, 1:4, 1:4] = 1  # 27 voxels
    mask[1:5, 1:5, 10:15] = 1  # 80 voxels
    mask[8, 8, 25] = 1  # 1 voxel: under a fifth of the largest
    labelled = two_largest(mask)
    assert (labelled == 1).sum() == 80 and (labelled == 2).sum() == 27 and labelled[8, 8, 25] == 0
    labels = mask.copy()
    labels[2, 2, 12] = 2
    kept = largest_component(labels)
    assert (kept > 0).sum() == 80 and kept[2, 2, 12] == 2
    speckle = np.zeros((9, 9, 9), np.uint8)
    speckle[::2, ::2, ::2] = 1  # 125 isolated voxels: more than 70 blobs
    assert not largest_component(speckle).any()


def test_fine_stages_need_all_six_weights(tmp_path):
    two = {key: tmp_path / f"{key}.h5" for key in ("stage1", "stage2_1")}
    with pytest.raises(WeightError, match=r"\['stage2_2', 'stage2_3', 'stage2_4', 'stage2_5'\]"):
        KidneyTumorSegmentation(weights=two, device=select_device("cpu"), stages="all")
    with pytest.raises(WeightError, match="stage2_1"):
        load_model("kidney", weights=[tmp_path / "only_one.h5"])
    with pytest.raises(ValueError, match="stages"):
        _model(stages="2_3")


def test_registration():
    info = get_info("kidney")
    assert info.modalities == ("CT",) and info.input_kind == "series" and info.output_kind == "segmentation"
    assert [w.key for w in info.weights] == ["stage1", "stage2_1", "stage2_2", "stage2_3", "stage2_4", "stage2_5"]
    assert [w.optional for w in info.weights] == [False, False, True, True, True, True]
    assert info.version and info.options == {"stages": "2_1"}


@pytest.fixture(scope="module")
def weight_files():
    pytest.importorskip("tf_keras")
    import keras_unet3d_ref

    depth3 = keras_unet3d_ref.reference("se3_3")[1]
    return {
        "stage1": keras_unet3d_ref.reference("se3_1")[1],
        "stage2_1": depth3,
        "stage2_2": keras_unet3d_ref.reference("se4_3")[1],
        "stage2_3": depth3,
        "stage2_4": depth3,
        "stage2_5": depth3,
    }


@pytest.mark.tf
def test_random_weights_run_end_to_end(weight_files):
    torch.set_num_threads(1)
    phantom = abdomen_ct(rows=40, cols=44, n_slices=20, pixel_spacing=(2.0, 2.0))
    model = load_model("kidney", weights=[weight_files["stage1"], weight_files["stage2_1"]], device="cpu")
    assert set(model.networks) == {"stage1", "stage2_1"}
    model.cube = 16
    seg = model.predict(phantom.datasets)
    assert seg.mask.shape == (20, 40, 44) and set(np.unique(seg.mask)) <= {0, 1, 2}
    assert set(seg.volumes_ml) == {"kidney", "kidney tumor"}

    # All six stages; the stand-in stage 1 guarantees kidneys so every later network really runs.
    full = load_model("kidney", weights=weight_files, device="cpu", stages="all")
    full.networks["stage1"] = STAND_INS["stage1"]
    full.cube, full.fine_box = 16, (24, 20, 16)
    seg = full.predict(phantom.datasets)
    assert seg.details["kidneys_found"] == ["right", "left"]
    assert set(seg.details["stage_masks"]) == {"stage1", "stage2_1", "stage2_2", "stage2_3", "stage2_4", "stage2_5"}
    for key, mask in seg.details["stage_masks"].items():
        assert mask.shape == seg.mask.shape and set(np.unique(mask)) <= {0, 1, 2}, key
    # Fine-stage output stays inside the regions they crop around the stage-1 kidneys.
    stage1 = seg.details["stage_masks"]["stage1"] > 0
    cols = np.nonzero(stage1.any(axis=(0, 1)))[0]
    for key in ("stage2_2",):
        outside = seg.details["stage_masks"][key][:, :, : cols.min()]
        assert not outside.any(), key
