"""Which tests form the fast tier, decided from what each test uses (no marker to remember).

A test is slow when it needs something outside its own process or heavy:
a node, peer or browser process (the fixtures below), TensorFlow,
PostgreSQL, a mark that says so, or a folder of such tests (the browser
checks, the benchmarks, the models run on whole images).
Everything else is ``fast``: ``pytest -m fast`` runs the unit tests in
under a minute, and a new test is classified by the fixtures it asks for.
"""
from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

# Marks that already say a test needs a peer, TensorFlow, a database server or time.
SLOW_MARKS = frozenset({"peers", "tf", "postgres", "slow"})

# Fixtures that start a process (node, Orthanc, storescp, PostgreSQL, Chromium/OHIF).
PROCESS_FIXTURES = frozenset({"make_node", "orthanc", "storescp", "postgres_url", "ohif", "browser", "viewer"})

# Folders whose tests drive a browser, measure, or run the models on whole images and
# volumes (seconds each on a CPU: together several minutes, the model tier).
SLOW_FOLDERS = (TESTS / "viewer", TESTS / "bench", TESTS / "ai_models")

FAST_MARKER = "fast: unit tests: no node, peer or browser process, no TensorFlow (pytest -m fast, under a minute)"


def why_slow(item: pytest.Item) -> str | None:
    """What keeps a test out of the fast tier, or None when it is fast."""
    marks = SLOW_MARKS.intersection(mark.name for mark in item.iter_markers())
    if marks:
        return f"marked {', '.join(sorted(marks))}"
    fixtures = PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ()))
    if fixtures:
        return f"uses {', '.join(sorted(fixtures))}"
    path = Path(str(item.path))
    if any(path.is_relative_to(folder) for folder in SLOW_FOLDERS):
        return f"under {path.parent.relative_to(TESTS.parent)}"
    return None


def mark_fast(items: list[pytest.Item]) -> None:
    """Add the ``fast`` mark to every test that nothing keeps out of the fast tier."""
    for item in items:
        if why_slow(item) is None:
            item.add_marker(pytest.mark.fast)


def not_collected_for_fast(path: Path, config: pytest.Config) -> bool:
    """Under ``-m fast``, skip importing the folders that hold no fast test (torch alone takes seconds)."""
    return config.getoption("markexpr", "") == "fast" and any(path.is_relative_to(folder) for folder in SLOW_FOLDERS)
