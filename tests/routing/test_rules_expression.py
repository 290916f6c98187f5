"""``when`` expressions: semantics, load-time errors, explanations, round trips."""

from __future__ import annotations

import time

import pytest
from rules_helpers import DESTINATIONS

from routing_rules import (
    ExpressionError,
    SeriesHeaders,
    StudyHeaders,
    dump_rules,
    parse_expression,
    parse_rules_text,
)
from routing_rules import expression as expression_module
from routing_rules.fields import Observed

ISSUE_EXAMPLE = (
    "Modality == 'CT' and upper(BodyPartExamined) in ('CHEST', 'THORAX') "
    "and SliceThickness <= 2.5 and not present(ContrastBolusAgent)"
)


def when_rules(when: str, match: str = "", extra: str = "", tables: str = "", known_models=None):
    """One rule with this expression; ``extra`` holds rule keys, ``tables`` sub-tables (written last)."""
    text = f'[[rule]]\nname = "w"\n{extra}\nwhen = """{when}"""\n'
    if match:
        text += f"match = {{ {match} }}\n"
    text += 'actions = [{ type = "forward", destinations = ["pacs"] }]\n' + tables
    rs = parse_rules_text(text, "w.toml", DESTINATIONS, known_models=known_models)
    assert not rs.errors, [str(e) for e in rs.errors]
    return rs


def holds(when: str, *instances: dict, findings: dict | None = None) -> bool:
    rs = when_rules(when)
    phase = "findings" if rs.rules[0].finding_models else "headers"
    return bool(rs.evaluate(SeriesHeaders(instances, findings), phase=phase))


CHEST = {"Modality": "CT", "BodyPartExamined": "chest", "SliceThickness": "1.25"}


def test_the_issue_example() -> None:
    assert holds(ISSUE_EXAMPLE, CHEST)
    assert holds(ISSUE_EXAMPLE, {**CHEST, "BodyPartExamined": "Thorax", "ContrastBolusAgent": ""})  # empty = absent
    assert not holds(ISSUE_EXAMPLE, {**CHEST, "ContrastBolusAgent": "IOHEXOL"})
    assert not holds(ISSUE_EXAMPLE, {**CHEST, "SliceThickness": "5"})
    assert not holds(ISSUE_EXAMPLE, {**CHEST, "Modality": "MR"})
    assert not holds(ISSUE_EXAMPLE, {**CHEST, "BodyPartExamined": "ABDOMEN"})


def test_series_holds_when_any_instance_does() -> None:
    thick, thin = {**CHEST, "SliceThickness": "5"}, CHEST
    assert holds("SliceThickness <= 2.5", thick, thick, thin)
    assert not holds("SliceThickness <= 2.5", thick, thick)
    # both parts must hold in the same instance: here they hold in different ones
    assert not holds("SliceThickness <= 2.5 and ImageType == 'LOCALIZER'",
                     {**thin, "ImageType": "ORIGINAL\\PRIMARY\\AXIAL"}, {**thick, "ImageType": "ORIGINAL\\PRIMARY\\LOCALIZER"})


def test_absent_values_are_none_and_comparisons_with_none_are_false() -> None:
    assert not holds("Modality == 'CT'", {})
    assert not holds("Modality != 'CT'", {})  # none compares false, != included
    assert holds("not (Modality == 'CT')", {})
    assert holds("absent(Modality) or Modality != 'CT'", {})
    assert not holds("Modality in ('CT', 'MR')", {}) and not holds("Modality not in ('CT', 'MR')", {})
    assert not holds("SliceThickness < 1", {"SliceThickness": ""})


