"""Findings of header-fix models as rule fields, and the two evaluation phases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rules_helpers import DESTINATIONS, dataset, rule_text, ruleset

from routing_rules import (
    RuleSet,
    RulesStore,
    SeriesHeaders,
    StudyHeaders,
    dump_rules,
    parse_rules_text,
)

MODELS = {"enhancement-hu", "chest-view", "kidney"}
CT = {"Modality": "CT", "BodyPartExamined": "ABDOMEN", "SeriesInstanceUID": "1.2.3"}
ENHANCED = {"enhancement-hu": {"label": "enhanced", "probability": 0.93, "agrees_with_header": False}}
PLAIN = {"enhancement-hu": {"label": "non-enhanced", "probability": 0.88, "agrees_with_header": True}}


def ct(findings: dict | None = None, n: int = 3) -> SeriesHeaders:
    return SeriesHeaders([CT] * n, findings=findings)


def names(matches) -> list[str]:
    return [m.rule.name for m in matches]


def findings_phase(rs: RuleSet, headers, **kwargs) -> list[str]:
    return names(rs.evaluate(headers, phase="findings", **kwargs))


# --------------------------------------------------------------------------- writing finding fields


@pytest.mark.parametrize(
    "match",
    [
        '"finding.enhancement-hu.label" = "enhanced"',  # quoted key
        'finding.enhancement-hu.label = "enhanced"',  # bare dotted key: TOML makes nested tables of it
        'finding.enhancement-hu = { label = "enhanced" }',
        '[rule.match.finding.enhancement-hu]\nlabel = "enhanced"',  # a sub-table
    ],
)
def test_every_toml_spelling_gives_the_same_field(match: str) -> None:
    text = f'[[rule]]\nname = "r"\n[rule.match]\nModality = "CT"\n{match}\n\n[[rule.actions]]\ntype = "forward"\ndestinations = ["pacs"]\n'
    rs = parse_rules_text(text, destinations=DESTINATIONS, known_models=MODELS)
    assert not rs.errors, [str(e) for e in rs.errors]
    [rule] = rs.rules
    assert [c.field.key for c in rule.conditions] == ["Modality", "finding.enhancement-hu.label"]
    assert rule.finding_models == {"enhancement-hu"}
    assert findings_phase(rs, ct(ENHANCED)) == ["r"]
    assert findings_phase(rs, ct(PLAIN)) == []


def test_text_comparisons_ignore_case_like_header_text() -> None:
    rs = ruleset('"finding.enhancement-hu.label" = { in = ["ENHANCED", "arterial"] }')
    assert findings_phase(rs, ct({"enhancement-hu": {"label": "Enhanced"}})) == ["r"]
    assert findings_phase(rs, ct({"enhancement-hu": {"label": "venous"}})) == []


def test_booleans_compare_with_the_words_true_and_false() -> None:
    disagrees = ruleset('"finding.chest-view.agrees_with_header" = false')
    view = lambda agrees: SeriesHeaders([{"Modality": "DX"}], {"chest-view": {"agrees_with_header": agrees}})  # noqa: E731
    assert findings_phase(disagrees, view(False)) == ["r"]
    assert findings_phase(disagrees, view(True)) == []
    assert findings_phase(disagrees, view("false")) == ["r"]  # a model may report the word itself
    assert findings_phase(disagrees, view(np.bool_(False))) == ["r"]  # or a numpy boolean
    assert findings_phase(disagrees, view(None)) == []  # None: the header said nothing -> absent
    negated = ruleset('"finding.chest-view.agrees_with_header" = { ne = true }')
    assert findings_phase(negated, view(None)) == ["r"]  # absent satisfies a negated test, as for headers
    assert findings_phase(negated, view(True)) == []
    assert findings_phase(ruleset('"finding.chest-view.agrees_with_header" = { present = false }'), view(None)) == ["r"]


def test_numbers_compare_numerically() -> None:
    rs = ruleset('"finding.enhancement-hu.probability" = { ge = 0.9 }')
    assert findings_phase(rs, ct(ENHANCED)) == ["r"]
    assert findings_phase(rs, ct(PLAIN)) == []
    assert findings_phase(rs, ct({"enhancement-hu": {"probability": np.float32(0.95)}})) == ["r"]
    assert findings_phase(rs, ct({"enhancement-hu": {"probability": "0.91"}})) == ["r"]
    between = ruleset('"finding.kidney.volume_ml" = { between = [100, 250] }')
    assert findings_phase(between, ct({"kidney": {"volume_ml": 180}})) == ["r"]
    assert findings_phase(between, ct({"kidney": {"volume_ml": 300}})) == []


def test_nested_keys_and_lists() -> None:
    nested = ruleset('"finding.enhancement-hu.probabilities.enhanced" = { gt = 0.5 }')
    found = {"enhancement-hu": {"probabilities": {"enhanced": 0.7, "non-enhanced": 0.3}}}
    assert findings_phase(nested, ct(found)) == ["r"]
    assert findings_phase(nested, ct({"enhancement-hu": {"probabilities": {"enhanced": 0.2}}})) == []
    flat_key = {"enhancement-hu": {"probabilities.enhanced": 0.9}}  # a key that itself holds a dot wins
    assert findings_phase(nested, ct(flat_key)) == ["r"]
    several = ruleset('"finding.kidney.sides" = "left"')
    assert findings_phase(several, ct({"kidney": {"sides": ["left", "right"]}})) == ["r"]


def test_missing_key_of_a_reported_model_is_absent_not_awaited() -> None:
    rs = ruleset('"finding.enhancement-hu.label" = "enhanced"')
    [explanation] = rs.explain(ct({"enhancement-hu": {}}), phase="findings")
    assert explanation.status == "not_matched"
    assert str(explanation) == "rule 'r' did not fire: finding.enhancement-hu.label is absent, wanted 'enhanced'"


# --------------------------------------------------------------------------- load-time checks


def load_errors(match: str, known_models=MODELS) -> list[tuple[int | None, str]]:
    text = rule_text(match)
    rs = parse_rules_text(text, "f.toml", DESTINATIONS, known_models=known_models)
    assert not rs.rules
    return [(e.line, e.message) for e in rs.errors]


def test_finding_without_key_is_an_error_with_its_line() -> None:
    [(line, message)] = load_errors('Modality = "CT"\n"finding.enhancement-hu" = "enhanced"')
    assert line == 6
    assert message.startswith("finding field 'finding.enhancement-hu' needs a model name and a key")
    [(line, message)] = load_errors('Modality = "CT"\n"finding.x" = 1')
    assert line == 6 and "'finding.x' needs a model name and a key" in message
    [(line, message)] = load_errors('Modality = "CT"\nfinding.enhancement-hu = "enhanced"')
    assert line == 6 and "finding.enhancement-hu: name a key" in message
    [(_, message)] = load_errors('"finding.a b.label" = 1')
    assert "model names and keys are letters, digits" in message


def test_unknown_model_is_an_error_when_models_are_known() -> None:
    [(line, message)] = load_errors('Modality = "CT"\n"finding.enhancment-hu.label" = "enhanced"')
    assert line == 6
    assert message == (
        "finding.enhancment-hu.label: unknown model 'enhancment-hu'; did you mean 'enhancement-hu'? "
        "known: chest-view, enhancement-hu, kidney"
    )
    rs = parse_rules_text(rule_text('"finding.enhancment-hu.label" = "x"'), destinations=DESTINATIONS)
    assert rs.rules and not rs.errors  # known_models=None: not checked


def test_unquoted_nested_key_is_explained() -> None:
    [(_, message)] = load_errors("finding.enhancement-hu.probabilities.enhanced = { gt = 0.5 }")
    assert 'must be quoted as a whole, e.g. "finding.enhancement-hu.probabilities.enhanced"' in message


def test_booleans_stay_an_error_for_header_fields() -> None:
    [(_, message)] = load_errors("ContrastBolusAgent = true")
    assert "true/false is not a value to compare" in message


def test_finding_in_match_any_and_known_models_through_the_store(tmp_path: Path) -> None:
    text = rule_text(
        'Modality = "CT"',
        extra='[[rule.match_any]]\n"finding.chest-view.label" = "PA"\n[[rule.match_any]]\n"finding.kidny.side" = "left"\n',
    )
    (tmp_path / "a.toml").write_text(text, encoding="utf-8")
    store = RulesStore(tmp_path, DESTINATIONS, known_models=MODELS)
    [error] = store.errors
    assert "unknown model 'kidny'" in error.message and error.line == 6
    assert RulesStore(tmp_path, DESTINATIONS).ruleset.rules[0].finding_models == {"chest-view", "kidny"}


# --------------------------------------------------------------------------- phases

PHASED = """\
[[rule]]
name = "archive-ct"
match = { Modality = "CT" }
actions = [{ type = "forward", destinations = ["archive"] }]

