"""Shared fixtures: real peers (Orthanc, dcmtk) and synthetic data; the fast tier; isolation checks."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tests.isolation import check_pynetdicom_settings  # noqa: E402
from tests.peers import Orthanc, StoreSCP, have  # noqa: E402
from tests.tiers import FAST_MARKER, mark_fast, not_collected_for_fast  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", FAST_MARKER)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    return True if not_collected_for_fast(collection_path, config) else None


@pytest.hookimpl(tryfirst=True)  # before pytest deselects by mark (-m fast)
def pytest_collection_modifyitems(config, items):  # type: ignore[no-untyped-def]
    """Mark the fast tier; peer tests need the Debian tools: say so clearly instead of failing obscurely."""
    mark_fast(items)
    missing = [tool for tool in ("storescu", "storescp", "Orthanc") if not have(tool)]
    if not missing:
        return
    skip = pytest.mark.skip(reason=f"needs {', '.join(missing)} (deploy/test.sh installs them)")
    for item in items:
        if "peers" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def orthanc(tmp_path: Path):
    peer = Orthanc(tmp_path / "orthanc").start()
    yield peer
    peer.stop()


@pytest.fixture
def storescp(tmp_path: Path):
    peer = StoreSCP(tmp_path / "storescp-in").start()
    yield peer
    peer.stop()


@pytest.fixture(autouse=True)
def _pynetdicom_settings_unchanged(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """No test leaves a pynetdicom global switch changed for the tests after it (tests/isolation.py)."""
    yield from check_pynetdicom_settings(request.node.nodeid)
