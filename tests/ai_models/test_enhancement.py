"""Enhanced-CT classifier: channel formulas, slice order and selection, header logic, predict() vs Keras."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ai_models.chest.enhancement import (
    LABELS,
    agent_given,
    contrast_agent,
    middle_indices,
    order_slices,
    slice_channels,
)
from ai_models.errors import InputError, ModelError
from ai_models.registry import get_info, load_model

AXIAL = [1, 0, 0, 0, 1, 0]


def make_ct_slice(stored: np.ndarray, z: float = 0.0, *, series: str = "1.2.3", number: int = 1,
                  orientation=AXIAL, **attrs) -> Dataset:
    """An in-memory CT slice with signed 16-bit stored values and HU = stored - 1024 by default."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = series
    ds.Modality = "CT"
    ds.InstanceNumber = number
    ds.ImageOrientationPatient = list(orientation)
    normal = np.cross(orientation[:3], orientation[3:])
    ds.ImagePositionPatient = list(map(float, normal * z))
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = stored.astype(np.int16).tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def constant_slice(hu: float, **attrs) -> Dataset:
    """A uniform slice; slope 0.5 so that half-HU values such as 181.5 are representable."""
    return make_ct_slice(np.full((32, 32), (hu + 1024) * 2), RescaleSlope=0.5, **attrs)


def test_registration_describes_the_header_fix():
    info = get_info("enhancement")
    assert info.task == "enhanced vs non-enhanced chest CT"
    assert info.labels == ("Non-Enhanced", "Enhanced")
    assert info.modalities == ("CT",) and info.input_kind == "series" and info.output_kind == "classification"
    assert info.header_fix == "ContrastBolusAgent"
    assert [(w.key, w.format) for w in info.weights] == [("weights", "keras_h5")]
    assert info.options["channel_formula"] == "head"


@pytest.mark.parametrize(
    ("formula", "hu", "windowed"),
    [
        ("head", 100, 0.0), ("head", 1112, 0.5), ("head", 3000, 1.0), ("head", -500, 0.0),
        ("pre-head", -1024, 0.0), ("pre-head", 1024, 0.5), ("pre-head", 3500, 1.0),
        ("l550-w737", 181.5, 0.0), ("l550-w737", 550, 0.5), ("l550-w737", 918.5, 1.0),
    ],
)
def test_channel_formulas(formula, hu, windowed):
    channels = slice_channels(constant_slice(hu), formula)
    assert channels.shape == (2, 256, 256) and channels.dtype == np.float32
    np.testing.assert_allclose(channels[0], windowed, atol=1e-6)
    # The full-range channel is the same for every formula and is not clipped.
    np.testing.assert_allclose(channels[1], (hu + 1024) / 4096, atol=1e-6)


def test_swap_puts_the_full_range_channel_first():
    plain, swapped = slice_channels(constant_slice(1112)), slice_channels(constant_slice(1112), swap_channels=True)
    np.testing.assert_array_equal(swapped, plain[::-1])


def test_padding_value_is_zeroed_in_the_full_range_channel_only():
    ds = make_ct_slice(np.full((16, 16), -2000), RescaleIntercept=0)
    channels = slice_channels(ds)
    np.testing.assert_allclose(channels[1], (0 + 0 + 1024) / 4096)  # stored -2000 -> 0 before the formula
    np.testing.assert_allclose(channels[0], 0.0)


def test_slope_is_applied():
    ds = make_ct_slice(np.full((16, 16), 100), RescaleSlope=2, RescaleIntercept=-1024)
    np.testing.assert_allclose(slice_channels(ds)[1], (200 - 1024 + 1024) / 4096)


def test_downscale_averages_areas():
    # A 512x512 checkerboard of HU 0 / 1000 averages to HU 500 per 2x2 block.
    checker = (np.indices((512, 512)).sum(axis=0) % 2) * 1000 + 1024
    channels = slice_channels(make_ct_slice(checker))
    np.testing.assert_allclose(channels[1], (500 + 1024) / 4096, atol=1e-6)
    np.testing.assert_allclose(channels[0], np.mean([0.0, (1000 - 100) / 2024]), atol=1e-6)


def test_bad_input_and_bad_formula():
    ds = constant_slice(0)
    del ds.RescaleIntercept
    with pytest.raises(InputError, match="Rescale Intercept"):
        slice_channels(ds)
    with pytest.raises(ModelError, match="channel_formula"):
        slice_channels(constant_slice(0), "readme")


def test_slices_are_ordered_along_the_normal_not_by_list_order():
    sagittal = [0, 1, 0, 0, 0, -1]  # normal (-1, 0, 0); make_ct_slice puts slice z at z * normal
    shuffled = [constant_slice(0, z=z, orientation=sagittal, number=n) for n, z in [(1, 5.0), (2, -3.0), (3, 1.0)]]
    assert [ds.InstanceNumber for ds in order_slices(shuffled)] == [2, 3, 1]
    for ds in shuffled:
        del ds.ImagePositionPatient
    assert [ds.InstanceNumber for ds in order_slices(shuffled)] == [1, 2, 3]


@pytest.mark.parametrize(
    ("count", "fraction", "cap", "expected"),
    [
        (9, 1 / 3, 0, [3, 4, 5]), (10, 1 / 3, 0, [3, 4, 5]), (1, 1 / 3, 0, [0]), (2, 1 / 3, 0, [0]),
        (5, 1.0, 0, [0, 1, 2, 3, 4]), (30, 1 / 3, 4, [10, 13, 16, 19]), (0, 1 / 3, 0, []),
    ],
)
def test_middle_indices(count, fraction, cap, expected):
    assert middle_indices(count, fraction, cap) == expected


