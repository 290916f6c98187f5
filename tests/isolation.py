"""Global switches that a test must leave as it found them.

pynetdicom keeps process-wide settings in ``pynetdicom._config`` (e.g.
``STORE_SEND_CHUNKED_DATASET``); a test that flips one and leaves it flipped
changes how every later test in the process sends or receives.  The check
snapshots them before each test and fails the test that changed them, then
puts them back so that one leak does not become many failures.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from pynetdicom import _config


def pynetdicom_settings() -> dict[str, Any]:
    """pynetdicom's settings: the upper-case names of ``pynetdicom._config``, copied."""
    return {name: copy.copy(value) for name, value in vars(_config).items() if name.isupper()}


def check_pynetdicom_settings(test: str) -> Iterator[None]:
    """Around one test: fail it if it left a pynetdicom setting changed (and restore them all)."""
    before = pynetdicom_settings()
    yield
    after = pynetdicom_settings()
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    for name in changed:
        if name in before:
            setattr(_config, name, before[name])
        else:
            delattr(_config, name)
    assert not changed, (
        f"{test} left pynetdicom._config changed: "
        + ", ".join(f"{name} {before.get(name)!r} -> {after.get(name)!r}" for name in changed)
        + " (use monkeypatch.setattr)"
    )
