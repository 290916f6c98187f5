"""The dicom-node command line: every command, its --help, and exit codes scripts rely on."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dicom_node.ops.synthetic import chest_ct_series, write_datasets
from tests.node.conftest import forward_rule
from tests.peers import free_port, wait_for

COMMANDS = [["serve"], ["echo"], ["send"], ["status"], ["retry"], ["rules", "check"], ["rules", "test"], ["generate"], ["models", "list"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_has_help(command) -> None:
    result = subprocess.run([sys.executable, "-m", "dicom_node.cli.main", *command, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: dicom-node" in result.stdout


@pytest.mark.peers
def test_echo_send_status_and_exit_codes(make_node, tmp_path) -> None:
    node = make_node(destinations={"archive": {"type": "folder", "path": "archive"}, "nobody": {"type": "dicom", "ae_title": "X", "host": "127.0.0.1", "port": free_port()}},
                     rules={"a.toml": forward_rule("archive")})
    ok = node.cli("echo")
    assert ok.returncode == 0 and "OK" in ok.stdout
    down = node.cli("echo", "nobody")
    assert down.returncode == 1 and "cannot connect" in down.stdout
    assert node.cli("echo", "no-such-destination").returncode == 2

    folder = tmp_path / "ct"
    write_datasets(chest_ct_series(6, 32), folder)
    (folder / "README.txt").write_text("not DICOM")
    sent = node.cli("send", str(folder))
    assert sent.returncode == 0, sent.stderr
    assert "6 of 6 object(s) sent to node" in sent.stdout
    assert "sent 6/6" in sent.stderr and "skipping" in sent.stderr  # progress and the skipped file

    refused = node.cli("send", str(folder), "--calling-ae", "UNKNOWN_AE")
    assert refused.returncode == 1 and "rejected" in refused.stderr

    report = wait_for(lambda: (lambda r: r if r["counts"]["deliveries"].get("delivered") else None)(json.loads(node.cli("status", "--json").stdout)),
                      timeout=20, interval=0.3, what="status reporting a delivered delivery")
    assert report["counts"]["instances"] == 6
    assert len(list((node.workdir / "archive").rglob("*.dcm"))) == 6
    text = node.cli("status").stdout
    assert "deliveries: delivered 1" in text and "a.toml" not in text


def test_rules_check_reports_file_and_line_and_fails(tmp_path) -> None:
    config = tmp_path / "node.toml"
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "good.toml").write_text(forward_rule("archive"))
    (tmp_path / "rules" / "bad.toml").write_text('[[rule]]\nname = "x"\nlevel = "series"\n[rule.match]\nModalityy = "CT"\n[[rule.actions]]\ntype = "forward"\ndestinations = ["archive"]\n')
    config.write_text('[rules]\nfolder = "rules"\n[destinations.archive]\ntype = "folder"\npath = "out"\n')
    result = subprocess.run([sys.executable, "-m", "dicom_node.cli.main", "--config", str(config), "rules", "check"], capture_output=True, text=True)
    assert result.returncode == 1
    assert "bad.toml:5" in result.stdout and "Modality" in result.stdout  # the line, and a suggestion
    assert "ok     forward-all" in result.stdout
    (tmp_path / "rules" / "bad.toml").unlink()
    again = subprocess.run([sys.executable, "-m", "dicom_node.cli.main", "--config", str(config), "rules", "check"], capture_output=True, text=True)
    assert again.returncode == 0


def test_rules_test_explains_each_rule_per_series(tmp_path) -> None:
    config = tmp_path / "node.toml"
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.toml").write_text(
        '[[rule]]\nname = "mr-only"\nlevel = "series"\n[rule.match]\nModality = "MR"\n[[rule.actions]]\ntype = "forward"\ndestinations = ["archive"]\n'
        '[[rule]]\nname = "chest-ct"\nlevel = "series"\n[rule.match]\nModality = "CT"\nBodyPartExamined = ["CHEST", "THORAX"]\n[[rule.actions]]\ntype = "forward"\ndestinations = ["archive"]\n'
        '[[rule]]\nname = "slice-two"\nlevel = "instance"\n[rule.match]\nInstanceNumber = 2\n[[rule.actions]]\ntype = "forward"\ndestinations = ["archive"]\n'
    )
    config.write_text('[rules]\nfolder = "rules"\n[destinations.archive]\ntype = "folder"\npath = "out"\n')
    write_datasets(chest_ct_series(3, 32), tmp_path / "ct")
    result = subprocess.run([sys.executable, "-m", "dicom_node.cli.main", "--config", str(config), "rules", "test", str(tmp_path / "ct")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "rule 'chest-ct' fired" in result.stdout
    assert "rule 'mr-only' did not fire" in result.stdout and "'CT'" in result.stdout
    # judged file by file: the explanation is that of a file it does not fire for
    assert "instance level, fires for 1 of 3 file(s): rule 'slice-two' did not fire" in result.stdout


def test_generate_writes_valid_synthetic_files(tmp_path) -> None:
    from dicom_node.cli.main import main

    assert main(["generate", "dx", str(tmp_path / "dx"), "--count", "2", "--size", "128"]) == 0
    assert len(list((tmp_path / "dx").glob("*.dcm"))) == 2


def test_retry_without_target_is_a_usage_error(tmp_path) -> None:
    from dicom_node.cli.main import main

    config = tmp_path / "node.toml"
    config.write_text('[database]\nurl = "sqlite:///node.db"\n')
    assert main(["--config", str(config), "retry"]) == 2
