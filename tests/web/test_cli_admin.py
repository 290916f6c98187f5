"""The admin commands: create-user, rules import/export, and the self test against a running node."""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from dicom_node.cli.main import main
from dicom_node.db import Database
from dicom_node.db.admin_models import AuditEntry, User
from tests.peers import NodeProcess

RULE = '[[rule]]\nname = "{name}"\n\n[rule.match]\nModality = "CT"\n\n[[rule.actions]]\ntype = "forward"\ndestinations = ["archive"]\n'


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "node.toml"
    path.write_text('[database]\nurl = "sqlite:///node.db"\n[rules]\nfolder = "rules"\nsource = "database"\n'
                    '[destinations.archive]\ntype = "folder"\npath = "archive"\n')
    return path


def test_create_user_from_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("a-long-password\n"))
    assert main(["--config", str(config), "admin", "create-user", "root", "--role", "admin", "--password-stdin"]) == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert main(["--config", str(config), "admin", "create-user", "tiny", "--role", "viewer", "--password-stdin"]) == 1
    assert "at least 8" in capsys.readouterr().err
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    with db.session() as session:
        users = [(u.username, u.role) for u in session.scalars(select(User))]
        audit = [(e.action, e.target) for e in session.scalars(select(AuditEntry))]
        stored = session.scalar(select(User.password_hash))
    db.dispose()
    assert users == [("root", "admin")] and audit == [("user.create", "root")]
    assert stored.startswith("$argon2id$") and "a-long-password" not in stored


def test_rules_import_export_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.toml").write_text(RULE.format(name="ct-archive"))
    (folder / "b.toml").write_text(RULE.format(name="bad").replace('"archive"]', '"nowhere"]'))
    assert main(["--config", str(config), "rules", "import", str(folder)]) == 1  # one invalid rule: reported, exit 1
    out = capsys.readouterr().out
    assert "created   ct-archive" in out and "unknown destination 'nowhere'" in out
    assert main(["--config", str(config), "rules", "export", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "001-ct-archive.toml").read_text() == RULE.format(name="ct-archive")


@pytest.mark.peers
@pytest.mark.parametrize("level", ["series", "instance"])
def test_selftest_command_against_a_folder_rules_node(tmp_path: Path, level: str) -> None:
    """The folder rule source gets the self-test overlay too; the command prints each step and exits 0."""
    archive = tmp_path / "archive"
    rule = RULE.format(name="mr-only").replace('"CT"', '"MR"').replace("\n\n[rule.match]", f'\nlevel = "{level}"\n\n[rule.match]')
    node = NodeProcess(tmp_path / "node", destinations={"archive": {"type": "folder", "path": str(archive)}},
                       rules={"10-mr.toml": rule},
                       extra_config="[web]\nenabled = false\n", quiet_seconds=0.5)
    node.write_config()
    node.start()
    try:
        done = subprocess.run([sys.executable, "-m", "dicom_node.cli.main", "--config", str(node.config_path), "selftest",
                               "--rule", "mr-only", "--destination", "archive", "--timeout", "60"],
                              capture_output=True, text=True, timeout=120, cwd=node.workdir)
    finally:
        node.stop()
    assert done.returncode == 0, done.stdout + done.stderr + node.log_text()[-2000:]
    lines = done.stdout.splitlines()
    for step in ("rule loaded by the node", "sent (C-STORE to the node)", "received and stored", "series complete",
                 "dispatched by the rule", "delivered to archive"):
        assert any(step in line and " done " in line for line in lines), (step, done.stdout)
    if level == "series":  # the real rule would not match the CT
        assert "rule 'mr-only' did not fire: Modality is 'CT', wanted 'MR'" in done.stdout
    else:
        assert "the chosen rule itself fires for 0 of 3 objects of this synthetic CT" in done.stdout
    assert lines[-1] == "passed"
    assert len(list(archive.rglob("*.dcm"))) == 3
    assert "web: admin app" not in node.log_text()  # [web] enabled = false
