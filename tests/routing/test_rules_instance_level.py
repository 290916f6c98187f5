"""Instance-level rules: judged on one object as it is stored, forward only, no findings."""

from __future__ import annotations

import pytest

from routing_rules import SeriesHeaders, parse_rules_text
from routing_rules.actions import builtin_registry
from tests.routing.rules_helpers import DESTINATIONS, rule_text

MODELS = {"enhancement-hu"}


def test_an_instance_rule_loads_and_is_only_judged_at_instance_level() -> None:
    text = rule_text('Modality = "DX"', name="dx-now", extra='level = "instance"') + rule_text('Modality = "DX"', name="dx-series")
    rs = parse_rules_text(text, destinations=DESTINATIONS)
    assert not rs.errors, [str(e) for e in rs.errors]
    assert rs.get("dx-now").level == "instance"
    one = SeriesHeaders([{"Modality": "DX"}])
    assert [m.rule.name for m in rs.evaluate(one, level="instance")] == ["dx-now"]
    assert [m.rule.name for m in rs.evaluate(one, level="series")] == ["dx-series"]
    explained = {e.rule.name: e.status for e in rs.explain(one, level="series")}
    assert explained == {"dx-now": "other_level", "dx-series": "fired"}
    assert not rs.evaluate(SeriesHeaders([{"Modality": "CT"}]), level="instance")
    assert rs.get("dx-now").to_dict()["level"] == "instance"  # written back as it was read


def test_an_instance_rule_with_a_series_wide_action_is_refused_with_the_reason() -> None:
    registry = builtin_registry().with_type("model", lambda params, ctx: {"model": params.get("model")})
    actions = '[[rule.actions]]\ntype = "forward"\ndestinations = ["pacs"]\n[[rule.actions]]\ntype = "model"\nmodel = "lung"\n'
    rs = parse_rules_text(rule_text('Modality = "CT"', extra='level = "instance"', actions=actions),
                          destinations=DESTINATIONS, registry=registry)
    assert not rs.rules
    (error,) = rs.errors
    assert "action type 'model' needs a whole series" in error.message and "forward" in error.message
    assert error.line is not None


@pytest.mark.parametrize("match", ['"finding.enhancement-hu.label" = "enhanced"'])
def test_an_instance_rule_cannot_read_findings(match: str) -> None:
    rs = parse_rules_text(rule_text(match, extra='level = "instance"'), destinations=DESTINATIONS, known_models=MODELS)
    assert not rs.rules
    assert any("cannot read findings of enhancement-hu" in e.message for e in rs.errors)
    when = parse_rules_text(rule_text("", extra='level = "instance"\nwhen = "finding.enhancement-hu.label == \'enhanced\'"'),
                            destinations=DESTINATIONS, known_models=MODELS)
    assert not when.rules and any("cannot read findings" in e.message for e in when.errors)


def test_unknown_level_names_all_three() -> None:
    rs = parse_rules_text(rule_text('Modality = "CT"', extra='level = "image"'), destinations=DESTINATIONS)
    assert any('"instance", "series" or "study"' in e.message for e in rs.errors)


def test_the_documented_example_forwards_chest_radiographs_one_by_one() -> None:
    from tests.routing.test_rules_docs import doc_rules

    rs = doc_rules()
    assert rs.get("dx-to-pacs-now").level == "instance"
    chest_dx = SeriesHeaders([{"Modality": "DX", "BodyPartExamined": "CHEST"}])
    assert "dx-to-pacs-now" in {m.rule.name for m in rs.evaluate(chest_dx, level="instance")}
    assert "dx-to-pacs-now" not in {m.rule.name for m in rs.evaluate(chest_dx, level="series")}
    knee = SeriesHeaders([{"Modality": "DX", "BodyPartExamined": "KNEE"}])
    assert "dx-to-pacs-now" not in {m.rule.name for m in rs.evaluate(knee, level="instance")}
