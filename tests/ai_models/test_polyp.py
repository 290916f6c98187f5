"""Polyp segmentation: weight compatibility, BatchNorm modes, threshold semantics and geometry.

The key/shape table is written from the spec (MI2RLNET_MODELS.md Appendix
B.1 and section 4.7), independently of the network code.  Geometry tests
use a non-square (480 x 640) synthetic VL Endoscopic Image and replace the
network through the documented ``model.network`` hook, so that the
reference's transposed resize or a channel-order slip would show.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from torch import nn

from ai_models import InputError, ModelError, Segmentation, WeightError, load_model
from ai_models.abdomen.polyp import NETWORK_SIZE, use_batch_statistics
from ai_models.nets.unet_polyp import PolypUNet

torch.set_num_threads(1)

VL_ENDOSCOPIC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.1"
ROWS, COLS = 480, 640
BLOB_CENTER, BLOB_RADII = (150.0, 450.0), (70.0, 110.0)  # (row, col) centre and radii, off-centre


def polyp_checkpoint_spec() -> dict[str, tuple[int, ...]]:
    """Every state_dict entry of the published polyp checkpoint with its shape (Appendix B.1)."""
    spec: dict[str, tuple[int, ...]] = {}

    def cbr(prefix: str, cin: int, cout: int) -> None:
        spec[f"{prefix}.0.weight"] = (cout, cin, 3, 3)
        spec[f"{prefix}.0.bias"] = (cout,)
        for name in ("weight", "bias", "running_mean", "running_var"):
            spec[f"{prefix}.1.{name}"] = (cout,)
        spec[f"{prefix}.1.num_batches_tracked"] = ()

    def convt(prefix: str, c: int) -> None:
        spec[f"{prefix}.weight"] = (c, c, 2, 2)
        spec[f"{prefix}.bias"] = (c,)

    cbr("encoder1.0", 3, 64)
    cbr("encoder1.1", 64, 64)
    for k, (cin, cout) in zip((2, 3, 4), ((64, 128), (128, 256), (256, 512))):
        cbr(f"encoder{k}.1", cin, cout)
        cbr(f"encoder{k}.2", cout, cout)
    cbr("bridge.1", 512, 1024)
    cbr("bridge.2", 1024, 512)
    convt("upconv", 512)
    for k, (cin, mid, cout) in zip((4, 3, 2), ((1024, 512, 256), (512, 256, 128), (256, 128, 64))):
        cbr(f"decoder{k}.0", cin, mid)
        cbr(f"decoder{k}.1", mid, cout)
        convt(f"decoder{k}.2", cout)
    cbr("decoder1.0", 128, 64)
    cbr("decoder1.1", 64, 64)
    spec["fc.weight"] = (1, 64, 1, 1)
    spec["fc.bias"] = (1,)
    return spec


def random_checkpoint(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in polyp_checkpoint_spec().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(500)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.05
    return state


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("polyp") / "weight.pth"
    torch.save({"net": random_checkpoint()}, path)  # the original {"net": ...} form
    return path


def blob_truth() -> np.ndarray:
    r, c = np.mgrid[:ROWS, :COLS]
    return ((r - BLOB_CENTER[0]) / BLOB_RADII[0]) ** 2 + ((c - BLOB_CENTER[1]) / BLOB_RADII[1]) ** 2 <= 1.0


def endoscopy_image(rgb: np.ndarray) -> Dataset:
    """A VL Endoscopic Image instance holding ``rgb`` (rows, cols, 3) uint8."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = VL_ENDOSCOPIC_IMAGE_STORAGE
    ds.SOPClassUID = VL_ENDOSCOPIC_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "ES"
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    return ds


def reddish_polyp_image() -> Dataset:
    """Dull mucosa with a bright red polyp: only the red channel separates them."""
    rgb = np.empty((ROWS, COLS, 3), np.uint8)
    rgb[:] = (110, 70, 60)
    rgb[blob_truth()] = (230, 80, 70)
    return endoscopy_image(rgb)


class RedThreshold(nn.Module):
    """Stand-in network: logit +10 where the given channel exceeds 0.7 (of 1), else -10; keeps its input."""

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.channel = channel
        self.seen: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x.clone()
        return torch.where(x[:, self.channel : self.channel + 1] > 0.7, 10.0, -10.0)


class ConstantLogit(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x[:, :1], self.value)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_network_matches_appendix_b1() -> None:
    net = PolypUNet()
    found = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    expected = polyp_checkpoint_spec()
    assert len(expected) == 136
    assert found == expected
    assert sum(p.numel() for p in net.parameters()) == 23_381_121


def test_original_checkpoint_loads_strictly(checkpoint_path) -> None:
    model = load_model("polyp", weights=checkpoint_path, device="cpu")
    saved = torch.load(checkpoint_path, weights_only=True)["net"]
    loaded = model.network.state_dict()
    assert set(loaded) == set(saved)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda s: s.pop("decoder3.2.weight"),
        lambda s: s.__setitem__("fc.extra", torch.zeros(1)),
        lambda s: s.__setitem__("upconv.weight", torch.zeros(512, 256, 2, 2)),
    ],
    ids=["missing", "unexpected", "misshapen"],
)
def test_wrong_checkpoint_is_a_weight_error(corrupt, tmp_path) -> None:
    state = random_checkpoint()
    corrupt(state)
    path = tmp_path / "bad.pth"
    torch.save({"net": state}, path)
    with pytest.raises(WeightError):
        load_model("polyp", weights=path, device="cpu")


