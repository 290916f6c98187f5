"""A forward-only install: ``pip install dicom-node[web]`` without the models extra receives, forwards, and says what it lacks.

The slow test builds a fresh virtual environment from a copy of the sources
(a non-editable install, so the migrations must ship in the package) and
proves torch is absent there before it runs the node.  The fast ones make the
models extra's modules unimportable in a child interpreter (None in
``sys.modules`` is Python's own "this module cannot be imported") to check
the messages in seconds.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pydicom
import pytest

from ai_models.registry import MODELS_EXTRA_MISSING, MODELS_EXTRA_MODULES, models_extra_problem
from tests.node.conftest import forward_rule
from tests.peers import REPO, NodeProcess, free_port, stop_pid, wait_for, wait_port

MODEL_RULE = """
[[rule]]
name = "ct-contrast-check"
[rule.match]
Modality = "CT"
[[rule.actions]]
type = "model"
model = "enhancement-hu"
outputs = ["sr"]
destinations = ["archive"]
"""
RULES = {"10-forward.toml": forward_rule("archive"), "20-model.toml": MODEL_RULE}
MODEL_RULE_ERROR = f"model 'enhancement-hu' is not available: {MODELS_EXTRA_MISSING}"

# The CLI in a child where the models extra cannot be imported, as on a forward-only install.
WITHOUT_EXTRA = (
    "import sys\n"
    "sys.modules.update(dict.fromkeys(" + repr(MODELS_EXTRA_MODULES) + "))\n"
    "from dicom_node.cli.main import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _clean_env() -> dict[str, str]:
    """The environment without anything that would put this checkout or its venv on the child's path."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


def _cli_without_extra(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRA, "--config", str(config), *args],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )


def _node(workdir: Path, web_port: int | None = None) -> NodeProcess:
    extra = f"[web]\nenabled = true\nport = {web_port}\n" if web_port is not None else ""
    node = NodeProcess(workdir, destinations={"archive": {"type": "folder", "path": "archive"}}, rules=RULES, extra_config=extra)
    node.write_config()
    return node


# --- fast: the messages, with the extra blocked in a child ---------------------------------------------------


def test_the_models_extra_is_installed_in_the_test_environment() -> None:
    """The counterpart of the tests below: the check does not report a missing extra where it is installed."""
    assert models_extra_problem() is None


def test_models_list_says_the_models_extra_is_missing(tmp_path: Path) -> None:
    node = _node(tmp_path)
    text = _cli_without_extra(node.config_path, "models", "list")
    assert text.returncode == 1, text.stderr
    assert text.stdout.strip() == f"models unavailable: {MODELS_EXTRA_MISSING}"
    as_json = _cli_without_extra(node.config_path, "models", "list", "--json")
    assert as_json.returncode == 1, as_json.stderr
    assert as_json.stdout.strip() == "[]"
    assert MODELS_EXTRA_MISSING in as_json.stderr


def test_a_model_rule_is_invalid_because_the_extra_is_missing(tmp_path: Path) -> None:
    node = _node(tmp_path)
    result = _cli_without_extra(node.config_path, "rules", "check")
    assert result.returncode == 1, result.stderr
    assert "ok     forward-all" in result.stdout
    errors = [line for line in result.stdout.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "20-model.toml" in errors[0] and MODEL_RULE_ERROR in errors[0], result.stdout


# --- slow: a real forward-only install -------------------------------------------------------------------------


def _run(args: list[str | Path], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=_clean_env())


def _forward_only_venv(root: Path) -> Path:
    """A fresh venv with ``<copy of the sources>[web]`` installed (not editable); returns its bin folder."""
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for package in ("dicom_node", "ai_models", "routing_rules"):
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    venv = root / "venv"
    created = _run([sys.executable, "-m", "venv", venv], cwd=root)
    assert created.returncode == 0, created.stderr
    installed = _run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{src}[web]"], cwd=root, timeout=900)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return venv / "bin"


def _files_when(folder: Path, count: int) -> list[Path] | None:
    """The files under ``folder`` once there are ``count`` of them, else None."""
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    return files if len(files) == count else None


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_forward_only_install_receives_and_forwards_without_torch(tmp_path: Path) -> None:
    bin_dir = _forward_only_venv(tmp_path)
    python, dicom_node = bin_dir / "python", bin_dir / "dicom-node"
    work = tmp_path / "node"

    torch = _run([python, "-c", "import torch"], cwd=tmp_path)
    assert torch.returncode != 0 and "No module named 'torch'" in torch.stderr, torch.stderr
    absent = _run([python, "-c", f"import importlib.util as u; print([m for m in {MODELS_EXTRA_MODULES!r} if u.find_spec(m)])"], cwd=tmp_path)
    assert absent.stdout.strip() == "[]", absent.stdout + absent.stderr
    where = _run([python, "-c", "import dicom_node, routing_rules; print(dicom_node.__file__); print(routing_rules.__file__)"], cwd=tmp_path)
    assert where.returncode == 0 and all(Path(p).is_relative_to(tmp_path / "venv") for p in where.stdout.split()), where.stdout + where.stderr

    web_port = free_port()
    node = _node(work, web_port)
    rules = _run([python, "-c", (
        "import sys\nfrom routing_rules.loader import load_rules\n"
        "ruleset = load_rules('rules', destinations={'archive'})\n"
        "assert 'torch' not in sys.modules\nprint(len(ruleset.rules), len(ruleset.errors))\n"
    )], cwd=work)
    assert rules.stdout.split() == ["1", "1"], rules.stdout + rules.stderr  # the model action is unknown to routing_rules alone

    models = _run([dicom_node, "--config", node.config_path, "models", "list"], cwd=work)
    assert models.returncode == 1 and models.stdout.strip() == f"models unavailable: {MODELS_EXTRA_MISSING}", models.stdout + models.stderr
    check = _run([dicom_node, "--config", node.config_path, "rules", "check"], cwd=work)
    assert check.returncode == 1 and MODEL_RULE_ERROR in check.stdout, check.stdout + check.stderr

    log_path = work / "node.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(dicom_node), "--config", str(node.config_path), "serve"], stdout=log, stderr=subprocess.STDOUT, cwd=work, env=_clean_env())
    try:
        wait_port(node.port, 60, proc)
        wait_for(lambda: " ready: " in log_path.read_text() or proc.poll() is not None, timeout=60, interval=0.1)
        assert proc.poll() is None, log_path.read_text()
        wait_for(lambda: "web: admin app on" in log_path.read_text(), timeout=60, interval=0.1)
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/login", timeout=10) as page:  # templates shipped
            assert page.status == 200 and b"<form" in page.read()
        generated = _run([dicom_node, "--config", node.config_path, "generate", "ct", "in", "--count", "3", "--size", "64"], cwd=work)
        assert generated.returncode == 0, generated.stderr
        sent = _run([dicom_node, "--config", node.config_path, "send", "in"], cwd=work)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        sent_uids = {str(pydicom.dcmread(p).SOPInstanceUID) for p in (work / "in").iterdir()}
        archived = wait_for(lambda: _files_when(work / "archive", 3), timeout=60)
        assert {str(pydicom.dcmread(p).SOPInstanceUID) for p in archived} == sent_uids
    finally:
        stop_pid(proc)
    log_text = log_path.read_text()
    assert MODEL_RULE_ERROR in log_text and "Traceback" not in log_text, log_text
