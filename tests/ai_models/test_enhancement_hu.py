"""enhancement-hu: blood-pool HU decides enhanced vs non-enhanced on synthetic chest CT phantoms."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from ai_models import InputError, available_models, load_model
from ai_models.baselines.enhancement_hu import LABELS, find_blood_pool, sort_slices
from ai_models.baselines.phantoms import chest_ct_phantom, ct_series_datasets

NON, ENH = LABELS


@pytest.fixture(scope="module")
def model():
    return load_model("enhancement-hu", device="cpu")


def test_registered_without_weights():
    info = next(m for m in available_models() if m.name == "enhancement-hu")
    assert info.modalities == ("CT",)
    assert (info.input_kind, info.output_kind) == ("series", "classification")
    assert info.labels == ("Non-Enhanced", "Enhanced")  # the network model's strings
    assert info.header_fix == "ContrastBolusAgent"
    assert not info.needs_weights


def test_random_phantoms_are_all_classified_correctly(model):
    """20 phantoms: 64-256 px, 20-60 slices, noise sd 10-30 HU, random position and proportions."""
    rng = np.random.default_rng(20240611)
    correct, errors = 0, []
    for i in range(20):
        enhanced = bool(i % 2)
        phantom = chest_ct_phantom(
            rng,
            enhanced=enhanced,
            size=int(rng.choice([64, 96, 128, 160, 192, 256])),
            n_slices=int(rng.integers(20, 61)),
            noise_sd=float(rng.uniform(10, 30)),
            feet_first=bool(rng.integers(2)),
        )
        result = model.predict(phantom.datasets)
        correct += result.label == (ENH if enhanced else NON)
        errors.append(abs(result.details["blood_pool_median_hu"] - phantom.blood_hu))
        assert result.confidence > 0.95
        assert result.details["slices_used"] >= 3
    print(f"\nenhancement-hu accuracy on 20 random phantoms: {correct / 20:.0%}; "
          f"blood-pool median within {max(errors):.1f} HU of the truth")
    assert correct == 20
    assert max(errors) < 25.0


@pytest.mark.parametrize("enhanced", [False, True])
def test_measures_the_blood_pool_not_the_spine(model, enhanced):
    """The vertebra's cancellous core (240 HU) must never be taken for blood.

    Without contrast, blood and muscle both measure ~40 HU, so the pool may
    include mediastinal muscle; with contrast it must be the drawn heart and
    vessels.
    """
    rng = np.random.default_rng(7)
    phantom = chest_ct_phantom(rng, enhanced=enhanced, size=160, n_slices=24, noise_sd=20)
    options = dict(model.options)
    checked = 0
    for hu, blood in zip(phantom.hu, phantom.labels):
        mask, _ = find_blood_pool(hu, phantom.pixel_spacing_mm, options)
        if not mask.any():
            continue
        checked += 1
        if enhanced:
            assert (blood[mask] == 1).mean() > 0.9
        else:
            assert (hu[mask] > 150).mean() < 0.01  # no bone in it
    assert checked >= 12


def test_evidence_is_in_spatial_order_and_reports_every_slice(model):
    rng = np.random.default_rng(3)
    phantom = chest_ct_phantom(rng, enhanced=True, size=96, n_slices=30, shuffle=True, feet_first=True)
    result = model.predict(phantom.datasets)
    ordered, how = sort_slices(phantom.datasets)
    assert how == "position along slice normal"
    assert [e.sop_instance_uid for e in result.evidence] == [str(ds.SOPInstanceUID) for ds in ordered]
    assert result.source_sop_instance_uids == [str(ds.SOPInstanceUID) for ds in ordered]
    used = [e for e in result.evidence if e.used]
    assert len(used) == result.details["slices_used"]
    assert all(set(e.probabilities) == {NON, ENH} for e in used)
    assert all(e.probabilities == {} for e in result.evidence if not e.used)
    assert result.details["voxels_used"] > 0 and result.details["blood_pool_area_mm2"] > 300


@pytest.mark.parametrize(
    "enhanced, agent, header_value, agrees",
    [
        (True, "IOPAMIDOL", "IOPAMIDOL", True),
        (False, "IOPAMIDOL", "IOPAMIDOL", False),
        (True, None, None, False),  # enhanced but nothing recorded: the case a header fix is for
        (False, None, None, True),
        (False, "", None, True),
        (False, "NONE", "NONE", True),
    ],
)
def test_header_comparison(model, enhanced, agent, header_value, agrees):
    rng = np.random.default_rng(11)
    phantom = chest_ct_phantom(rng, enhanced=enhanced, size=96, n_slices=20, contrast_agent=agent)
    result = model.predict(phantom.datasets)
    assert result.label == (ENH if enhanced else NON)
    assert result.header_value == header_value
    assert result.agrees_with_header is agrees


def test_confidence_falls_near_the_threshold(model):
    """A blood pool at the threshold (delayed phase) gives a coin toss, not a confident answer."""
    rng = np.random.default_rng(5)
    threshold = model.options["threshold_hu"]
    borderline = chest_ct_phantom(rng, enhanced=True, blood_hu=threshold, size=128, n_slices=24, noise_sd=15)
    result = model.predict(borderline.datasets)
    assert abs(result.details["blood_pool_median_hu"] - threshold) < 15
    assert result.confidence < 0.8
    # and the probability of "enhanced" grows with the blood-pool attenuation
    p = [
        model.predict(chest_ct_phantom(rng, enhanced=True, blood_hu=hu, size=96, n_slices=20).datasets)
        .probabilities[ENH]
        for hu in (60.0, 130.0, 200.0)
    ]
    assert p[0] < p[1] < p[2]


@pytest.mark.parametrize("kind", ["gaussian", "uniform", "air-and-tissue", "water"])
def test_noise_and_non_chest_volumes_are_undetermined(model, kind):
    """No chest in the pixels: an InputError that says 'undetermined', never a label."""
    rng = np.random.default_rng(99)
    shape = (24, 128, 128)
    volume = {
        "gaussian": lambda: rng.normal(0, 300, shape),
        "uniform": lambda: rng.uniform(-1024, 1500, shape),
        "air-and-tissue": lambda: rng.normal(-500, 400, shape),
        "water": lambda: rng.normal(40, 30, shape),
    }[kind]().astype(np.float32)
    with pytest.raises(InputError, match="undetermined"):
        model.predict(ct_series_datasets(volume, pixel_spacing_mm=2.7))


def test_rejects_other_modalities_and_mixed_series(model):
    rng = np.random.default_rng(1)
    phantom = chest_ct_phantom(rng, enhanced=False, size=64, n_slices=20)
    for ds in phantom.datasets:
        ds.Modality = "MR"
    with pytest.raises(InputError, match="CT"):
        model.predict(phantom.datasets)
    a = chest_ct_phantom(rng, enhanced=False, size=64, n_slices=20).datasets
    b = chest_ct_phantom(rng, enhanced=False, size=64, n_slices=20).datasets
    with pytest.raises(InputError, match="one series"):
        model.predict(a + b)


def test_series_read_from_files_and_phantom_files_are_valid_dicom(model, tmp_path):
    rng = np.random.default_rng(12)
    phantom = chest_ct_phantom(rng, enhanced=True, size=96, n_slices=20, contrast_agent="IOHEXOL")
    for i, ds in enumerate(phantom.datasets):
        ds.save_as(tmp_path / f"{i:03d}.dcm", enforce_file_format=True)
    result = model.predict(tmp_path)
    assert result.label == ENH and result.agrees_with_header is True
    if shutil.which("dciodvfy"):
        report = subprocess.run(["dciodvfy", str(tmp_path / "000.dcm")], capture_output=True, text=True)
        assert "Error" not in report.stdout + report.stderr
