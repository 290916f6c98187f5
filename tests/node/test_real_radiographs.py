"""A real CR through a running node: lr-mark-classic on pydicom-data's RG1 gives an SR and an erased image (issue 17, item 1).

RG1 has no Imager Pixel Spacing and a zero Pixel Spacing; the SR used to fail
in highdicom and the job failed after its retries with neither output.  The
marker letter is burned onto RG1's own pixels, since RG1 carries none.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pydicom
import pytest

from tests.outputs.radiographs import rg1, with_marker
from tests.peers import storescu, wait_for

pytestmark = pytest.mark.peers

RULE = """
[[rule]]
name = "cr-lr-marker"
[rule.match]
Modality = ["DX", "CR"]
[[rule.actions]]
type = "model"
model = "lr-mark-classic"
outputs = ["sr", "erased"]
destinations = ["archive"]
"""


def test_lr_mark_classic_on_rg1_writes_sr_and_erased_image(make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = make_node(destinations={"archive": {"type": "folder", "path": "archive"}}, rules={"r.toml": RULE})
    source, _box = with_marker(rg1())
    path = tmp_path / "rg1.dcm"
    source.save_as(path, enforce_file_format=True)
    assert storescu(node.port, [path]).returncode == 0

    def finished():  # type: ignore[no-untyped-def]
        with sqlite3.connect(node.workdir / "node.db") as conn:
            rows = conn.execute("select state, error, result from jobs").fetchall()
        return rows if rows and all(r[0] in ("done", "failed") for r in rows) else None

    ((state, error, result),) = wait_for(finished, timeout=120)
    assert state == "done", error
    (detection,) = json.loads(result)["results"]
    assert [b["sop_instance_uid"] for b in detection["boxes"]] == [str(source.SOPInstanceUID)]

    def delivered():  # type: ignore[no-untyped-def]
        found = {str(d.Modality): d for d in (pydicom.dcmread(p) for p in (node.workdir / "archive").rglob("*.dcm"))
                 if d.SOPInstanceUID != source.SOPInstanceUID}
        return found if set(found) == {"SR", "CR"} else None

    outputs = wait_for(delivered, timeout=60)
    assert outputs["CR"].SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert "PixelSpacing" not in outputs["CR"]  # the zero spacing means unknown
    evidence = {str(i.ReferencedSOPInstanceUID) for s in outputs["SR"].CurrentRequestedProcedureEvidenceSequence
                for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence}
    assert evidence == {str(source.SOPInstanceUID)}
