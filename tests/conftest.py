"""Shared fixtures: real peers (Orthanc, dcmtk) and synthetic data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tests.peers import Orthanc, StoreSCP, have  # noqa: E402


def pytest_collection_modifyitems(config, items):  # type: ignore[no-untyped-def]
    """Peer tests need the Debian tools; say so clearly instead of failing obscurely."""
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
