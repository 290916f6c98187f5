"""Small builders shared by the routing_rules tests (synthetic headers only)."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset

from routing_rules import RuleSet, SeriesHeaders, parse_rules_text

DESTINATIONS = {"pacs", "archive"}


def rule_text(match: str, name: str = "r", extra: str = "", actions: str | None = None) -> str:
    """One rule with the given ``[rule.match]`` body and a forward action."""
    actions = actions if actions is not None else '[[rule.actions]]\ntype = "forward"\ndestinations = ["pacs"]\n'
    return f'[[rule]]\nname = "{name}"\n{extra}\n[rule.match]\n{match}\n\n{actions}'


def ruleset(match: str, **kwargs: Any) -> RuleSet:
    rs = parse_rules_text(rule_text(match, **kwargs), destinations=DESTINATIONS)
    assert not rs.errors, [str(e) for e in rs.errors]
    return rs


def fires(match: str, *instances: dict[str, Any]) -> bool:
    """Whether a one-rule set with this match fires for a series of these headers."""
    return bool(ruleset(match).evaluate(SeriesHeaders(instances)))


def errors(match: str) -> list[str]:
    rs = parse_rules_text(rule_text(match), destinations=DESTINATIONS)
    assert not rs.rules
    return [e.message for e in rs.errors]


def dataset(**attrs: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds
