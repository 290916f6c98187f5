"""Liver pipeline: geometry with a stand-in network, preprocessing, refusals, and a random-weight run."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from phantoms3d import Ellipsoid, dice, make_series
from torch import nn

from ai_models import InputError, get_info, load_model
from ai_models.abdomen.liver import MEAN, STD, LiverSegmentation
from ai_models.volume import read_volume


class AboveThreshold(nn.Module):
    """Stand-in network: class 1 where the normalised input exceeds ``edge``, as a 2-channel softmax."""

    def __init__(self, edge: float) -> None:
        super().__init__()
        self.edge = edge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = (x > self.edge).float()
        return torch.cat([1 - fg, fg], dim=1)


# Body at 10 HU (the window floor) and liver at 150 HU: the edge at 80 HU is halfway between.
STAND_IN = AboveThreshold((80.0 - MEAN) / STD)


def _abdomen(**kwargs):
    args = dict(
        rows=48, cols=60, n_slices=36, pixel_spacing=(1.3, 1.1), slice_step=3.0, shuffle_seed=1,
        shapes=[Ellipsoid((0, 0, 0), (40, 30, 1e4), 10.0), Ellipsoid((-12, 4, 5), (22, 16, 30), 150.0, 1)],
    )
    args.update(kwargs)
    return make_series(**args)


@pytest.mark.parametrize(
    "layout",
    [{}, {"row_dir": (-1, 0, 0), "slice_step": -3.0}, {"col_dir": (0, -1, 0), "slice_step": 2.5}],
    ids=["axial", "columns-to-right-feet-first", "rows-to-anterior"],
)
def test_liver_lands_on_the_phantom_in_the_original_geometry(layout):
    phantom = _abdomen(**layout)
    seg = LiverSegmentation.with_network(STAND_IN).predict(phantom.datasets)
    truth = phantom.truth_for(seg.source_sop_instance_uids)
    assert seg.mask.shape == truth.shape == (36, 48, 60)
    assert dice(seg.mask == 1, truth == 1) > 0.95
    assert seg.label_names == {1: "liver"}
    volume = read_volume(phantom.datasets)
    assert seg.spacing_mm == pytest.approx(volume.spacing)
    assert seg.volumes_ml["liver"] == pytest.approx((seg.mask == 1).sum() * volume.voxel_volume_ml)
    # Resampling to 5 mm and back loses a little at the caps; the overlap above guards the geometry.
    assert seg.volumes_ml["liver"] == pytest.approx((truth == 1).sum() * volume.voxel_volume_ml, rel=0.1)
    # The liver sits at patient right (negative x).
    z, y, x = (float(a.mean()) for a in np.nonzero(seg.mask))
    assert volume.to_sitk().TransformContinuousIndexToPhysicalPoint((x, y, z))[0] < -5


def test_preprocessing_resamples_to_5mm_and_256_with_rows_and_columns_in_order():
    model = LiverSegmentation.with_network(STAND_IN)
    raw = np.full((36, 48, 60), 10.0, dtype=np.float32)
    raw[:, :24, :] = 500.0  # top half bright: the row axis must stay the row axis
    x = model.preprocess(raw, slice_spacing=3.0)
    assert x.shape == (round(36 * 3.0 / 5.0), 256, 256)
    assert x[:, :100].min() == pytest.approx((190 - MEAN) / STD)  # clipped to 190 HU
    assert x[:, 160:].max() == pytest.approx((10 - MEAN) / STD)


def test_short_coverage_and_wrong_modality_are_refused():
    with pytest.raises(InputError, match="needs at least 16"):
        LiverSegmentation.with_network(STAND_IN).predict(_abdomen(n_slices=20).datasets)
    mr = _abdomen()
    for ds in mr.datasets:
        ds.Modality = "MR"
    with pytest.raises(InputError, match="takes CT"):
        LiverSegmentation.with_network(STAND_IN).predict(mr.datasets)


def test_registration():
    info = get_info("liver")
    assert info.modalities == ("CT",) and info.input_kind == "series" and info.output_kind == "segmentation"
    assert [w.key for w in info.weights] == ["weights"] and info.version


@pytest.mark.tf
def test_random_weights_run_end_to_end():
    pytest.importorskip("tf_keras")
    import keras_unet3d_ref

    torch.set_num_threads(1)
    model = load_model("liver", weights=keras_unet3d_ref.reference("in_unet3d")[1], device="cpu")
    model.plane = 32  # the network is fully convolutional; 256 is the trained size
    seg = model.predict(_abdomen().datasets)
    assert seg.mask.shape == (36, 48, 60) and set(np.unique(seg.mask)) <= {0, 1}
    assert set(seg.volumes_ml) == {"liver"}
