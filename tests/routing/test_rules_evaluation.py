"""Series-as-a-whole and study semantics, ordering, stop/fallback, explain()."""

from __future__ import annotations

import pytest
from rules_helpers import DESTINATIONS, dataset, rule_text, ruleset

from routing_rules import SeriesHeaders, StudyHeaders, parse_rules_text


def mr_series(uid: str = "1.2.1", with_localizer: bool = True, n: int = 5) -> SeriesHeaders:
    """An MR series of axial images, optionally with one localizer first."""
    images = [dataset(Modality="MR", SeriesInstanceUID=uid, ImageType=["ORIGINAL", "PRIMARY", "AXIAL"]) for _ in range(n)]
    if with_localizer:
        images.insert(0, dataset(Modality="MR", SeriesInstanceUID=uid, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]))
    return SeriesHeaders(images)


def test_series_any_instance_is_default() -> None:
    series = mr_series()
    assert ruleset('ImageType = "AXIAL"').evaluate(series)  # first file is the localizer: still matches
    assert ruleset('ImageType = "LOCALIZER"').evaluate(series)


def test_scope_all_requires_every_instance() -> None:
    assert not ruleset('ImageType = { eq = "AXIAL", scope = "all" }').evaluate(mr_series())
    assert ruleset('ImageType = { eq = "AXIAL", scope = "all" }').evaluate(mr_series(with_localizer=False))


def test_all_mr_except_localizer_series() -> None:
    rs = ruleset('Modality = "MR"\nImageType = { ne = "LOCALIZER" }')
    assert rs.evaluate(mr_series())  # mixed series: its axial images qualify
    only_localizer = SeriesHeaders([dataset(Modality="MR", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])] * 3)
    assert not rs.evaluate(only_localizer)
    strict = ruleset('Modality = "MR"\nImageType = { ne = "LOCALIZER", scope = "all" }')
    assert not strict.evaluate(mr_series())


def test_scope_all_failure_names_the_offending_instances() -> None:
    series = SeriesHeaders([{"SliceThickness": "1"}] * 7 + [{"SliceThickness": "5"}] * 3)
    [explanation] = ruleset('SliceThickness = { lt = 2.5, scope = "all" }').explain(series)
    assert str(explanation) == "rule 'r' did not fire: SliceThickness is 5 in 3 of 10 instances, wanted < 2.5 in every instance"


def study(*series: SeriesHeaders) -> StudyHeaders:
    return StudyHeaders(series)


def ct(uid: str, body: str, **extra: str) -> SeriesHeaders:
    return SeriesHeaders([{"Modality": "CT", "BodyPartExamined": body, "SeriesInstanceUID": uid, **extra}] * 2)


def pt(uid: str, body: str) -> SeriesHeaders:
    return SeriesHeaders([{"Modality": "PT", "BodyPartExamined": body, "SeriesInstanceUID": uid}])


def study_rules(match: str, mode: str | None = None):
    extra = 'level = "study"' + (f'\nstudy_match = "{mode}"' if mode else "")
    return ruleset(match, extra=extra)


def test_study_same_series_needs_one_series_with_all_conditions() -> None:
    rs = study_rules('Modality = "CT"\nBodyPartExamined = "CHEST"')
    hit = rs.evaluate(study(ct("1", "ABDOMEN"), ct("2", "CHEST"), pt("3", "CHEST")), level="study")
    assert [m.series_uids for m in hit] == [("2",)]
    # CT abdomen + PT chest: both conditions hold somewhere, but not in one series
    assert not rs.evaluate(study(ct("1", "ABDOMEN"), pt("3", "CHEST")), level="study")


def test_study_any_series_takes_the_union() -> None:
    rs = study_rules('Modality = "CT"\nBodyPartExamined = "CHEST"', mode="any-series")
    hit = rs.evaluate(study(ct("1", "ABDOMEN"), pt("3", "CHEST")), level="study")
    assert len(hit) == 1 and hit[0].series_uids == ("1", "3")
    both = study_rules('Modality = "CT"\n"(0008,0060)" = "PT"', mode="any-series")  # "has a CT and a PT series"
    assert both.evaluate(study(ct("1", "CHEST"), pt("3", "CHEST")), level="study")
    assert not both.evaluate(study(ct("1", "CHEST")), level="study")


def test_study_level_explain_lists_series() -> None:
    rs = study_rules('Modality = "CT"\nBodyPartExamined = "CHEST"')
    [e] = rs.explain(study(ct("1", "ABDOMEN"), pt("3", "CHEST")), level="study")
    assert not e.fired
    assert "series 1: BodyPartExamined is 'ABDOMEN', wanted 'CHEST'" in e.failure
    assert "series 3: Modality is 'PT', wanted 'CT'" in e.failure


def test_study_from_instances_groups_by_series_uid() -> None:
    headers = [{"SeriesInstanceUID": "a", "Modality": "CT"}, {"SeriesInstanceUID": "b", "Modality": "SR"}, {"SeriesInstanceUID": "a", "Modality": "CT"}]
    grouped = StudyHeaders.from_instances(headers)
    assert [(s.series_uid, len(s)) for s in grouped] == [("a", 2), ("b", 1)]


def test_level_separation_and_type_checks() -> None:
    rs = parse_rules_text(
        rule_text('Modality = "CT"', name="s") + "\n" + rule_text('Modality = "CT"', name="t", extra='level = "study"'),
        destinations=DESTINATIONS,
    )
    series = ct("1", "CHEST")
    assert [m.rule.name for m in rs.evaluate(series)] == ["s"]
    assert [m.rule.name for m in rs.evaluate(series, level="study")] == ["t"]  # a lone series is a study of one
    statuses = {e.rule.name: e.status for e in rs.explain(series)}
    assert statuses == {"s": "fired", "t": "other_level"}
    with pytest.raises(TypeError):
        rs.evaluate(study(series), level="series")
    with pytest.raises(ValueError):
        rs.evaluate(series, level="patient")  # type: ignore[arg-type]


