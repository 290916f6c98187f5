"""The test suite's own rules: the fast tier is chosen by what tests use; no test leaks pynetdicom settings."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pynetdicom import _config

from tests.isolation import check_pynetdicom_settings
from tests.peers import REPO

CLASSIFIED = '''
import pytest

@pytest.fixture
def node(make_node):
    return make_node

def test_plain(tmp_path):
    pass

def test_starts_a_node(make_node):
    pass

def test_through_a_fixture_that_starts_one(node):
    pass

def test_with_a_peer(storescp):
    pass

@pytest.mark.tf
def test_needs_tensorflow():
    pass

@pytest.mark.peers
def test_marked_peers():
    pass
'''


def _collect_fast(folder: Path) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", "fast", "--rootdir", str(folder), str(folder)],
        capture_output=True, text=True, timeout=120, cwd=folder, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode in (0, 5), result.stdout + result.stderr  # 5: nothing selected
    return [line.split("::")[1] for line in result.stdout.splitlines() if "::" in line]


def test_fast_tier_leaves_out_tests_that_start_processes_or_are_marked(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import orthanc, pytest_collection_modifyitems, pytest_configure, storescp  # noqa: F401\n"
        "from tests.node.conftest import make_node  # noqa: F401\n"
    )
    (tmp_path / "test_classified.py").write_text(CLASSIFIED)
    assert _collect_fast(tmp_path) == ["test_plain"]


def test_a_leaked_pynetdicom_setting_fails_the_test_that_left_it_and_is_put_back() -> None:
    check = check_pynetdicom_settings("tests/x.py::test_leaky")
    next(check)
    _config.STORE_SEND_CHUNKED_DATASET = not _config.STORE_SEND_CHUNKED_DATASET
    with pytest.raises(AssertionError, match=r"tests/x.py::test_leaky left pynetdicom._config changed: STORE_SEND_CHUNKED_DATASET False -> True"):
        next(check)
    assert _config.STORE_SEND_CHUNKED_DATASET is False


def test_unchanged_pynetdicom_settings_pass() -> None:
    check = check_pynetdicom_settings("tests/x.py::test_clean")
    next(check)
    with pytest.raises(StopIteration):
        next(check)