def test_contrast_agent_header():
    slices = [constant_slice(0, ContrastBolusAgent=v) for v in ["OMNIPAQUE 350", "", "OMNIPAQUE 350", "IOMERON"]]
    assert contrast_agent(slices) == ("OMNIPAQUE 350", ["IOMERON", "OMNIPAQUE 350"])
    assert contrast_agent([constant_slice(0)]) == (None, [])
    assert agent_given("Omnipaque") and not agent_given("None") and not agent_given(None) and not agent_given(" ")


def synthetic_series(agent: str | None = "OMNIPAQUE 350") -> list[Dataset]:
    """Nine axial slices in shuffled list order; a contrast-filled 'aorta' whose size varies by slice."""
    rng = np.random.default_rng(21)
    yy, xx = np.mgrid[0:96, 0:96]
    body = ((yy - 48) / 40.0) ** 2 + ((xx - 48) / 44.0) ** 2 < 1
    out = []
    for n, z in enumerate([4, 0, 8, 2, 6, 1, 7, 3, 5]):
        hu = np.where(body, 40.0, -1000.0) + rng.normal(0, 20, body.shape)
        aorta = ((yy - 40) ** 2 + (xx - 55 - z) ** 2) < (5 + z) ** 2
        hu[aorta] = 300 + 40 * z
        attrs = {"ContrastBolusAgent": agent} if agent is not None else {}
        out.append(make_ct_slice(np.rint(hu + 1024), z=2.5 * z, number=n + 1, **attrs))
    return out


@pytest.fixture(scope="module")
def keras_enhancement(tmp_path_factory):
    """A randomised Keras enhancement network at 256x256 (BN calibrated on the series) and its full-model file."""
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    pytest.importorskip("tf_keras")
    from test_resnet50_port import build_reference

    series = synthetic_series()
    inputs = np.stack([slice_channels(ds) for ds in series]).transpose(0, 2, 3, 1)
    model = build_reference(2, 2, np.random.default_rng(8), size=256, calibration=inputs)
    path = tmp_path_factory.mktemp("enhancement") / "enhancement_full.h5"
    model.save(path)
    reference = {ds.SOPInstanceUID: probs for ds, probs in zip(series, model.predict(inputs, verbose=0))}
    return path, series, reference


@pytest.mark.tf
def test_series_decision_is_the_mean_over_the_middle_third(keras_enhancement):
    torch.set_num_threads(1)
    path, series, reference = keras_enhancement
    assert np.ptp(np.stack(list(reference.values())), axis=0).max() > 0.01  # slices really differ (by far more than the 1e-4 tolerance below)
    model = load_model("enhancement", weights=path, device="cpu", batch_size=2)
    result = model.predict(series)
    by_z = sorted(series, key=lambda ds: ds.ImagePositionPatient[2])
    assert result.source_sop_instance_uids == [ds.SOPInstanceUID for ds in by_z]
    middle = [ds.SOPInstanceUID for ds in by_z[3:6]]
    assert [e.sop_instance_uid for e in result.evidence] == middle and all(e.used for e in result.evidence)
    for e in result.evidence:
        probs = np.array([e.probabilities[name] for name in LABELS])
        assert np.abs(probs - reference[e.sop_instance_uid]).max() < 1e-4
    mean = np.mean([reference[uid] for uid in middle], axis=0)
    assert np.abs(np.array([result.probabilities[name] for name in LABELS]) - mean).max() < 1e-4
    assert result.label == LABELS[int(np.argmax(mean))]
    assert result.header_value == "OMNIPAQUE 350"
    assert result.agrees_with_header is (result.label == "Enhanced")
    assert result.details["slices_total"] == 9 and result.details["slices_used"] == 3


@pytest.mark.tf
def test_all_slices_can_be_inspected_without_changing_the_decision(keras_enhancement):
    path, series, reference = keras_enhancement
    full = load_model("enhancement", weights=path, device="cpu", infer_all_slices=True, batch_size=4).predict(series)
    assert len(full.evidence) == 9 and sum(e.used for e in full.evidence) == 3
    used = [reference[e.sop_instance_uid] for e in full.evidence if e.used]
    assert np.abs(np.array([full.probabilities[name] for name in LABELS]) - np.mean(used, axis=0)).max() < 1e-4
    for e in full.evidence:
        probs = np.array([e.probabilities[name] for name in LABELS])
        assert np.abs(probs - reference[e.sop_instance_uid]).max() < 1e-4


@pytest.mark.tf
def test_missing_agent_flips_the_agreement(keras_enhancement):
    path, _, _ = keras_enhancement
    model = load_model("enhancement", weights=path, device="cpu")
    result = model.predict(synthetic_series(agent=None)[:3])
    assert result.header_value is None
    assert result.agrees_with_header is (result.label == "Non-Enhanced")


@pytest.mark.tf
def test_bad_options_and_mixed_series(keras_enhancement):
    path, series, _ = keras_enhancement
    with pytest.raises(ModelError, match="channel_formula"):
        load_model("enhancement", weights=path, device="cpu", channel_formula="readme")
    with pytest.raises(ModelError, match="batch_size"):
        load_model("enhancement", weights=path, device="cpu", batch_size=0)
    model = load_model("enhancement", weights=path, device="cpu")
    other = constant_slice(0, series="9.9.9")
    with pytest.raises(InputError, match="one series"):
        model.predict([*series[:2], other])
    localizer = constant_slice(0, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    result = model.predict([*series[:3], localizer])
    assert result.details["localizers_skipped"] == 1 and len(result.source_sop_instance_uids) == 3
