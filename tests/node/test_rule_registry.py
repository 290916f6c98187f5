"""The node's action types are passed to its loaders, never registered process-wide.

The library's own tests used to need a fixture that undid what the node had
registered in a shared registry; these tests show there is nothing to undo.
"""
from __future__ import annotations

from pathlib import Path

from dicom_node.config import load_config
from dicom_node.db import Database
from dicom_node.routing import rule_editing
from dicom_node.routing.actions import NODE_ACTIONS
from dicom_node.routing.rule_sources import NodeRules, configured_ruleset
from routing_rules import builtin_registry, load_rules, parse_rules_text

MODEL_RULE = """
[[rule]]
name = "ct-enhancement"
[rule.match]
Modality = "CT"
[[rule.actions]]
type = "model"
model = "enhancement-hu"
outputs = ["sr"]
destinations = ["pacs"]
"""


def _config(tmp_path: Path):  # type: ignore[no-untyped-def]
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10-model.toml").write_text(MODEL_RULE)
    (tmp_path / "node.toml").write_text(
        f"[database]\nurl = 'sqlite:///{tmp_path / 'node.db'}'\n[rules]\nfolder = '{rules}'\n"
        "[destinations.pacs]\ntype = 'dicom'\nae_title = 'PACS'\nhost = '127.0.0.1'\nport = 11112\n"
    )
    return load_config(tmp_path / "node.toml")


def test_the_node_loads_model_rules_and_a_plain_loader_still_refuses_them(tmp_path: Path) -> None:
    config = _config(tmp_path)
    db = Database(config.database_url)
    try:
        live = NodeRules(config).current()
        fresh = configured_ruleset(config, db)
        rule, errors = rule_editing.check_rule_text(MODEL_RULE, {"pacs"})
    finally:
        db.dispose()
    for ruleset in (live, fresh):
        assert not ruleset.errors, [str(e) for e in ruleset.errors]
        assert [a.type for a in ruleset.rules[0].actions] == ["model"]
    assert rule is not None and not errors
    # ... and in the same process, a loader that was given no registry knows `forward` only
    [error] = load_rules(config.rules_folder, {"pacs"}).errors
    assert error.message.startswith("unknown action type 'model' (known: forward)")
    assert builtin_registry().names() == ["forward"] and NODE_ACTIONS.names() == ["forward", "model"]


def test_the_node_registry_checks_model_actions_against_the_catalog() -> None:
    [error] = parse_rules_text(MODEL_RULE.replace("enhancement-hu", "no-such-model"), destinations={"pacs"}, registry=NODE_ACTIONS).errors
    assert "no-such-model" in error.message and error.rule_name == "ct-enhancement"
