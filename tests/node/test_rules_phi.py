"""Rules that test patient attributes: the values stay out of `rules test` and out of the stored dispatch reasons."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dicom_node.ops.synthetic import chest_ct_series, write_datasets
from tests.peers import node_db_rows, storescu, wait_for

NAME = "SYNTHETIC^PHANTOM"  # what dicom_node.ops.synthetic writes
RULES = f"""
[[rule]]
name = "by-name"
[rule.match]
PatientName = "{NAME}"
PatientBirthDate = {{ present = true }}
[[rule.actions]]
type = "forward"
destinations = ["archive"]

[[rule]]
name = "by-expression"
when = "Modality == 'CT' and startswith(PatientID, 'PID-')"
[[rule.actions]]
type = "forward"
destinations = ["archive"]

[[rule]]
name = "other-name"
[rule.match]
PatientName = "SOMEONE^ELSE"
[[rule.actions]]
type = "forward"
destinations = ["archive"]
"""
SECRETS = ("SYNTHETIC", "PHANTOM", "SOMEONE", "PID-", "19700101")


def _hidden(text: str) -> bool:
    return not any(secret in text for secret in SECRETS)


def test_rules_test_does_not_print_patient_values(tmp_path) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.toml").write_text(RULES)
    config = tmp_path / "node.toml"
    config.write_text('[rules]\nfolder = "rules"\n[destinations.archive]\ntype = "folder"\npath = "out"\n')
    write_datasets(chest_ct_series(2, 32, patient_id="PID-0042"), tmp_path / "ct")
    result = subprocess.run([sys.executable, "-m", "dicom_node.cli.main", "--config", str(config), "rules", "test", str(tmp_path / "ct")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "rule 'by-name' fired: PatientName matched; PatientBirthDate matched" in out
    assert "rule 'by-expression' fired: when expression holds (text not shown: it tests PatientID)" in out
    assert "rule 'other-name' did not fire: PatientName did not match" in out
    assert _hidden(out), out


@pytest.mark.peers
def test_stored_dispatch_reasons_hold_no_patient_values(make_node, tmp_path) -> None:
    node = make_node(destinations={"archive": {"type": "folder", "path": "out"}}, rules={"r.toml": RULES})
    files = write_datasets(chest_ct_series(2, 32, patient_id="PID-0042"), tmp_path / "ct")
    assert storescu(node.port, files).returncode == 0
    query = "select rule_name, reasons from dispatches order by rule_name"
    rows = wait_for(lambda: len(found := node_db_rows(node, query)) >= 2 and found, timeout=60, what="two dispatch rows")
    reasons = {name: json.loads(text) for name, text in rows}
    assert set(reasons) == {"by-expression", "by-name"}
    assert "PatientName matched" in reasons["by-name"]
    assert _hidden(json.dumps(reasons)), reasons
