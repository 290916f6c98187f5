"""The admin tables on PostgreSQL: migration, rule versions (a column named "order"), audit, metrics, logins."""
from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.db import Database
from dicom_node.ops.metrics import render_metrics
from dicom_node.routing import rule_editing, rule_sources
from tests.node.test_postgres import postgres_url  # noqa: F401 - the throwaway-cluster fixture
from tests.web.conftest import PASSWORD

pytestmark = [pytest.mark.peers, pytest.mark.postgres]
RULE = '[[rule]]\nname = "{name}"\n\n[rule.match]\nModality = "CT"\n\n[[rule.actions]]\ntype = "forward"\ndestinations = ["pacs"]\n'


def test_admin_tables_on_postgresql(postgres_url: str, tmp_path: Path) -> None:  # noqa: F811
    from dicom_node.web import auth

    db = Database(postgres_url)
    try:
        for name in ("b", "a"):
            assert rule_editing.save_rule(db, RULE.format(name=name), author="pg", destinations={"pacs"}).ok
        assert rule_editing.move(db, "b", -1, author="pg") == ["b", "a"]
        rule_editing.set_enabled(db, "a", False, author="pg")
        source = rule_sources.DatabaseRules(db, {"pacs"})
        assert [(r.name, r.order, r.enabled) for r in source.current().rules] == [("b", 10, True), ("a", 20, False)]
        out = rule_editing.export_to_folder(db, tmp_path / "out")
        assert [p.name for p in out] == ["001-b.toml", "002-a.toml"]
        assert rule_editing.import_from_folder(db, tmp_path / "out", author="pg", destinations={"pacs"}).unchanged == ["b", "a"]
        auth.create_user(db, "pguser", PASSWORD, "viewer", created_by="pg")
        assert isinstance(auth.login(db, "pguser", PASSWORD, hours=1, client="t"), tuple)
        assert isinstance(auth.login(db, "pguser", "wrong-password", hours=1, client="t"), str)
        text = render_metrics(db, source)
        assert "dicom_node_rules_enabled 1" in text and 'dicom_node_deliveries{state="failed"} 0' in text
    finally:
        db.dispose()
