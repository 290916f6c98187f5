"""MRI / MRA brain extraction (bet-t1, bet-mra): weight compatibility, geometry and pipeline.

The key/shape table below is written from the spec (MI2RLNET_MODELS.md
Appendix B.2 and section 4.8), not from the network code, so a renamed or
resized layer in the port fails here.  Geometry tests replace the network
with a deterministic intensity threshold through the documented
``model.network`` hook and check that the mask lands on the phantom's brain
voxels in the original (shuffled, anisotropic) series geometry.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from phantoms3d import Ellipsoid, Phantom, dice, make_series
from torch import nn

from ai_models import InputError, ModelError, Segmentation, WeightError, load_model
from ai_models.brain.bet import clean_mask, mra_window

torch.set_num_threads(1)

ROWS, COLS, SLICES = 56, 64, 16
PIXEL_SPACING = (1.1, 0.9)  # (between rows, between columns) mm
SLICE_STEP = 3.0
BRAIN = Ellipsoid((1.0, -2.0, 0.5), (14.0, 12.0, 15.0), 600.0, 1)
BRAIN_ML = 4.0 / 3.0 * np.pi * 14.0 * 12.0 * 15.0 / 1000.0


def bet_checkpoint_spec() -> dict[str, tuple[int, ...]]:
    """Every state_dict entry of the published BET checkpoints with its shape (Appendix B.2)."""
    spec: dict[str, tuple[int, ...]] = {}

    def double_conv(prefix: str, cin: int, mid: int, cout: int) -> None:
        for index, (i, o) in ((0, (cin, mid)), (3, (mid, cout))):
            spec[f"{prefix}.double_conv.{index}.weight"] = (o, i, 3, 3)
            spec[f"{prefix}.double_conv.{index}.bias"] = (o,)
        for index, c in ((1, mid), (4, cout)):
            for name in ("weight", "bias", "running_mean", "running_var"):
                spec[f"{prefix}.double_conv.{index}.{name}"] = (c,)
            spec[f"{prefix}.double_conv.{index}.num_batches_tracked"] = ()

    double_conv("In", 1, 64, 64)
    for k, (cin, cout) in enumerate(((64, 128), (128, 256), (256, 512), (512, 512)), start=1):
        double_conv(f"down{k}.maxpool_conv.1", cin, cout, cout)
    for k, (cin, cout) in enumerate(((1024, 256), (512, 128), (256, 64), (128, 64)), start=1):
        double_conv(f"up{k}.conv", cin, cin // 2, cout)
    spec["Out.conv.weight"] = (1, 64, 1, 1)
    spec["Out.conv.bias"] = (1,)
    return spec


def random_checkpoint(spec: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict shaped like the published file, with plausible BatchNorm statistics."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in spec.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.05
    return state


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("bet") / "bet_t1.pth"
    torch.save({"net": random_checkpoint(bet_checkpoint_spec())}, path)  # the original {"net": ...} form
    return path


class BandThreshold(nn.Module):
    """Stand-in network: logit +10 where the input lies in (low, high), else -10; remembers its inputs."""

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        self.low, self.high = low, high
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        inside = (x > self.low) & (x < self.high)
        return torch.where(inside, 10.0, -10.0)


class Corner(nn.Module):
    """Stand-in network that marks the top-left ``height`` x ``width`` corner of whatever plane it is given."""

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        self.height, self.width = height, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.full_like(x, -10.0)
        out[:, :, : self.height, : self.width] = 10.0
        return out


def head_phantom(shuffle_seed: int = 3) -> Phantom:
    """Axial MR head: bright skull shell, dark gap, brain (label 1) with a dark ventricle, an eye-like island."""
    shapes = [
        Ellipsoid((1.0, -2.0, 0.5), (19.6, 16.8, 21.0), 1500.0),  # skull (bright marrow/fat on T1)
        Ellipsoid((1.0, -2.0, 0.5), (16.5, 14.3, 17.6), 40.0),  # CSF gap between skull and brain
        BRAIN,
        Ellipsoid((1.0, -2.0, 0.5), (4.0, 3.0, 4.5), 150.0, 1),  # ventricle: dark, but brain
        Ellipsoid((23.0, 24.0, 0.5), (4.5, 4.5, 4.5), 600.0),  # island of brain-like intensity
    ]
    return make_series(
        rows=ROWS, cols=COLS, n_slices=SLICES, pixel_spacing=PIXEL_SPACING, slice_step=SLICE_STEP,
        shapes=shapes, background=0.0, modality="MR", intercept=0.0, shuffle_seed=shuffle_seed,
    )


def test_network_matches_appendix_b2() -> None:
    from ai_models.nets.unet_bet import BetUNet

    net = BetUNet()
    expected = bet_checkpoint_spec()
    found = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert len(expected) == 128
    assert found == expected
    assert sum(p.numel() for p in net.parameters()) == 17_266_241


@pytest.mark.parametrize("name", ["bet-t1", "bet-mra"])
def test_original_checkpoint_loads_strictly(name: str, checkpoint_path) -> None:
    model = load_model(name, weights=checkpoint_path, device="cpu")
    saved = torch.load(checkpoint_path, weights_only=True)["net"]
    loaded = model.network.state_dict()
    assert set(loaded) == set(saved)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert not model.network.training


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda s: s.pop("up2.conv.double_conv.4.running_var"),
        lambda s: s.__setitem__("Out.conv.extra", torch.zeros(1)),
        lambda s: s.__setitem__("In.double_conv.0.weight", torch.zeros(64, 3, 3, 3)),
        lambda s: s.__setitem__("module.Out.conv.bias", s.pop("Out.conv.bias")),
    ],
    ids=["missing", "unexpected", "misshapen", "prefixed"],
)
def test_wrong_checkpoint_is_a_weight_error(corrupt, tmp_path) -> None:
    state = random_checkpoint(bet_checkpoint_spec())
    corrupt(state)
    path = tmp_path / "bad.pth"
    torch.save({"net": state}, path)
    with pytest.raises(WeightError):
        load_model("bet-t1", weights=path, device="cpu")


def test_bare_state_dict_is_a_weight_error(tmp_path) -> None:
    path = tmp_path / "bare.pth"
    torch.save(random_checkpoint(bet_checkpoint_spec()), path)  # no {"net": ...} wrapper
    with pytest.raises(WeightError):
        load_model("bet-t1", weights=path, device="cpu")


def test_mask_lands_on_brain_in_original_geometry(checkpoint_path, tmp_path) -> None:
    phantom = head_phantom()
    folder = phantom.write(tmp_path / "series")
    before = sorted(p.name for p in folder.iterdir())
    model = load_model("bet-t1", weights=checkpoint_path, device="cpu")
    model.network = BandThreshold(300.0, 1000.0)

    result = model.predict(folder)

    assert isinstance(result, Segmentation)
    assert result.label_names == {1: "brain"}
    assert result.mask.shape == (SLICES, ROWS, COLS) and result.mask.dtype == np.uint8
    assert result.spacing_mm == pytest.approx((SLICE_STEP, *PIXEL_SPACING))
    truth = phantom.truth_for(result.source_sop_instance_uids)  # frame i must lie on its own instance
    assert dice(result.mask, truth) > 0.95
    # The island passed the threshold but is not the largest component; the ventricle failed it but is a hole.
    assert result.mask[truth == 0].sum() < 0.02 * truth.sum()
    assert result.volumes_ml["brain"] == pytest.approx(BRAIN_ML, rel=0.08)
    assert result.volumes_ml["brain"] == pytest.approx(result.mask.sum() * np.prod(result.spacing_mm) / 1000)
    assert sorted(p.name for p in folder.iterdir()) == before  # no side-effect files next to the input


def test_delivery_order_does_not_matter(checkpoint_path) -> None:
    model = load_model("bet-t1", weights=checkpoint_path, device="cpu")
    model.network = BandThreshold(300.0, 1000.0)
    first = model.predict(head_phantom(shuffle_seed=1).datasets)
    second_phantom = head_phantom(shuffle_seed=2)
    second = model.predict(second_phantom.datasets)
    assert np.array_equal(first.mask, second.mask)
    z = [float(ds.ImagePositionPatient[2]) for ds in second_phantom.datasets]
    by_uid = dict(zip((ds.SOPInstanceUID for ds in second_phantom.datasets), z))
    assert [by_uid[u] for u in second.source_sop_instance_uids] == sorted(z)


@pytest.mark.parametrize("in_plane", ["nifti", "dicom"])
def test_slices_reach_the_network_in_the_chosen_layout(in_plane: str, checkpoint_path) -> None:
    phantom = head_phantom()
    model = load_model("bet-t1", weights=checkpoint_path, device="cpu", in_plane=in_plane, batch_size=3)
    recorder = BandThreshold(300.0, 1000.0)
    model.network = recorder
    result = model.predict(phantom.datasets)

    seen = torch.cat(recorder.seen)[:, 0].numpy()
    stored = phantom.values_for(result.source_sop_instance_uids)
    if in_plane == "nifti":  # NIfTI voxel order of a dcm2niix conversion: [column, flipped row]
        expected = np.stack([np.flipud(s).T for s in stored])
    else:
        expected = stored
    np.testing.assert_array_equal(seen, expected)


@pytest.mark.parametrize("in_plane", ["nifti", "dicom"])
def test_network_plane_maps_back_onto_the_image(in_plane: str, checkpoint_path) -> None:
    """A position-dependent network output must come back on the matching pixels (no transpose or flip slip)."""
    model = load_model("bet-t1", weights=checkpoint_path, device="cpu", in_plane=in_plane)
    model.network = Corner(8, 12)
    result = model.predict(head_phantom().datasets)
    expected = np.zeros((SLICES, ROWS, COLS), np.uint8)
    if in_plane == "nifti":  # network rows are image columns, network columns are image rows bottom-up
        expected[:, ROWS - 12 :, :8] = 1
    else:
        expected[:, :8, :12] = 1
    np.testing.assert_array_equal(result.mask, expected)


def test_mra_window_follows_the_reference_formula() -> None:
    volume = np.arange(200, dtype=np.float32).reshape(2, 10, 10)
    image, (low, high) = mra_window(volume)
    assert (low, high) == pytest.approx((np.percentile(volume, 40), np.percentile(volume, 98.5)))
    assert image.dtype == np.float32
    assert image.min() == 0.0 and image.max() <= 1.0
    v = 150.0
    assert image.flat[150] == pytest.approx((v - low) / (high - low + 1.0))
    assert image.flat[:80].max() == 0.0  # below P40 clips to 0


def test_mra_model_feeds_windowed_slices(checkpoint_path) -> None:
    phantom = head_phantom()
    model = load_model("bet-mra", weights=checkpoint_path, device="cpu", in_plane="dicom")
    recorder = BandThreshold(0.0, 0.95)
    model.network = recorder
    result = model.predict(phantom.datasets)
    expected, window = mra_window(phantom.values_for(result.source_sop_instance_uids))
    np.testing.assert_allclose(torch.cat(recorder.seen)[:, 0].numpy(), expected)
    assert result.details["window"] == pytest.approx(window)


def test_clean_mask_keeps_largest_component_and_fills_holes() -> None:
    mask = np.zeros((5, 30, 30), bool)
    mask[:, 5:20, 5:20] = True
    mask[2, 10:13, 10:13] = False  # enclosed hole
    mask[1:4, 24:29, 24:29] = True  # smaller island
    mask[2, 2, 2:4] = True  # speck removed by the opening
    out = clean_mask(mask)
    expected = np.zeros_like(out)
    expected[:, 5:20, 5:20] = 1
    np.testing.assert_array_equal(out, expected)


def test_threshold_option_applies_to_the_probability(checkpoint_path) -> None:
    class Constant(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full_like(x, 0.5)  # sigmoid(0.5) = 0.622

    phantom = head_phantom()
    for threshold, expect_any in ((0.6, True), (0.65, False)):
        model = load_model("bet-t1", weights=checkpoint_path, device="cpu", threshold=threshold)
        model.network = Constant()
        assert bool(model.predict(phantom.datasets).mask.any()) is expect_any


def test_random_weights_end_to_end(checkpoint_path) -> None:
    phantom = head_phantom()
    model = load_model("bet-t1", weights=checkpoint_path, device="cpu")
    result = model.predict(phantom.datasets)
    assert result.mask.shape == (SLICES, ROWS, COLS)
    assert set(np.unique(result.mask)) <= {0, 1}
    assert len(result.source_sop_instance_uids) == SLICES
    assert result.volumes_ml["brain"] == pytest.approx(result.mask.sum() * np.prod(result.spacing_mm) / 1000)
    assert result.model == "bet-t1" and result.details["threshold"] == 0.5


def test_unknown_option_values_are_rejected(checkpoint_path) -> None:
    with pytest.raises(ModelError, match="in_plane"):
        load_model("bet-t1", weights=checkpoint_path, device="cpu", in_plane="sideways")


def test_a_ct_series_is_refused(checkpoint_path) -> None:
    ct = make_series(rows=32, cols=32, n_slices=4, shapes=[BRAIN], modality="CT", shuffle_seed=0)
    model = load_model("bet-t1", weights=checkpoint_path, device="cpu")
    with pytest.raises(InputError, match="MR"):
        model.predict(ct.datasets)
