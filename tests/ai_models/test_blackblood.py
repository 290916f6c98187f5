"""Black-blood pipeline: geometry with a stand-in network, the reproduced window, refusals, a random-weight run."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from phantoms3d import Ellipsoid, dice, make_series
from torch import nn

from ai_models import InputError, get_info, load_model
from ai_models.brain.blackblood import BlackbloodSegmentation
from ai_models.volume import read_volume


class BelowThreshold(nn.Module):
    """Stand-in network: class 1 (vessel) where the normalised input is below ``edge``, as a 2-channel softmax."""

    def __init__(self, edge: float) -> None:
        super().__init__()
        self.edge = edge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = (x < self.edge).float()
        return torch.cat([1 - fg, fg], dim=1)


# Tissue at 20 (the window top), a dark "vessel" at -60: the edge at -20 is halfway between.
STAND_IN = BelowThreshold((-20.0 + 100.0) / 120.0)


def _head(**kwargs):
    args = dict(
        rows=48, cols=60, n_slices=40, pixel_spacing=(1.2, 1.1), slice_step=2.0, shuffle_seed=2,
        modality="MR", intercept=0.0, background=0.0,
        shapes=[Ellipsoid((0, 0, 0), (40, 30, 1e4), 20.0), Ellipsoid((8, -4, 0), (14, 18, 30), -60.0, 1)],
    )
    args.update(kwargs)
    return make_series(**args)


@pytest.mark.parametrize(
    "layout", [{}, {"row_dir": (-1, 0, 0), "slice_step": -2.0}], ids=["axial", "columns-to-right-feet-first"]
)
def test_vessel_lands_on_the_phantom_in_the_original_geometry(layout):
    phantom = _head(**layout)
    seg = BlackbloodSegmentation.with_network(STAND_IN).predict(phantom.datasets)
    truth = phantom.truth_for(seg.source_sop_instance_uids)
    assert seg.mask.shape == truth.shape == (40, 48, 60)
    assert dice(seg.mask == 1, truth == 1) > 0.95
    assert seg.label_names == {1: "vessel"}
    volume = read_volume(phantom.datasets)
    # The structure is at patient left (positive x).
    z, y, x = (float(a.mean()) for a in np.nonzero(seg.mask))
    assert volume.to_sitk().TransformContinuousIndexToPhysicalPoint((x, y, z))[0] > 3


def test_preprocessing_reproduces_the_original_window():
    raw = np.zeros((40, 48, 60), dtype=np.float32)
    raw[:, :, :30] = 500.0
    raw[:, :, 30:] = -40.0
    x = BlackbloodSegmentation.preprocess(raw)
    assert x.shape == (20, 24, 30)
    inner = x[:, :-1]  # scipy's 'constant' zoom (as in the original) can set the last row plane to 0 -> 0.83
    assert inner[:, :, :10].min() == pytest.approx(1.0)  # anything above 20 saturates
    assert inner[:, :, 20:] == pytest.approx(0.5)  # -40 -> (-40 + 100) / 120


def test_caveat_flags_the_window_and_small_series_are_refused():
    info = get_info("blackblood")
    assert any("[-100, 20]" in c and "saturates" in c for c in info.caveats)
    assert info.modalities == ("MR",) and info.input_kind == "series" and info.output_kind == "segmentation"
    with pytest.raises(InputError, match="at least 16 voxels"):
        BlackbloodSegmentation.with_network(STAND_IN).predict(_head(n_slices=24).datasets)


@pytest.mark.tf
def test_random_weights_run_end_to_end():
    pytest.importorskip("tf_keras")
    import keras_unet3d_ref

    torch.set_num_threads(1)
    model = load_model("blackblood", weights=keras_unet3d_ref.reference("in_unet3d")[1], device="cpu")
    seg = model.predict(_head(n_slices=32, rows=32, cols=36).datasets)
    assert seg.mask.shape == (32, 32, 36) and set(np.unique(seg.mask)) <= {0, 1}
    assert set(seg.volumes_ml) == {"vessel"}