[[rule]]
name = "kidney-when-enhanced"
match = { Modality = "CT", "finding.enhancement-hu.label" = "enhanced" }
actions = [{ type = "forward", destinations = ["pacs"] }]

[[rule]]
name = "needs-two-models"
match = { "finding.enhancement-hu.label" = "enhanced", "finding.kidney.found" = true }
actions = [{ type = "forward", destinations = ["pacs"] }]
"""


def test_headers_phase_skips_findings_rules_until_findings_arrive() -> None:
    rs = parse_rules_text(PHASED, destinations=DESTINATIONS, known_models=MODELS)
    assert [r.finding_models for r in rs.rules] == [frozenset(), {"enhancement-hu"}, {"enhancement-hu", "kidney"}]
    assert [r.is_findings_rule for r in rs.rules] == [False, True, True]
    assert names(rs.evaluate(ct(ENHANCED))) == ["archive-ct"]  # findings present, still the headers phase
    assert [str(e) for e in rs.explain(ct())] == [
        "rule 'archive-ct' fired: Modality is 'CT' (wanted 'CT')",
        "rule 'kidney-when-enhanced' is waiting for findings of enhancement-hu",
        "rule 'needs-two-models' is waiting for findings of enhancement-hu, kidney",
    ]
    assert [e.status for e in rs.explain(ct(ENHANCED))] == ["fired", "other_phase", "awaiting_findings"]
    assert str(rs.explain(ct(ENHANCED))[1]) == (
        "rule 'kidney-when-enhanced' uses findings of enhancement-hu: evaluated in the findings phase, not here"
    )


def test_findings_phase_evaluates_ready_findings_rules_only() -> None:
    rs = parse_rules_text(PHASED, destinations=DESTINATIONS, known_models=MODELS)
    explained = rs.explain(ct(ENHANCED), phase="findings")
    assert [e.status for e in explained] == ["other_phase", "fired", "awaiting_findings"]
    assert explained[2].waiting_for == ("kidney",)
    assert str(explained[0]) == "rule 'archive-ct' reads headers only: evaluated in the headers phase, not here"
    assert str(explained[1]) == (
        "rule 'kidney-when-enhanced' fired: Modality is 'CT' (wanted 'CT'); "
        "finding.enhancement-hu.label is 'enhanced' (wanted 'enhanced')"
    )
    both = {**ENHANCED, "kidney": {"found": True}}
    assert findings_phase(rs, ct(both)) == ["kidney-when-enhanced", "needs-two-models"]
    assert findings_phase(rs, ct(PLAIN)) == []


def test_triggered_by_judges_each_rule_once() -> None:
    rs = parse_rules_text(PHASED, destinations=DESTINATIONS, known_models=MODELS)
    both = {**ENHANCED, "kidney": {"found": True}}
    # enhancement-hu reported first: the rule that needs it alone fires then ...
    assert findings_phase(rs, ct(ENHANCED), triggered_by={"enhancement-hu"}) == ["kidney-when-enhanced"]
    # ... and when kidney reports later, only the rule that waited for kidney is judged
    explained = rs.explain(ct(both), phase="findings", triggered_by=["kidney"])
    assert [e.status for e in explained] == ["other_phase", "not_triggered", "fired"]
    assert str(explained[1]) == "rule 'kidney-when-enhanced' was not evaluated: none of its models (enhancement-hu) just reported"
    with pytest.raises(ValueError, match="findings phase only"):
        rs.evaluate(ct(both), triggered_by=["kidney"])
    with pytest.raises(ValueError, match="phase must be"):
        rs.evaluate(ct(both), phase="later")  # type: ignore[arg-type]


STOP_AND_FALLBACK = """\
[[rule]]
name = "drop-localizers"
order = 1
stop = true
match = { ImageType = { eq = "LOCALIZER", scope = "all" } }
actions = [{ type = "forward", destinations = ["archive"] }]

