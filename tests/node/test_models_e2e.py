"""From rule to result in PACS: storescu -> node -> model jobs -> SR / SEG / erased / corrected copies -> Orthanc."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.ops.synthetic import chest_ct_series, chest_dx, write_datasets
from tests.peers import storescu, wait_for, wait_until_settled

pytestmark = pytest.mark.peers

RULES = """
[[rule]]
name = "ct-originals"
[rule.match]
Modality = "CT"
[[rule.actions]]
type = "forward"
destinations = ["pacs"]

[[rule]]
name = "ct-enhancement-check"
[rule.match]
Modality = "CT"
BodyPartExamined = ["CHEST", "THORAX"]
[[rule.actions]]
type = "model"
model = "enhancement-hu"
outputs = ["sr", "corrected-copy"]
destinations = ["pacs"]

[[rule]]
name = "dx-lr-marker"
[rule.match]
Modality = ["DX", "CR"]
[[rule.actions]]
type = "model"
model = "lr-mark-classic"
outputs = ["sr", "erased"]
destinations = ["pacs"]

[[rule]]
name = "dx-lung"
[rule.match]
Modality = ["DX", "CR"]
[[rule.actions]]
type = "model"
model = "lung"
options = { input_size = 128 }
outputs = ["seg", "sr"]
destinations = ["pacs"]
"""




def random_lung_weights(folder: Path) -> None:
    """Random weights in the original Keras HDF5 format: the plumbing is what is tested here."""
    pytest.importorskip("tf_keras")
    from tests.ai_models.test_lung import _randomise, keras_lung_unet

    model = keras_lung_unet()
    _randomise(model, np.random.default_rng(0))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_weights(str(folder / "weights.h5"))


def by_modality(orthanc) -> dict[str, list[pydicom.Dataset]]:  # type: ignore[no-untyped-def]
    out: dict[str, list[pydicom.Dataset]] = {}
    for oid in orthanc.instances():
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(orthanc.instance_file(oid)))
        out.setdefault(str(ds.Modality), []).append(ds)
    return out


def test_ct_and_dx_studies_come_back_with_sr_seg_erased_and_corrected_copies(make_node, orthanc, tmp_path) -> None:
    node = make_node(destinations={"pacs": {"type": "dicom", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}},
                     rules={"rules.toml": RULES})
    random_lung_weights(node.workdir / "var" / "weights" / "lung")
    ct = chest_ct_series(16, 128, contrast=True, seed=21)
    for ds in ct:
        del ds.ContrastBolusAgent  # the header forgot the contrast: the check must say so
    dx = chest_dx(512, 512, marker="R", seed=1)
    marker_box = dx.synthetic_marker_box
    assert storescu(node.port, write_datasets(ct, tmp_path / "ct", "CT")).returncode == 0
    assert storescu(node.port, write_datasets([dx], tmp_path / "dx", "DX")).returncode == 0

    def jobs():  # type: ignore[no-untyped-def]
        with sqlite3.connect(node.workdir / "node.db") as conn:
            return conn.execute("select action, state, error, result, timings from jobs order by id").fetchall()

    rows = wait_for(lambda: (lambda r: r if len(r) == 3 and all(x[1] in ("done", "failed") for x in r) else None)(jobs()), timeout=180)
    assert [r[1] for r in rows] == ["done"] * 3, [r[2] for r in rows]
    results = {json.loads(r[0])["model"]: json.loads(r[3]) for r in rows}
    enhancement = results["enhancement-hu"]["results"][0]
    assert enhancement["label"].lower() == "enhanced" and enhancement["agrees_with_header"] is False
    assert results["lr-mark-classic"]["results"][0]["boxes"][0]["label"] == "right"
    assert all(set(json.loads(r[4])) >= {"read_s", "inference_s", "outputs_s", "total_s"} for r in rows)

    expected = {"CT": 16 + 16, "SR": 3, "SEG": 1, "DX": 1}  # CT originals + corrected copies; 3 reports; the erased DX
    seen: dict = {}

    def all_arrived():  # type: ignore[no-untyped-def]
        seen["now"] = by_modality(orthanc)
        return seen["now"] if {k: len(v) for k, v in seen["now"].items()} == expected else None

    try:
        arrived = wait_for(all_arrived, timeout=60)
    except AssertionError:
        raise AssertionError(f"Orthanc has {({k: len(v) for k, v in seen['now'].items()})}, expected {expected}") from None

    ct_uids = {str(d.SOPInstanceUID) for d in ct}
    corrected = [d for d in arrived["CT"] if str(d.SOPInstanceUID) not in ct_uids]
    assert all(d.ContrastBolusAgent.startswith("CONTRAST") for d in corrected)
    assert {str(d.SourceImageSequence[0].ReferencedSOPInstanceUID) for d in corrected} == ct_uids
    assert all(d.SeriesInstanceUID != ct[0].SeriesInstanceUID and d.StudyInstanceUID == ct[0].StudyInstanceUID for d in corrected)

    erased = next(d for d in arrived["DX"] if d.SOPInstanceUID != dx.SOPInstanceUID)
    assert "DERIVED" in erased.ImageType and erased.SourceImageSequence[0].ReferencedSOPInstanceUID == dx.SOPInstanceUID
    x0, y0, x1, y1 = marker_box
    original = dx.pixel_array
    assert erased.pixel_array[y0:y1, x0:x1].max() < original[y0:y1, x0:x1].max()  # the burned-in letter is gone
    assert np.array_equal(erased.pixel_array[300:, 300:], original[300:, 300:])  # far from the marker: untouched

    seg = arrived["SEG"][0]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == dx.SeriesInstanceUID
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    for sr in arrived["SR"]:
        refs = {str(i.ReferencedSOPInstanceUID) for s in sr.CurrentRequestedProcedureEvidenceSequence for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence}
        assert refs <= ct_uids | {str(dx.SOPInstanceUID), str(seg.SOPInstanceUID)} and refs
    status = node.cli("status")
    assert "model jobs: done 3" in status.stdout
    # The models ran in job workers; the main process checked the model rules from the catalog alone.
    assert "libtorch" not in Path(f"/proc/{node.proc.pid}/maps").read_text()


def test_missing_weights_fail_the_job_with_a_clear_reason_and_reception_goes_on(make_node, tmp_path) -> None:
    rules = RULES.split('[[rule]]\nname = "dx-lung"')[0].replace('destinations = ["pacs"]', 'destinations = ["archive"]')
    rules += '[[rule]]\nname = "dx-view"\n[rule.match]\nModality = "DX"\n[[rule.actions]]\ntype = "model"\nmodel = "chest-view"\ndestinations = ["archive"]\n'
    node = make_node(destinations={"archive": {"type": "folder", "path": "archive"}}, rules={"r.toml": rules})
    dx = chest_dx(256, 256, seed=2)
    assert storescu(node.port, write_datasets([dx], tmp_path / "dx")).returncode == 0

    def view_job():  # type: ignore[no-untyped-def]
        with sqlite3.connect(node.workdir / "node.db") as conn:
            return conn.execute("select state, error from jobs where json_extract(action, '$.model') = 'chest-view'").fetchall()

    state, error = wait_for(lambda: (lambda r: r[0] if r and r[0][0] == "failed" else None)(view_job()), timeout=60)
    assert "weight file(s) ['weights'] not found" in error
    assert storescu(node.port, write_datasets(chest_ct_series(3, 32), tmp_path / "ct")).returncode == 0  # still receiving


def test_rerun_after_late_instances_versions_results_in_the_same_series(make_node, tmp_path) -> None:
    from tests.peers import StoreSCP

    scp = StoreSCP(tmp_path / "pacs-in", unique_names=True).start()
    try:
        rule = RULES.split('[[rule]]\nname = "dx-lr-marker"')[0].split('[[rule]]\nname = "ct-enhancement-check"')[1]
        rule = '[[rule]]\nname = "ct-enhancement-check"' + rule.replace('outputs = ["sr", "corrected-copy"]', 'outputs = ["sr"]').replace('"pacs"', '"scp"')
        node = make_node(destinations={"scp": {"type": "dicom", "ae_title": scp.aet, "host": "127.0.0.1", "port": scp.port}}, rules={"r.toml": rule})
        ct = chest_ct_series(12, 128, contrast=True, seed=31)
        assert storescu(node.port, write_datasets(ct[:10], tmp_path / "first")).returncode == 0
        wait_for(lambda: len(scp.files()) == 1, timeout=60)
        assert storescu(node.port, write_datasets(ct[10:], tmp_path / "late")).returncode == 0
        wait_for(lambda: len(scp.files()) == 2, timeout=60)
        reports = sorted((pydicom.dcmread(p) for p in scp.files()), key=lambda d: int(d.InstanceNumber))
        assert [int(r.InstanceNumber) for r in reports] == [1, 2]
        assert reports[0].SeriesInstanceUID == reports[1].SeriesInstanceUID  # one result series per source, rule and model
        assert reports[0].SOPInstanceUID != reports[1].SOPInstanceUID
        assert "run 2" in reports[1].SeriesDescription
        with sqlite3.connect(node.workdir / "node.db") as conn:
            assert conn.execute("select run_number, state from jobs order by id").fetchall() == [(1, "done"), (2, "done")]
    finally:
        scp.stop()


def test_rule_on_header_fix_findings_runs_only_when_the_check_says_so(make_node, tmp_path) -> None:
    """"Send on (stand-in for: run the kidney model) only when enhancement-hu says enhanced"."""
    from tests.peers import StoreSCP

    scp = StoreSCP(tmp_path / "pacs-in").start()
    try:
        rules = (
            '[[rule]]\nname = "ct-check"\n[rule.match]\nModality = "CT"\n[[rule.actions]]\ntype = "model"\n'
            'model = "enhancement-hu"\noutputs = []\n'
            '[[rule]]\nname = "only-enhanced"\n[rule.match]\nModality = "CT"\n"finding.enhancement-hu.label" = "enhanced"\n'
            '[[rule.actions]]\ntype = "forward"\ndestinations = ["scp"]\n'
        )
        node = make_node(destinations={"scp": {"type": "dicom", "ae_title": scp.aet, "host": "127.0.0.1", "port": scp.port}}, rules={"r.toml": rules})
        check = node.cli("rules", "check")
        assert check.returncode == 0, check.stdout
        enhanced = chest_ct_series(8, 128, contrast=True, seed=51)
        native = chest_ct_series(8, 128, contrast=False, seed=52)
        assert storescu(node.port, write_datasets(enhanced, tmp_path / "a", "A") + write_datasets(native, tmp_path / "b", "B")).returncode == 0
        with sqlite3.connect(node.workdir / "node.db") as conn:
            wait_for(lambda: conn.execute("select count(*) from jobs where state = 'done' and findings_applied").fetchone()[0] == 2, timeout=90)
        wait_for(lambda: len(scp.files()) == 8, timeout=30)
        wait_until_settled(node)  # a forward of the native series would be queued by now
        assert {str(pydicom.dcmread(p).SOPInstanceUID) for p in scp.files()} == {str(d.SOPInstanceUID) for d in enhanced}
        assert "findings of enhancement-hu: only-enhanced" in node.log_text()
    finally:
        scp.stop()


def test_a_job_over_its_timeout_is_stopped_and_the_next_job_runs(make_node, tmp_path) -> None:
    """The lung U-Net at its full 1024 input takes far longer than 2 s on a CPU: the supervisor stops it."""
    rules = (
        '[[rule]]\nname = "dx-lung-slow"\n[rule.match]\nModality = "DX"\n[[rule.actions]]\ntype = "model"\nmodel = "lung"\n'
        'outputs = ["seg"]\ndestinations = ["archive"]\n'
        '[[rule]]\nname = "dx-lr"\n[rule.match]\nModality = "DX"\n[[rule.actions]]\ntype = "model"\nmodel = "lr-mark-classic"\n'
        'outputs = ["sr"]\ndestinations = ["archive"]\n'
    )
    node = make_node(destinations={"archive": {"type": "folder", "path": "archive"}}, rules={"r.toml": rules},
                     extra_config="[jobs]\ntimeout_seconds = 2.0\nmax_attempts = 1\n")
    random_lung_weights(node.workdir / "var" / "weights" / "lung")
    assert storescu(node.port, write_datasets([chest_dx(512, 512, seed=3)], tmp_path / "dx")).returncode == 0

    def states():  # type: ignore[no-untyped-def]
        with sqlite3.connect(node.workdir / "node.db") as conn:
            return dict(conn.execute("select json_extract(action, '$.model'), state || ':' || coalesce(error, '') from jobs").fetchall())

    final = wait_for(lambda: (lambda s: s if len(s) == 2 and all(v.split(":")[0] in ("done", "failed") for v in s.values()) else None)(states()), timeout=120)
    assert final["lung"].startswith("failed:timeout"), final
    assert final["lr-mark-classic"] == "done:"
    assert "exceeded the 2s timeout" in node.log_text()
