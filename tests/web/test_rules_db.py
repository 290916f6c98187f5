"""The database rule source: versions, live reload, order, validation lines, import/export round trip."""
from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from dicom_node.db import Database
from dicom_node.db.admin_models import AuditEntry
from dicom_node.routing import rule_editing, rule_sources
from routing_rules import load_rules

DESTS = {"pacs", "archive"}


def rule_text(name: str, modality: str = "CT", order: int | None = None, comment: str = "") -> str:
    order_line = f"order = {order}\n" if order is not None else ""
    return (f"{comment}[[rule]]\nname = \"{name}\"\n{order_line}\n[rule.match]\nModality = \"{modality}\"\n\n"
            f"[[rule.actions]]\ntype = \"forward\"\ndestinations = [\"pacs\"]\n")


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'node.db'}")
    yield database
    database.dispose()


def test_versions_are_appended_and_audited(db: Database) -> None:
    text = rule_text("ct", comment="# routes every CT\n")
    first = rule_editing.save_rule(db, text.replace("\n", "\r\n"), author="ann", note="new", destinations=DESTS)
    assert first.ok and first.version is not None and first.version.version == 1
    assert first.version.toml_text == text  # CRLF from a browser stored as LF
    again = rule_editing.save_rule(db, text, author="ann", destinations=DESTS, name="ct")
    assert again.unchanged and again.version is not None and again.version.version == 1
    edited = rule_editing.save_rule(db, text.replace('"CT"', '"MR"'), author="bob", note="MR now", destinations=DESTS, name="ct")
    assert edited.version is not None and edited.version.version == 2
    assert '-Modality = "CT"' in edited.diff and '+Modality = "MR"' in edited.diff
    disabled = rule_editing.set_enabled(db, "ct", False, author="bob")
    assert disabled is not None and disabled.version == 3 and not disabled.enabled
    assert "enabled = false" in disabled.toml_text and "# routes every CT" in disabled.toml_text  # comments kept
    with db.session() as session:
        history = rule_sources.history(session, "ct")
        audit = [(e.action, e.username, e.target) for e in session.scalars(select(AuditEntry).order_by(AuditEntry.id))]
    assert [h.version for h in history] == [3, 2, 1]
    assert [h.author for h in history] == ["bob", "bob", "ann"]
    assert history[1].change_note == "MR now"
    assert audit == [("rule.create", "ann", "ct"), ("rule.edit", "bob", "ct"), ("rule.disable", "bob", "ct")]
    deleted = rule_editing.delete_rule(db, "ct", author="cy")
    assert deleted is not None and deleted.deleted and deleted.version == 4
    with db.session() as session:
        assert rule_sources.latest_versions(session) == []
    recreated = rule_editing.save_rule(db, text, author="cy", destinations=DESTS)
    assert recreated.version is not None and recreated.version.version == 5  # numbering continues after a delete


def test_errors_point_at_the_line(db: Database) -> None:
    text = rule_text("ct").replace('["pacs"]', '["pacz"]')
    result = rule_editing.save_rule(db, text, author="ann", destinations=DESTS)
    assert not result.ok
    (error,) = result.errors
    assert "pacz" in error.message and text.split("\n")[error.line - 1].startswith("destinations")
    rule_editing.save_rule(db, rule_text("ct"), author="ann", destinations=DESTS)
    renamed = rule_editing.save_rule(db, rule_text("ct2"), author="ann", destinations=DESTS, name="ct")
    assert not renamed.ok and renamed.errors[0].line == 2 and "cannot change" in renamed.errors[0].message
    duplicate = rule_editing.save_rule(db, rule_text("ct", "MR"), author="ann", destinations=DESTS)
    assert not duplicate.ok and "exists already" in duplicate.errors[0].message
    two = rule_editing.save_rule(db, rule_text("a") + "\n" + rule_text("b"), author="ann", destinations=DESTS)
    assert not two.ok and "exactly one" in two.errors[0].message


