"""``ai-models`` CLI and ``describe_models``: listing, weight discovery and checks, run, exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from test_radiograph import make_radiograph

from ai_models.catalog import describe_models
from ai_models.cli import EXIT_INPUT, EXIT_OK, EXIT_USAGE, EXIT_WEIGHTS, main

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def write_small_keras_h5(path: Path) -> Path:
    """A well-formed legacy Keras weight file holding one Dense layer: it opens, but fits no ResNet50."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array(["dense"], dtype=h5py.string_dtype())
        group = f.create_group("dense")
        group.attrs["weight_names"] = np.array(["dense/kernel:0", "dense/bias:0"], dtype=h5py.string_dtype())
        group.create_dataset("dense/kernel:0", data=np.zeros((4, 2), np.float32))
        group.create_dataset("dense/bias:0", data=np.zeros(2, np.float32))
    return path


def write_radiograph(path: Path, view: str = "PA") -> Path:
    rng = np.random.default_rng(len(str(path)))
    ds = make_radiograph(rng.integers(0, 4000, (48, 40)).astype(np.uint16), ViewPosition=view)
    ds.SOPClassUID = CR_STORAGE
    ds.file_meta.MediaStorageSOPClassUID = CR_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def by_name(models: list[dict]) -> dict[str, dict]:
    return {m["name"]: m for m in models}


def test_describe_models_without_weights():
    models = by_name(describe_models(None))
    for name in ("enhancement", "chest-view"):
        m = models[name]
        assert m["available"] is False and m["problem"] is None
        assert [(w["key"], w["format"], w["found"], w["path"]) for w in m["weights"]] == [("weights", "keras_h5", False, None)]
    assert models["enhancement"]["header_fix"] == "ContrastBolusAgent"
    assert models["chest-view"]["labels"] == ["PA", "Lateral", "Others"]
    assert models["enhancement"]["options"]["channel_formula"] == "head"