def test_reference_batchnorm_uses_batch_statistics_without_drifting() -> None:
    torch.manual_seed(0)
    net = PolypUNet()
    net.load_state_dict(random_checkpoint(seed=1))
    x = torch.rand(1, 3, 64, 48)
    train_mode = copy.deepcopy(net).train()(x)  # what the reference computed (it never called eval())
    eval_mode = copy.deepcopy(net).eval()(x)
    before = {k: v.clone() for k, v in net.state_dict().items()}

    net.eval()
    use_batch_statistics(net)
    with torch.inference_mode():
        out = net(x)
        net(torch.rand(1, 3, 64, 48))  # a second call must not change anything either

    torch.testing.assert_close(out, train_mode.detach())
    assert not torch.allclose(out, eval_mode.detach(), atol=1e-3)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bn_mode_option_selects_the_behaviour(checkpoint_path) -> None:
    def bn_training(model) -> set[bool]:
        return {m.training for m in model.network.modules() if isinstance(m, nn.BatchNorm2d)}

    assert bn_training(load_model("polyp", weights=checkpoint_path, device="cpu")) == {True}
    assert bn_training(load_model("polyp", weights=checkpoint_path, device="cpu", bn_mode="eval")) == {False}
    with pytest.raises(ModelError, match="bn_mode"):
        load_model("polyp", weights=checkpoint_path, device="cpu", bn_mode="train")


@pytest.mark.parametrize("channel_order, red_channel", [("bgr", 2), ("rgb", 0)])
def test_mask_lands_on_the_blob_at_original_resolution(channel_order: str, red_channel: int, checkpoint_path) -> None:
    model = load_model("polyp", weights=checkpoint_path, device="cpu", channel_order=channel_order)
    network = RedThreshold(red_channel)
    model.network = network
    ds = reddish_polyp_image()

    result = model.predict(ds)

    assert isinstance(result, Segmentation)
    assert result.label_names == {1: "polyp"}
    assert result.mask.shape == (1, ROWS, COLS) and result.mask.dtype == np.uint8
    assert result.source_sop_instance_uids == [ds.SOPInstanceUID]
    assert dice(result.mask[0], blob_truth()) > 0.95
    assert network.seen is not None and network.seen.shape == (1, 3, NETWORK_SIZE, NETWORK_SIZE)
    assert network.seen[0, red_channel].max() == pytest.approx(230 / 255, abs=1e-6)


def test_threshold_is_a_probability_not_a_logit(checkpoint_path) -> None:
    ds = reddish_polyp_image()
    model = load_model("polyp", weights=checkpoint_path, device="cpu")  # default threshold 0.7
    model.network = ConstantLogit(0.8)  # logit 0.8 > 0.7, but probability 0.69 < 0.7
    assert not model.predict(ds).mask.any()
    reference_equivalent = load_model("polyp", weights=checkpoint_path, device="cpu", threshold=0.668)
    reference_equivalent.network = ConstantLogit(0.8)
    assert reference_equivalent.predict(ds).mask.all()


def test_several_images_give_one_frame_each(checkpoint_path, tmp_path) -> None:
    model = load_model("polyp", weights=checkpoint_path, device="cpu")
    model.network = RedThreshold(2)
    images = [reddish_polyp_image(), reddish_polyp_image()]
    for i, ds in enumerate(images):
        ds.save_as(tmp_path / f"es{i}.dcm", enforce_file_format=True)
    result = model.predict(tmp_path)
    assert result.mask.shape == (2, ROWS, COLS)
    assert sorted(result.source_sop_instance_uids) == sorted(ds.SOPInstanceUID for ds in images)


def test_grayscale_and_mixed_sizes_are_input_errors(checkpoint_path) -> None:
    model = load_model("polyp", weights=checkpoint_path, device="cpu")
    model.network = RedThreshold(2)
    gray = reddish_polyp_image()
    gray.SamplesPerPixel = 1
    gray.PhotometricInterpretation = "MONOCHROME2"
    del gray.PlanarConfiguration
    gray.PixelData = np.zeros((ROWS, COLS), np.uint8).tobytes()
    with pytest.raises(InputError, match="colour"):
        model.predict(gray)
    small = endoscopy_image(np.zeros((64, 80, 3), np.uint8))
    with pytest.raises(InputError, match="sizes"):
        model.predict([reddish_polyp_image(), small])


def test_random_weights_end_to_end(checkpoint_path) -> None:
    """The real network at the reference's 512 x 512, on a non-square image; BatchNorm buffers must not drift."""
    model = load_model("polyp", weights=checkpoint_path, device="cpu")
    before = {k: v.clone() for k, v in model.network.state_dict().items()}
    result = model.predict(reddish_polyp_image())
    assert result.mask.shape == (1, ROWS, COLS)
    assert set(np.unique(result.mask)) <= {0, 1}
    assert 0.0 <= result.details["max_probability"][0] <= 1.0
    after = model.network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