def test_match_any_groups() -> None:
    text = rule_text('Modality = "MR"') + '\n[[rule.match_any]]\nSeriesDescription = { glob = "*T1*" }\n\n[[rule.match_any]]\nSeriesDescription = { glob = "*FLAIR*" }\n'
    rs = parse_rules_text(text, destinations=DESTINATIONS)
    assert not rs.errors
    assert rs.evaluate(SeriesHeaders([{"Modality": "MR", "SeriesDescription": "ax flair"}]))
    assert not rs.evaluate(SeriesHeaders([{"Modality": "MR", "SeriesDescription": "dwi"}]))
    [e] = rs.explain(SeriesHeaders([{"Modality": "MR", "SeriesDescription": "dwi"}]))
    assert e.failure.startswith("no match_any group holds (group 1: SeriesDescription is 'dwi', wanted to match '*T1*'")


def rules(*parts: str):
    rs = parse_rules_text("\n".join(parts), destinations=DESTINATIONS)
    assert not rs.errors, rs.errors
    return rs


def _rule(name: str, match: str, extra: str = "") -> str:
    """A rule whose match may be empty (written inline)."""
    actions = '[[rule.actions]]\ntype = "forward"\ndestinations = ["archive"]\n'
    if not match:
        return f'[[rule]]\nname = "{name}"\n{extra}\nmatch = {{}}\n\n{actions}'
    return rule_text(match, name=name, extra=extra, actions=actions)


def test_order_stop_and_fallback() -> None:
    rs = rules(
        _rule("archive-all", "", "order = 200"),
        _rule("drop-sr", 'Modality = "SR"', "order = 10\nstop = true"),
        _rule("ct-pacs", 'Modality = "CT"'),
        _rule("old", 'Modality = "CT"', "enabled = false"),
        _rule("other", 'Modality = "XA"', "fallback = true"),
        _rule("unknown-modality", "", "fallback = true"),
    )
    assert [r.name for r in rs.rules] == ["drop-sr", "ct-pacs", "old", "other", "unknown-modality", "archive-all"]
    names = lambda headers: [m.rule.name for m in rs.evaluate(SeriesHeaders([headers]))]  # noqa: E731
    assert names({"Modality": "CT"}) == ["ct-pacs", "archive-all"]
    assert names({"Modality": "SR"}) == ["drop-sr"]
    by_status = {e.rule.name: e.status for e in rs.explain(SeriesHeaders([{"Modality": "SR"}]))}
    assert by_status == {
        "drop-sr": "fired",
        "ct-pacs": "stopped",
        "old": "disabled",
        "other": "stopped",
        "unknown-modality": "stopped",
        "archive-all": "stopped",
    }
    fallback_only = rules(_rule("ct", 'Modality = "CT"'), _rule("rest", "", "fallback = true"))
    assert [m.rule.name for m in fallback_only.evaluate(SeriesHeaders([{"Modality": "MR"}]))] == ["rest"]
    states = {e.rule.name: e.status for e in fallback_only.explain(SeriesHeaders([{"Modality": "CT"}]))}
    assert states == {"ct": "fired", "rest": "fallback_unused"}


def test_explain_messages() -> None:
    rs = rules(
        rule_text('Modality = "CT"\nBodyPartExamined = ["CHEST"]', name="ct-chest"),
        rule_text('Modality = "CT"\nSliceThickness = { le = 2.5 }', name="ct-thin"),
    )
    series = SeriesHeaders([{"Modality": "CT", "BodyPartExamined": "ABDOMEN", "SliceThickness": "1.0"}] * 4)
    by_name = {e.rule.name: e for e in rs.explain(series)}
    assert str(by_name["ct-chest"]) == "rule 'ct-chest' did not fire: BodyPartExamined is 'ABDOMEN', wanted one of ['CHEST']"
    assert str(by_name["ct-thin"]) == "rule 'ct-thin' fired: Modality is 'CT' (wanted 'CT'); SliceThickness is 1.0 (wanted <= 2.5)"
    [match] = rs.evaluate(series)
    assert match.reasons == by_name["ct-thin"].reasons
    assert match.actions[0].destinations == ("pacs",)


def test_explain_first_failing_condition_only() -> None:
    rs = ruleset('Modality = "CT"\nBodyPartExamined = "CHEST"')
    [e] = rs.explain(SeriesHeaders([{"Modality": "MR"}]))
    assert e.failure == "Modality is 'MR', wanted 'CT'"


def test_explain_mixed_values_and_absent() -> None:
    rs = ruleset('BodyPartExamined = "CHEST"')
    series = SeriesHeaders([{"BodyPartExamined": "ABDOMEN"}, {"BodyPartExamined": "ABDOMEN"}, {"Modality": "CT"}])
    [e] = rs.explain(series)
    assert e.failure == "BodyPartExamined has 'ABDOMEN' (2 instances), absent (1 instance), wanted 'CHEST'"


def test_reasons_tell_how_many_instances_matched() -> None:
    [match] = ruleset('ImageType = "LOCALIZER"').evaluate(mr_series())
    assert match.reasons == ("ImageType is 'ORIGINAL\\PRIMARY\\LOCALIZER' (wanted 'LOCALIZER') in 1 of 6 instances",)


def test_empty_headers_rejected() -> None:
    with pytest.raises(ValueError):
        SeriesHeaders([])
    with pytest.raises(TypeError):
        SeriesHeaders(["not a header"])  # type: ignore[list-item]