def test_list_text(capsys):
    assert main(["list"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "enhancement  v" in out and "chest-view  v" in out
    assert "header fix: ContrastBolusAgent" in out and "modalities: CR, DX; input: image" in out


def test_list_finds_weights_by_convention_and_reports_broken_files(tmp_path, capsys):
    write_small_keras_h5(tmp_path / "enhancement" / "weights.h5")
    (tmp_path / "chest-view").mkdir()
    (tmp_path / "chest-view" / "weights.hdf5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    assert main(["list", "--json", "--weights-dir", str(tmp_path)]) == EXIT_WEIGHTS  # a present file is broken
    models = by_name(json.loads(capsys.readouterr().out)["models"])
    enh, view = models["enhancement"]["weights"][0], models["chest-view"]["weights"][0]
    assert enh["found"] and enh["valid"] and enh["path"] == str(tmp_path / "enhancement" / "weights.h5")
    assert models["enhancement"]["available"] is True  # opens fine; only --check-load builds the network
    assert view["found"] and view["valid"] is False and "HDF5" in view["problem"]
    assert models["chest-view"]["available"] is False


def test_explicit_weight_wins_over_the_convention(tmp_path, capsys):
    write_small_keras_h5(tmp_path / "dir" / "chest-view" / "weights.h5")
    chosen = write_small_keras_h5(tmp_path / "elsewhere.h5")
    argv = ["list", "--json", "--weights-dir", str(tmp_path / "dir"), "--weight", f"chest-view:weights={chosen}"]
    assert main(argv) == EXIT_OK
    models = by_name(json.loads(capsys.readouterr().out)["models"])
    assert models["chest-view"]["weights"][0]["path"] == str(chosen)


def test_check_load_reports_a_file_that_does_not_fit(tmp_path, capsys):
    small = write_small_keras_h5(tmp_path / "small.h5")
    assert main(["list", "--json", "--check-load", "--weight", f"enhancement:weights={small}"]) == EXIT_WEIGHTS
    enh = by_name(json.loads(capsys.readouterr().out)["models"])["enhancement"]
    assert enh["available"] is False and "conv1_conv" in enh["problem"]


@pytest.mark.parametrize(
    "argv",
    [
        ["list", "--weight", "nope:weights=x.h5"],
        ["list", "--weight", "enhancement:other=x.h5"],
        ["list", "--weight", "enhancement=x.h5"],
        ["run", "no-such-model", "x"],
        ["run"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == EXIT_USAGE
    assert capsys.readouterr().err


def test_run_without_or_with_unfit_weights_exits_3(tmp_path, capsys):
    image = write_radiograph(tmp_path / "cr.dcm")
    assert main(["run", "chest-view", str(image)]) == EXIT_WEIGHTS
    assert "missing weight file" in capsys.readouterr().err
    small = write_small_keras_h5(tmp_path / "small.h5")
    assert main(["run", "chest-view", str(image), "--weights", str(small), "--device", "cpu"]) == EXIT_WEIGHTS
    assert "conv1_conv" in capsys.readouterr().err


def test_unknown_option_exits_2(tmp_path, capsys):
    small = write_small_keras_h5(tmp_path / "small.h5")
    argv = ["run", "enhancement", str(tmp_path), "--weights", f"weights={small}", "--option", "colour=blue"]
    assert main(argv) == EXIT_USAGE
    assert "colour" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_cuda_exits_2(tmp_path, capsys):
    small = write_small_keras_h5(tmp_path / "small.h5")
    assert main(["run", "chest-view", str(tmp_path), "--weights", str(small), "--device", "cuda"]) == EXIT_USAGE
    assert "CUDA" in capsys.readouterr().err


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("ai-models")
    if not script.exists():
        pytest.skip("ai-models console script not installed in this environment")
    done = subprocess.run([str(script), "list", "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert {"enhancement", "chest-view"} <= {m["name"] for m in json.loads(done.stdout)["models"]}


@pytest.fixture(scope="module")
def view_weights(tmp_path_factory):
    """A randomised Keras view network's weights, filed by the weights-dir convention."""
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    pytest.importorskip("tf_keras")
    from test_resnet50_port import build_reference

    folder = tmp_path_factory.mktemp("weights")
    (folder / "chest-view").mkdir()
    build_reference(1, 3, np.random.default_rng(2)).save_weights(folder / "chest-view" / "weights.h5")
    return folder


@pytest.mark.tf
def test_run_prints_the_typed_result(view_weights, tmp_path, capsys):
    torch.set_num_threads(1)
    image = write_radiograph(tmp_path / "one" / "cr.dcm", view="LL")
    argv = ["run", "chest-view", str(image), "--weights-dir", str(view_weights), "--device", "cpu", "--json"]
    assert main(argv) == EXIT_OK
    result = json.loads(capsys.readouterr().out)
    assert result["type"] == "Classification" and result["model"] == "chest-view"
    assert result["label"] in ("PA", "Lateral", "Others") and result["header_value"] == "LL"
    assert abs(sum(result["probabilities"].values()) - 1) < 1e-5
    assert result["agrees_with_header"] is (result["label"] == "Lateral")

    text_argv = ["run", "chest-view", str(image), "--weights", str(view_weights / "chest-view" / "weights.h5")]
    assert main(text_argv) == EXIT_OK
    assert "Classification by chest-view" in capsys.readouterr().out


@pytest.mark.tf
def test_run_classifies_each_image_of_a_folder(view_weights, tmp_path, capsys):
    for k, view in enumerate(("PA", "AP")):
        write_radiograph(tmp_path / "series" / f"{k}.dcm", view=view)
    argv = ["run", "chest-view", str(tmp_path / "series"), "--weights-dir", str(view_weights), "--json"]
    assert main(argv) == EXIT_OK
    results = json.loads(capsys.readouterr().out)
    assert sorted(r["header_value"] for r in results) == ["AP", "PA"]


@pytest.mark.tf
def test_bad_input_exits_4(view_weights, tmp_path, capsys):
    not_dicom = tmp_path / "notes.txt"
    not_dicom.write_text("not an image")
    for target in (tmp_path / "missing.dcm", not_dicom):
        assert main(["run", "chest-view", str(target), "--weights-dir", str(view_weights)]) == EXIT_INPUT
        assert "input problem" in capsys.readouterr().err


@pytest.mark.tf
def test_check_load_accepts_fitting_weights(view_weights, capsys):
    assert main(["list", "--json", "--check-load", "--weights-dir", str(view_weights)]) == EXIT_OK
    view = by_name(json.loads(capsys.readouterr().out)["models"])["chest-view"]
    assert view["available"] is True and view["problem"] is None and view["weights"][0]["valid"] is True
