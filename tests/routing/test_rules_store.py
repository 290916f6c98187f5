"""RulesStore: reload after edits, per-file isolation of invalid edits."""

from __future__ import annotations

import os
from pathlib import Path

from rules_helpers import DESTINATIONS, rule_text

from routing_rules import RulesStore, SeriesHeaders

CT = SeriesHeaders([{"Modality": "CT"}])


def write(path: Path, text: str, bump_ns: int = 0) -> None:
    """Write and move mtime forward, so that even same-size edits are seen at once."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text, encoding="utf-8")
    st = path.stat()
    if st.st_mtime_ns <= before:
        os.utime(path, ns=(st.st_atime_ns, before + 1_000_000 + bump_ns))


def fired(store: RulesStore) -> list[str]:
    return [m.rule.name for m in store.ruleset.evaluate(CT)]


def test_reload_after_edit(tmp_path: Path) -> None:
    path = tmp_path / "ct.toml"
    write(path, rule_text('Modality = "CT"', name="ct"))
    store = RulesStore(tmp_path, DESTINATIONS)
    assert fired(store) == ["ct"] and store.generation == 1
    assert store.reload_if_changed() is False and store.generation == 1
    write(path, rule_text('Modality = "MR"', name="ct"))  # same size: only mtime changes
    assert store.reload_if_changed() is True and store.generation == 2
    assert fired(store) == []


def test_invalid_edit_disables_only_that_file(tmp_path: Path) -> None:
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    write(a, rule_text('Modality = "CT"', name="a"))
    write(b, rule_text('Modality = "CT"', name="b"))
    store = RulesStore(tmp_path, DESTINATIONS)
    assert fired(store) == ["a", "b"]
    write(b, "[[rule]\n")  # syntax error
    assert store.reload_if_changed()
    assert fired(store) == ["a"]
    [error] = store.errors
    assert Path(error.file).name == "b.toml" and error.line == 1
    write(b, rule_text('Modality = "CT"', name="b"))
    assert store.reload_if_changed()
    assert fired(store) == ["a", "b"] and store.errors == []


def test_files_added_and_removed(tmp_path: Path) -> None:
    store = RulesStore(tmp_path, DESTINATIONS)
    assert store.ruleset.rules == [] and store.errors == []
    new = tmp_path / "new.toml"
    write(new, rule_text('Modality = "CT"', name="new"))
    assert store.reload_if_changed() and fired(store) == ["new"]
    new.unlink()
    assert store.reload_if_changed() and fired(store) == []


def test_destinations_change_reloads(tmp_path: Path) -> None:
    write(tmp_path / "a.toml", rule_text('Modality = "CT"', name="a"))
    store = RulesStore(tmp_path, {"archive"})
    assert fired(store) == [] and "unknown destination 'pacs'" in store.errors[0].message
    store.set_destinations(DESTINATIONS)
    assert fired(store) == ["a"]