[[rule]]
name = "kidney-when-enhanced"
match = { "finding.enhancement-hu.label" = "enhanced" }
actions = [{ type = "forward", destinations = ["pacs"] }]

[[rule]]
name = "headers-fallback"
fallback = true
match = {}
actions = [{ type = "forward", destinations = ["archive"] }]

[[rule]]
name = "findings-fallback"
fallback = true
match = { "finding.enhancement-hu.label" = { present = true } }
actions = [{ type = "forward", destinations = ["archive"] }]
"""


def test_a_header_stop_rule_also_ends_the_findings_phase() -> None:
    rs = parse_rules_text(STOP_AND_FALLBACK, destinations=DESTINATIONS)
    localizers = SeriesHeaders([{"Modality": "CT", "ImageType": "ORIGINAL\\PRIMARY\\LOCALIZER"}], ENHANCED)
    assert names(rs.evaluate(localizers)) == ["drop-localizers"]
    explained = rs.explain(localizers, phase="findings")
    assert [e.status for e in explained] == ["other_phase", "stopped", "stopped", "stopped"]
    assert explained[1].stopped_by == "drop-localizers"
    axial = SeriesHeaders([{"Modality": "CT", "ImageType": "ORIGINAL\\PRIMARY\\AXIAL"}], ENHANCED)
    assert findings_phase(rs, axial) == ["kidney-when-enhanced"]


def test_fallbacks_act_within_their_phase() -> None:
    rs = parse_rules_text(STOP_AND_FALLBACK, destinations=DESTINATIONS)
    axial = [{"Modality": "CT", "ImageType": "ORIGINAL\\PRIMARY\\AXIAL"}]
    assert names(rs.evaluate(SeriesHeaders(axial, ENHANCED))) == ["headers-fallback"]
    assert findings_phase(rs, SeriesHeaders(axial, ENHANCED)) == ["kidney-when-enhanced"]
    explained = rs.explain(SeriesHeaders(axial, PLAIN), phase="findings")
    assert [e.status for e in explained] == ["other_phase", "not_matched", "other_phase", "fired"]


# --------------------------------------------------------------------------- headers API


def test_headers_carry_findings_read_only() -> None:
    source = {"enhancement-hu": {"label": "enhanced"}}
    series = SeriesHeaders.from_dicts([CT], findings=source)
    source["enhancement-hu"]["label"] = "changed later"
    assert series.findings["enhancement-hu"]["label"] == "enhanced"
    assert series.finding_models == {"enhancement-hu"}
    with pytest.raises(TypeError):
        series.findings["x"] = {}  # type: ignore[index]
    from_ds = SeriesHeaders.from_datasets([dataset(Modality="CT")], findings=PLAIN)
    assert from_ds.finding_models == {"enhancement-hu"} and len(from_ds) == 1
    later = SeriesHeaders([CT] * 4).with_findings(ENHANCED)
    assert len(later) == 4 and later.series_uid == "1.2.3" and later.finding_models == {"enhancement-hu"}
    with pytest.raises(TypeError, match="findings must be"):
        SeriesHeaders([CT], findings={"enhancement-hu": "enhanced"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="findings must be"):
        SeriesHeaders([CT], findings=[("enhancement-hu", {})])  # type: ignore[arg-type]


def series(uid: str, modality: str, findings: dict | None = None) -> SeriesHeaders:
    return SeriesHeaders([{"Modality": modality, "SeriesInstanceUID": uid}] * 2, findings)


STUDY_RULE = """\
[[rule]]
name = "enhanced-ct-in-study"
level = "study"
match = { Modality = "CT", "finding.enhancement-hu.label" = "enhanced" }
actions = [{ type = "forward", destinations = ["pacs"] }]