def test_live_source_reloads_and_orders(db: Database) -> None:
    source = rule_sources.DatabaseRules(db, DESTS)
    assert source.current().rules == [] and not source.reload_if_changed()
    for name in ("b", "a", "c"):
        rule_editing.save_rule(db, rule_text(name), author="ann", destinations=DESTS)
    assert source.reload_if_changed()
    assert [r.name for r in source.current().rules] == ["a", "b", "c"]  # equal order: by name
    assert source.current().rules[0].file == "db:a@v1"
    assert not source.reload_if_changed()
    changed = rule_editing.move(db, "c", -2, author="ann")
    assert changed == ["c", "a", "b"]
    assert source.reload_if_changed()
    assert [(r.name, r.order) for r in source.current().rules] == [("c", 10), ("a", 20), ("b", 30)]
    rule_editing.set_enabled(db, "a", False, author="ann")
    source.reload_if_changed()
    assert [r.name for r in source.current().rules if r.enabled] == ["c", "b"]
    # a destination that left node.toml makes the stored rule invalid: reported, left out
    narrower = rule_sources.DatabaseRules(db, {"archive"})
    assert narrower.current().rules == [] and len(narrower.current().errors) == 3
    assert "db:c@v2" in str(narrower.current().errors[0])


def test_set_top_key_inserts_and_replaces() -> None:
    text = rule_text("x")
    inserted = rule_editing.set_top_key(text, "enabled", "false")
    assert inserted.split("\n")[2] == "enabled = false"  # right after the name, before [rule.match]
    assert rule_editing.set_top_key(inserted, "enabled", "true").count("enabled") == 1


def test_import_export_round_trip(db: Database, tmp_path: Path) -> None:
    source = tmp_path / "git-rules"
    source.mkdir()
    (source / "10-ct.toml").write_text(rule_text("ct-chest", order=5, comment="# thin chest CT to PACS\n"))
    (source / "20-more.toml").write_text(rule_text("mr-all", "MR") + "\n" + rule_text("dx-all", "DX").replace("pacs", "archive"))
    (source / "30-bad.toml").write_text(rule_text("broken").replace('Modality = "CT"', 'Modalty = "CT"'))
    report = rule_editing.import_from_folder(db, source, author="cli:test", destinations=DESTS)
    assert sorted(report.created) == ["ct-chest", "dx-all", "mr-all"]
    assert len(report.errors) == 1 and "Modalty" in report.errors[0].message
    with db.session() as session:
        stored = {r.rule_name: r.toml_text for r in rule_sources.latest_versions(session)}
    assert stored["ct-chest"].startswith("# thin chest CT to PACS")  # a one-rule file is kept verbatim

    out = tmp_path / "export"
    written = rule_editing.export_to_folder(db, out, author="cli:test")
    assert [p.name for p in written] == ["001-ct-chest.toml", "002-dx-all.toml", "003-mr-all.toml"]
    exported = load_rules(out, DESTS)
    with db.session() as session:
        in_db = rule_sources.build_ruleset(rule_sources.latest_versions(session), DESTS)
    assert [r.to_dict() for r in exported.rules] == [r.to_dict() for r in in_db.rules]
    assert not exported.errors

    fresh = Database(f"sqlite:///{tmp_path / 'other.db'}")
    again = rule_editing.import_from_folder(fresh, out, author="cli:test", destinations=DESTS)
    assert sorted(again.created) == ["ct-chest", "dx-all", "mr-all"] and not again.errors and not again.warnings
    with fresh.session() as session:
        assert {r.rule_name: r.toml_text for r in rule_sources.latest_versions(session)} == stored
    assert rule_editing.import_from_folder(fresh, out, author="cli:test", destinations=DESTS).unchanged == ["ct-chest", "dx-all", "mr-all"]
    fresh.dispose()

    # an export after a rule was deleted removes its old file, and a pruning import deletes rules not in the folder
    rule_editing.delete_rule(db, "dx-all", author="ann")
    assert [p.name for p in rule_editing.export_to_folder(db, out)] == ["001-ct-chest.toml", "002-mr-all.toml"]
    assert sorted(p.name for p in out.iterdir()) == ["001-ct-chest.toml", "002-mr-all.toml"]
    (source / "20-more.toml").unlink()
    pruned = rule_editing.import_from_folder(db, source, author="cli:test", destinations=DESTS, delete_missing=True)
    assert pruned.deleted == ["mr-all"] and pruned.unchanged == ["ct-chest"]


def test_equal_orders_warn_on_import(db: Database, tmp_path: Path) -> None:
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "1.toml").write_text(rule_text("zeta"))
    (folder / "2.toml").write_text(rule_text("alpha"))
    report = rule_editing.import_from_folder(db, folder, author="t", destinations=DESTS)
    assert report.warnings and "zeta, alpha" in report.warnings[0]