def test_multi_valued_attributes_follow_match_semantics() -> None:
    localizer = {"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}
    axial = {"ImageType": "ORIGINAL\\PRIMARY\\AXIAL"}
    assert holds("ImageType == 'LOCALIZER'", localizer)  # some value is
    assert not holds("ImageType != 'LOCALIZER'", localizer)  # != means no value is
    assert holds("ImageType != 'LOCALIZER'", axial)
    assert holds("ImageType not in ('LOCALIZER', 'DERIVED')", axial)
    assert not holds("ImageType not in ('LOCALIZER', 'DERIVED')", localizer)
    assert holds("contains(ImageType, 'LOCAL')", localizer)


def test_text_is_case_sensitive_and_helpers_fold_case() -> None:
    assert not holds("BodyPartExamined == 'CHEST'", CHEST)
    assert holds("upper(BodyPartExamined) == 'CHEST'", CHEST)
    assert holds("lower(Modality) == 'ct'", CHEST)
    described = {"SeriesDescription": "Thorax 1.0 B70f LUNG"}
    assert holds("contains(SeriesDescription, 'LUNG')", described)
    assert not holds("contains(SeriesDescription, 'lung')", described)
    assert holds("contains(lower(SeriesDescription), 'lung')", described)
    assert holds("startswith(SeriesDescription, 'Thorax') and endswith(SeriesDescription, 'LUNG')", described)
    assert holds("len(SeriesDescription) == 20", described)
    assert holds("len(SeriesDescription) > 3 and not startswith(SeriesDescription, 'Abd')", described)


def test_numbers_dates_and_ages() -> None:
    assert holds("SliceThickness == 1.25", {"SliceThickness": "1.250"})
    assert holds("0.5 <= SliceThickness <= 2.5", CHEST)  # a chain: each link holds
    assert not holds("2 <= SliceThickness <= 2.5", CHEST)
    assert holds("Rows >= 512 and Columns == '512'", {"Rows": 512, "Columns": "512"})
    assert holds("SliceThickness == -1.5", {"SliceThickness": "-1.5"})
    assert holds("PatientAge >= 18 and PatientAge < 65", {"PatientAge": "045Y"})
    assert not holds("PatientAge >= 18", {"PatientAge": "006M"})
    assert holds("PatientAge == '045Y'", {"PatientAge": "045Y"})
    assert holds("StudyDate >= '2024-01-01'", {"StudyDate": "20240301"})  # written the TOML way, compared the DICOM way
    assert holds("StudyDate >= '20240101'", {"StudyDate": "2024.03.01"})  # old-style header dots dropped
    assert not holds("StudyDate >= '20240101'", {"StudyDate": "20231231"})
    assert holds("StudyDate in ('2024-03-01', '20240302')", {"StudyDate": "20240301"})
    assert holds("Modality == 'CT' and SliceThickness != 5", CHEST)
    assert not holds("SliceThickness < 'abc'", CHEST)  # a text that is no number never orders with one


def test_private_tags_and_true_false() -> None:
    assert holds("tag('(0029,1010)') > 3", {"(0029,1010)": "4"})
    assert holds("tag('00291010') == 'SIEMENS CSA'", {"00291010": "SIEMENS CSA"})
    assert holds("true", {}) and not holds("false", {}) and not holds("not true or false", {})
    assert holds("present(tag('(0029,1010)'))", {"(0029,1010)": "x"})


def test_findings_in_expressions() -> None:
    found = {"enhancement-hu": {"label": "enhanced", "probability": 0.93}, "chest-view": {"agrees_with_header": False}}
    assert holds("finding.enhancement-hu.label == 'enhanced' and finding.enhancement-hu.probability >= 0.9", CHEST, findings=found)
    assert holds("finding('enhancement-hu', 'label') == 'enhanced'", CHEST, findings=found)
    assert holds("not finding.chest-view.agrees_with_header", CHEST, findings=found)
    assert holds("finding.chest-view.agrees_with_header == false", CHEST, findings=found)
    assert not holds("finding.chest-view.agrees_with_header", CHEST, findings=found)
    assert holds("absent(finding.enhancement-hu.phase)", CHEST, findings=found)
    rs = when_rules("Modality == 'CT' and finding.enhancement-hu.label == 'enhanced' or finding('kidney', 'found')")
    assert rs.rules[0].finding_models == {"enhancement-hu", "kidney"}
    [waiting] = rs.explain(SeriesHeaders([CHEST], {"kidney": {"found": True}}), phase="findings")
    assert str(waiting) == "rule 'w' is waiting for findings of enhancement-hu"


def test_when_is_anded_with_match_and_match_any() -> None:
    rs = when_rules("SliceThickness <= 2.5", match='Modality = "CT"',
                    tables='[[rule.match_any]]\nBodyPartExamined = "CHEST"\n[[rule.match_any]]\nBodyPartExamined = "LUNG"\n')
    assert rs.evaluate(SeriesHeaders([CHEST]))
    assert not rs.evaluate(SeriesHeaders([{**CHEST, "Modality": "MR"}]))
    assert not rs.evaluate(SeriesHeaders([{**CHEST, "BodyPartExamined": "HEAD"}]))
    assert not rs.evaluate(SeriesHeaders([{**CHEST, "SliceThickness": "3"}]))


def test_study_level_expressions() -> None:
    def series(uid: str, modality: str, body: str) -> SeriesHeaders:
        return SeriesHeaders([{"SeriesInstanceUID": uid, "Modality": modality, "BodyPartExamined": body}])

    study = StudyHeaders([series("1", "CT", "ABDOMEN"), series("2", "PT", "CHEST")])
    same = when_rules("Modality == 'CT' and BodyPartExamined == 'CHEST'", extra='level = "study"')
    assert not same.evaluate(study, level="study")
    hit = same.evaluate(StudyHeaders([series("1", "CT", "ABDOMEN"), series("3", "CT", "CHEST")]), level="study")
    assert [m.series_uids for m in hit] == [("3",)]
    # any-series judges the study's instances: still one instance must satisfy the whole expression
    union = when_rules("Modality == 'PT' or BodyPartExamined == 'HEAD'", extra='level = "study"\nstudy_match = "any-series"')
    assert [m.series_uids for m in union.evaluate(study, level="study")] == [("1", "2")]


# --------------------------------------------------------------------------- explanations


def test_explain_names_the_failing_part_with_values() -> None:
    rs = when_rules(ISSUE_EXAMPLE)
    [no] = rs.explain(SeriesHeaders([{**CHEST, "BodyPartExamined": "ABDOMEN"}] * 3))
    assert str(no) == (
        f'rule \'w\' did not fire: when "{ISSUE_EXAMPLE}" is false: '
        "\"upper(BodyPartExamined) in ('CHEST', 'THORAX')\" holds for no instance (BodyPartExamined is 'ABDOMEN')"
    )
    apart = SeriesHeaders([{**CHEST, "ContrastBolusAgent": "IOHEXOL"}, {**CHEST, "SliceThickness": "5"}])
    [no] = rs.explain(apart)
    assert str(no).endswith(
        "its parts hold only in different instances (Modality is 'CT'; BodyPartExamined is 'chest'; "
        "SliceThickness has 1.25 (1 instance), 5 (1 instance); ContrastBolusAgent has 'IOHEXOL' (1 instance), absent (1 instance))"
    )
    [yes] = rs.explain(SeriesHeaders([CHEST, CHEST, {**CHEST, "SliceThickness": "5"}]))
    assert str(yes) == f'rule \'w\' fired: when "{ISSUE_EXAMPLE}" holds in 2 of 3 instances'
    [single] = when_rules("Modality == 'MR'").explain(SeriesHeaders([CHEST]))
    assert str(single) == "rule 'w' did not fire: when \"Modality == 'MR'\" is false (Modality is 'CT')"


def test_explain_reports_conditions_before_the_expression() -> None:
    rs = when_rules("SliceThickness < 1", match='Modality = "MR"')
    [no] = rs.explain(SeriesHeaders([CHEST]))
    assert str(no) == "rule 'w' did not fire: Modality is 'CT', wanted 'MR'"
    [yes] = when_rules("SliceThickness < 2", match='Modality = "CT"').explain(SeriesHeaders([CHEST]))
    assert str(yes) == "rule 'w' fired: Modality is 'CT' (wanted 'CT'); when \"SliceThickness < 2\" holds"


# --------------------------------------------------------------------------- load-time errors


def load_errors(text: str, known_models=None) -> list[str]:
    rs = parse_rules_text(text, "rules/w.toml", DESTINATIONS, known_models=known_models)
    assert not rs.rules
    return [str(e) for e in rs.errors]


def rule_with(when_line: str) -> str:
    return f'[[rule]]\nname = "x"\n{when_line}\nactions = [{{ type = "forward", destinations = ["pacs"] }}]\n'


@pytest.mark.parametrize(
    ("when_line", "message"),
    [
        ("when = \"Modality == 'CT' and open('/etc/passwd')\"", "when: unknown function 'open' (known: contains, "),
        ("when = \"Modalty == 'CT'\"", "when: unknown field 'Modalty': not a DICOM keyword nor a tag like (0018,0015); did you mean 'Modality'? at column 1"),
        ("when = \"Modality == 'CT' and\"", "when: syntax error: invalid syntax at the end of the expression"),
        ("when = \"Modality == == 'CT'\"", "when: syntax error: invalid syntax at column 13"),
        ("when = \"Modality is None\"", "when: 'is' is not supported: use == or != (or present() / absent()) at column 13"),
        ("when = \"Modality == none\"", "when: comparisons with none are always false: test present(X) or absent(X) instead at column 13"),
        ("when = \"Modality\"", "when: Modality is a value, not a condition: compare it, e.g. Modality == ... at column 1"),
        ("when = \"SeriesDescription in 'LUNG'\"", "when: 'in' needs a list of values, like ('CT', 'MR'); to look for a text inside a value use contains() at column 22"),
        ("when = \"StudyDate > '2024-3-1'\"", "when: StudyDate (DA): '2024-3-1' is not of the form YYYYMMDD at column 13"),
        ("when = \"SliceThickness * 2 > 3\"", "when: arithmetic is not supported at column 1"),
        ("when = \"present(ReferencedImageSequence) and ReferencedImageSequence == 'x'\"", "when: ReferencedImageSequence holds sequence data: only present() / absent() can test it at column 38"),
        ("when = \"upper(Modality, 'x') == 'CT'\"", "when: upper() takes 1 argument (2 given) at column 1"),
        ("when = \"contains(SeriesDescription, text='x')\"", "when: contains() takes no keyword arguments at column 34"),
        ("when = \"finding.enhancement == 'x'\"", "when: finding field 'finding.enhancement' needs a model name and a key"),
        ("when = \"finding.enhancment-hu.label == 'x'\"", "when: finding.enhancment-hu.label: unknown model 'enhancment-hu'; did you mean 'enhancement-hu'?"),
        ("when = 42", "'when' must be a text"),
        ("when = \"  \"", "when: the expression is empty"),
    ],
)
def test_errors_carry_file_line_and_column(when_line: str, message: str) -> None:
    [error] = load_errors(rule_with(when_line), known_models={"enhancement-hu"})
    assert error.startswith("rules/w.toml:3: rule 'x': " + message), error


def test_multi_line_expressions_report_line_and_column() -> None:
    text = '[[rule]]\nname = "x"\nwhen = """\nModality == \'CT\'\n  and Rows >= 512\n  and eval(\'1\')"""\nactions = [{ type = "forward", destinations = ["pacs"] }]\n'
    [error] = load_errors(text)
    assert error.startswith("rules/w.toml:3: rule 'x': when: unknown function 'eval'")
    assert error.endswith("at line 3, column 7")  # line 3 of the expression (TOML drops the first newline)
    ok = text.replace("eval('1')", "Columns >= 512")
    rs = parse_rules_text(ok, destinations=DESTINATIONS)
    assert rs.evaluate(SeriesHeaders([{"Modality": "CT", "Rows": 512, "Columns": 512}]))


def test_match_is_optional_when_there_is_an_expression() -> None:
    rs = parse_rules_text(rule_with("when = \"Modality == 'CT'\""), destinations=DESTINATIONS)
    assert rs.rules and not rs.rules[0].conditions
    [error] = load_errors(rule_with('description = "neither"'))
    assert "'match' is missing" in error


def test_limits_are_errors() -> None:
    for text, fragment in [
        ("x" * 2001, "longer than 2000 characters"),
        (" and ".join(["Rows == 1"] * 70), "too complex"),
        ("not " * 40 + "true", "nested too deeply"),
        ("Modality in (" + ", ".join(["'CT'"] * 101) + ")", "more than 100 items"),
        ("Modality == '" + "x" * 1500 + "'", "text longer than 1024 characters"),
        ("Rows == 10000000000000000000", "number too large"),
        ("Rows == 1e999", "numbers must be finite"),
        ("Rows == 1j", "complex constants are not supported"),
        ("Modality == b'CT'", "bytes constants are not supported"),
    ]:
        with pytest.raises(ExpressionError, match=fragment):
            parse_expression(text)


# --------------------------------------------------------------------------- objects, round trip, budget


def test_expression_objects() -> None:
    expr = parse_expression("  Modality == 'CT' and finding.kidney.found  ", known_models={"kidney"})
    assert expr.source == "Modality == 'CT' and finding.kidney.found"
    assert [f.key for f in expr.fields] == ["Modality", "finding.kidney.found"]
    assert expr.finding_models == {"kidney"}
    assert expr == parse_expression("Modality == 'CT' and finding.kidney.found")
    assert expr.evaluate([Observed(("CT",), True), Observed(("true",), True)])
    assert not expr.evaluate([Observed(("CT",), True), Observed((), False)])


def test_dump_round_trips_when() -> None:
    text = (
        '[[rule]]\nname = "expr"\nwhen = """\nModality == "CT"\n  and contains(SeriesDescription, \'\\\\d mm\')"""\n'
        'match = { "finding.kidney.found" = true }\nactions = [{ type = "forward", destinations = ["pacs"] }]\n'
        '[[rule]]\nname = "only-when"\nwhen = "not present(ContrastBolusAgent)"\n'
        'actions = [{ type = "forward", destinations = ["archive"] }]\n'
    )
    original = parse_rules_text(text, destinations=DESTINATIONS)
    assert not original.errors, original.errors
    dumped = dump_rules(original.rules)
    assert 'when = "Modality == \\"CT\\"\\n  and contains(SeriesDescription, \'\\\\d mm\')"' in dumped
    again = parse_rules_text(dumped, destinations=DESTINATIONS)
    assert not again.errors
    assert [r.to_dict() for r in again.rules] == [r.to_dict() for r in original.rules]
    assert [r.when for r in again.rules] == [r.when for r in original.rules]
    assert dump_rules(again.rules) == dumped


def test_work_is_bounded_on_hostile_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    expr = parse_expression(" or ".join(f"contains(lower(SeriesDescription), upper(ImageType)) and len(ImageType) > {i}" for i in range(12)))
    huge = {"SeriesDescription": ["a" * 5000] * 500, "ImageType": ["A" * 3000] * 500}
    series = SeriesHeaders([{**huge, "InstanceNumber": i} for i in range(50)])
    rs = when_rules(expr.source + " or InstanceNumber < 0")
    start = time.perf_counter()
    rs.explain(series)
    assert time.perf_counter() - start < 2.0
    # with a tiny budget the instance counts as not matching, and the explanation says why
    monkeypatch.setattr(expression_module, "STEPS_PER_ROW", 3)
    [no] = when_rules("upper(Modality) in ('CT', 'MR') and SliceThickness < 3").explain(SeriesHeaders([CHEST]))
    assert "evaluation gave up on 1 of 1 instances: too much work" in str(no)