[[rule]]
name = "any-series-union"
level = "study"
study_match = "any-series"
match = { "finding.enhancement-hu.label" = "enhanced", "(0008,0060)" = "PT" }
actions = [{ type = "forward", destinations = ["pacs"] }]
"""


def test_study_level_findings_per_series_and_for_the_study() -> None:
    rs = parse_rules_text(STUDY_RULE, destinations=DESTINATIONS)
    study = StudyHeaders([series("1", "CT", PLAIN), series("2", "CT", ENHANCED), series("3", "PT")])
    assert study.finding_models == {"enhancement-hu"}
    hits = rs.evaluate(study, level="study", phase="findings")
    assert [(m.rule.name, m.series_uids) for m in hits] == [
        ("enhanced-ct-in-study", ("2",)),
        ("any-series-union", ("1", "2", "3")),  # the enhanced CT and the PT are different series
    ]
    # without any finding in the study the rules wait
    waiting = rs.explain(StudyHeaders([series("1", "CT"), series("3", "PT")]), level="study", phase="findings")
    assert [e.status for e in waiting] == ["awaiting_findings", "awaiting_findings"]
    # study-level findings reach every series that has none of its own; a series' own findings win
    with_study = StudyHeaders([series("1", "CT"), series("2", "CT", PLAIN)], findings=ENHANCED)
    assert with_study.findings == ENHANCED
    assert [s.findings["enhancement-hu"]["label"] for s in with_study.series] == ["enhanced", "non-enhanced"]
    assert [m.series_uids for m in rs.evaluate(with_study, level="study", phase="findings")] == [("1",)]


def test_from_instances_takes_series_findings() -> None:
    rs = parse_rules_text(STUDY_RULE, destinations=DESTINATIONS)
    instances = [{"Modality": "CT", "SeriesInstanceUID": uid} for uid in ("1", "1", "2")]
    study = StudyHeaders.from_instances(instances, series_findings={"2": ENHANCED})
    assert [len(s) for s in study] == [2, 1]
    assert [m.series_uids for m in rs.evaluate(study, level="study", phase="findings")] == [("2",)]


# --------------------------------------------------------------------------- writing back


def test_dump_round_trips_finding_fields() -> None:
    text = rule_text(
        'Modality = "CT"\nfinding.enhancement-hu.label = "enhanced"\n'
        '"finding.chest-view.agrees_with_header" = false\n'
        '"finding.enhancement-hu.probabilities.enhanced" = { ge = 0.8, scope = "all" }\n'
        '"finding.kidney.side" = { in = ["left", "right"] }'
    )
    original = parse_rules_text(text, destinations=DESTINATIONS, known_models=MODELS)
    assert not original.errors, original.errors
    dumped = dump_rules(original.rules)
    assert '"finding.enhancement-hu.label" = "enhanced"' in dumped
    assert '"finding.chest-view.agrees_with_header" = false' in dumped
    again = parse_rules_text(dumped, destinations=DESTINATIONS, known_models=MODELS)
    assert not again.errors
    assert [r.to_dict() for r in again.rules] == [r.to_dict() for r in original.rules]
    assert dump_rules(again.rules) == dumped


# --------------------------------------------------------------------------- the documented examples


def test_documented_kidney_and_expression_examples_do_what_the_text_says() -> None:
    from test_rules_docs import doc_rules

    rs = doc_rules()
    abdomen = [{"Modality": "CT", "BodyPartExamined": "ABDOMEN", "SliceThickness": "1.0", "ContrastBolusAgent": ""}]
    fired_now = names(rs.evaluate(SeriesHeaders(abdomen)))
    assert "check-enhancement" in fired_now and "kidney-when-enhanced" not in fired_now
    # the header says no contrast; the HU check says enhanced: the kidney model runs
    sure = {"enhancement-hu": {"label": "enhanced", "probability": 0.97}}
    assert findings_phase(rs, SeriesHeaders(abdomen, sure)) == ["kidney-when-enhanced"]
    assert findings_phase(rs, SeriesHeaders(abdomen, {"enhancement-hu": {"label": "enhanced", "probability": 0.6}})) == []
    assert findings_phase(rs, SeriesHeaders(abdomen, {"enhancement-hu": {"label": "non-enhanced", "probability": 0.99}})) == []
    chest = {"Modality": "CT", "BodyPartExamined": "Chest", "SliceThickness": "1.0"}
    assert "ct-chest-plain-thin" in names(rs.evaluate(SeriesHeaders([chest])))
    assert "ct-chest-plain-thin" not in names(rs.evaluate(SeriesHeaders([{**chest, "ContrastBolusAgent": "IOPAMIDOL"}])))
    dx = [{"Modality": "DX", "BodyPartExamined": "CHEST", "ViewPosition": "PA"}]
    for agrees, expected in [(True, ["cxr-view-consistent"]), (None, ["cxr-view-consistent"]), (False, ["view-disagrees"])]:
        view = {"chest-view": {"label": "AP", "probability": 0.95, "agrees_with_header": agrees}}
        assert findings_phase(rs, SeriesHeaders(dx, view)) == expected
