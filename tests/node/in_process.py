"""The node's dispatcher run in the test process: a fixed rules source and a minimal node.toml with one PACS.

Shared by the tests that drive :class:`dicom_node.routing.dispatcher.Dispatcher`
directly (no node process, no peer), so each need not write its own.
"""
from __future__ import annotations

from pathlib import Path

from dicom_node.config import NodeConfig, load_config
from routing_rules import RuleSet, parse_rules_text


class FixedRules:
    """A rules source whose rule set the test sets (or swaps)."""

    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset

    def current(self) -> RuleSet:
        return self.ruleset


def valid_rules(text: str, **kwargs) -> RuleSet:  # type: ignore[no-untyped-def]
    """Rules parsed for the destination ``pacs``; the test fails at once on any rule error."""
    rs = parse_rules_text(text, destinations={"pacs"}, **kwargs)
    assert not rs.errors, [str(e) for e in rs.errors]
    return rs


def pacs_config(folder: Path) -> NodeConfig:
    """A node.toml in ``folder``: SQLite there, one DICOM destination ``pacs`` (never contacted)."""
    config_path = folder / "node.toml"
    config_path.write_text(
        f"[database]\nurl = 'sqlite:///{folder / 'node.db'}'\n"
        "[destinations.pacs]\ntype = 'dicom'\nae_title = 'PACS'\nhost = '127.0.0.1'\nport = 11112\n"
    )
    return load_config(config_path)
