"""Rule text written to hurt: backtracking regexes, deep nesting, look-alike names, hidden direction changes, PHI in reasons."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from routing_rules import ExpressionError, RulesStore, SeriesHeaders, load_rules, parse_expression, parse_rules_text
from routing_rules.patterns import MAX_MATCH_CHARS
from routing_rules.textcheck import MAX_NESTING

RULE = '[[rule]]\nname = "{name}"\n{body}\n[[rule.actions]]\ntype = "forward"\ndestinations = ["pacs"]\n'


def rule(body: str, name: str = "r") -> str:
    return RULE.format(name=name, body=body)


def errors_of(text: str) -> list[str]:
    return [str(e) for e in parse_rules_text(text, "t.toml").errors]


# --------------------------------------------------------------------------- 15.6 regexes


@pytest.mark.timeout(60)  # a backtracking engine needs about 26 s for 28 characters, and never ends for 4000
def test_nested_quantifier_is_linear_in_the_value() -> None:
    rs = parse_rules_text(rule('[rule.match]\nSeriesDescription = { regex = "(a+)+$" }'))
    assert not rs.errors
    for length in (28, MAX_MATCH_CHARS - 1):
        series = SeriesHeaders([{"SeriesDescription": "a" * length + "!"}])
        start = time.perf_counter()
        fired = rs.evaluate(series)
        elapsed = time.perf_counter() - start
        assert fired == [] and elapsed < 1.0, (length, elapsed)
    assert [m.rule.name for m in rs.evaluate(SeriesHeaders([{"SeriesDescription": "aaaa"}]))] == ["r"]
    start = time.perf_counter()  # longer than the cap: matched on its first characters (all a), as documented
    assert rs.evaluate(SeriesHeaders([{"SeriesDescription": "a" * 10_000 + "!"}]))
    assert time.perf_counter() - start < 1.0


def test_regexes_keep_their_case_rule_under_re2() -> None:
    rs = parse_rules_text(rule('[rule.match]\nSeriesDescription = { regex = "t1|t2" }'))
    assert rs.evaluate(SeriesHeaders([{"SeriesDescription": "AX T2 FLAIR"}]))
    strict = parse_rules_text(rule('[rule.match]\nSeriesDescription = { regex = "t1", case_sensitive = true }'))
    assert not strict.evaluate(SeriesHeaders([{"SeriesDescription": "AX T1"}]))


@pytest.mark.parametrize(
    ("pattern", "feature"),
    [
        (r"(a)\\1", "backreferences"),
        (r"(?P<x>a)(?P=x)", "backreferences"),
        ("^(?!LOC)", "lookahead and lookbehind"),
        ("(?<=AX )T1", "lookahead and lookbehind"),
        ("(?>a+)b", "atomic groups"),
        ("a++", "possessive"),
    ],
)
def test_patterns_re2_cannot_run_are_errors_of_their_rule(pattern: str, feature: str) -> None:
    text = rule(f'[rule.match]\nModality = "CT"\nSeriesDescription = {{ regex = "{pattern}" }}', "bad") + rule(
        '[rule.match]\nModality = "CT"', "good"
    )
    rs = parse_rules_text(text, "t.toml")
    assert [r.name for r in rs.rules] == ["good"]
    (error,) = rs.errors
    assert error.rule_name == "bad" and error.line == 5 and feature in error.message and "RE2" in error.message


def test_long_values_are_matched_on_their_first_characters() -> None:
    rs = parse_rules_text(rule('[rule.match]\nSeriesDescription = { regex = "END" }'))
    assert rs.evaluate(SeriesHeaders([{"SeriesDescription": "x" * (MAX_MATCH_CHARS - 3) + "END"}]))
    assert not rs.evaluate(SeriesHeaders([{"SeriesDescription": "x" * MAX_MATCH_CHARS + "END"}]))


# --------------------------------------------------------------------------- 15.7 nesting


def deep_array(depth: int) -> str:
    return rule(f'[rule.match]\nModality = "CT"\n[rule.extra]\nx = {"[" * depth}{"]" * depth}')


def deep_inline_table(depth: int) -> str:
    return rule(f'[rule.match]\nModality = "CT"\n[rule.extra]\nx = {"{a=" * depth}1{"}" * depth}')


@pytest.mark.parametrize("text", [deep_array(10_000), deep_inline_table(5_000), deep_array(MAX_NESTING + 1)])
def test_deep_nesting_is_an_error_of_its_file(text: str) -> None:
    (error,) = parse_rules_text(text, "deep.toml").errors
    assert error.file == "deep.toml" and error.line == 6 and f"nested deeper than {MAX_NESTING} levels" in error.message


def test_deep_dotted_keys_are_an_error_of_their_file() -> None:
    (error,) = parse_rules_text(rule("[rule.match]\nModality" + ".a" * 10_000 + ' = "CT"'), "deep.toml").errors
    assert f"nested deeper than {MAX_NESTING} levels" in error.message


def test_brackets_in_strings_and_comments_do_not_count() -> None:
    brackets = "[" * 50 + "{" * 50
    text = rule(f'# {brackets}\n[rule.match]\nSeriesDescription = {{ glob = "{brackets}*" }}\n'
                f"ProtocolName = {{ glob = '{brackets}' }}\nStudyDescription = \"\"\"{brackets}\\\"\"\"\"\"\n")
    assert errors_of(text) == []


def test_a_deep_file_leaves_the_other_files_working(tmp_path: Path) -> None:
    (tmp_path / "10-good.toml").write_text(rule('[rule.match]\nModality = "CT"', "good"))
    (tmp_path / "20-deep.toml").write_text(deep_array(10_000))
    rs = load_rules(tmp_path)
    assert [r.name for r in rs.rules] == ["good"]
    (error,) = rs.errors
    assert error.file.endswith("20-deep.toml") and "nested deeper" in error.message


def test_live_reload_reports_a_deep_file_and_drops_its_rules(tmp_path: Path) -> None:
    (tmp_path / "10-good.toml").write_text(rule('[rule.match]\nModality = "CT"', "good"))
    (tmp_path / "20-other.toml").write_text(rule('[rule.match]\nModality = "MR"', "other"))
    store = RulesStore(tmp_path)
    assert [r.name for r in store.ruleset.rules] == ["good", "other"]
    (tmp_path / "20-other.toml").write_text(deep_inline_table(5_000))
    assert store.reload_if_changed()
    assert [r.name for r in store.ruleset.rules] == ["good"]
    assert [e.file.endswith("20-other.toml") and "nested deeper" in e.message for e in store.errors] == [True]


@pytest.mark.parametrize("text", ["(" * 10_000 + "Modality == 'CT'" + ")" * 10_000, "(" * 900 + "Modality == 'CT'" + ")" * 900, "not " * 450 + "Modality == 'CT'"])
def test_deep_expressions_are_refused(text: str) -> None:
    with pytest.raises(ExpressionError):
        parse_expression(text)
    (error,) = parse_rules_text(rule(f'when = "{text}"'), "t.toml").errors
    assert error.rule_name == "r" and error.line == 3


# --------------------------------------------------------------------------- 15.13 look-alike names, direction controls


@pytest.mark.parametrize("text", ["\uff2dodality == 'CT'", "Modality == 'CT' and upper(BodyPart\uff25xamined) == 'CHEST'",
                                  "\uff55pper(Modality) == 'CT'", "finding.chest-view.\uff4cabel == 'PA'"])
def test_non_ascii_names_are_refused(text: str) -> None:
    with pytest.raises(ExpressionError, match="non-ASCII"):
        parse_expression(text)


def test_non_ascii_name_error_names_the_place() -> None:
    with pytest.raises(ExpressionError) as caught:
        parse_expression("Modality == 'CT' and\n  Series\uff24escription == 'AX'", None)
    assert caught.value.line == 2 and caught.value.column == 3
    (error,) = parse_rules_text(rule('when = """Modality == \'CT\' and\n  Series\uff24escription == \'AX\'"""'), "t.toml").errors
    assert error.line == 3 and "non-ASCII" in error.message
    assert parse_expression("SeriesDescription == '\u00c9TUDE'")  # accents in texts are data: allowed


@pytest.mark.parametrize("char", ["\u202e", "\u202a", "\u2066", "\u2069", "\u200f", "\u200e", "\u061c"])
def test_bidi_controls_are_refused_in_expressions(char: str) -> None:
    with pytest.raises(ExpressionError, match=f"U\\+{ord(char):04X}") as caught:
        parse_expression(f"Modality == 'CT{char}' or Modality == 'MR'")
    assert caught.value.column == 16


@pytest.mark.parametrize("where", ["# comment \u202e\n", 'SeriesDescription = "AX\u2067 T1"\n', '"Modal\u200fity" = "CT"\n'])
def test_bidi_controls_are_refused_anywhere_in_a_rule_file(where: str) -> None:
    text = rule(f'[rule.match]\nModality = "CT"\n{where}')
    (error,) = parse_rules_text(text, "t.toml").errors
    assert error.line == 5 and "bidirectional control character" in error.message


# --------------------------------------------------------------------------- 17.5 PHI stays out of reasons

NAME = "SYNTHETIC^PHANTOM"


def explanations(body: str, headers: dict[str, str]) -> str:
    rs = parse_rules_text(rule(body))
    assert not rs.errors, rs.errors
    return "\n".join(str(e) for e in rs.explain(SeriesHeaders([headers])))


@pytest.mark.parametrize(
    ("body", "word"),
    [
        (f'[rule.match]\nPatientName = "{NAME}"', "PatientName"),
        ('[rule.match]\n"(0010,0010)" = { glob = "SYNTH*" }', "(0010,0010)"),
        ('[rule.match]\nPatientID = { regex = "^PID-7" }', "PatientID"),
        ('[rule.match]\nAccessionNumber = ["ACC-123", "ACC-124"]', "AccessionNumber"),
        (f"match = {{}}\n[[rule.match_any]]\nPatientName = \"{NAME}\"\n[[rule.match_any]]\nModality = \"XX\"", "PatientName"),
    ],
)
def test_phi_values_are_not_in_reasons(body: str, word: str) -> None:
    fired = explanations(body, {"PatientName": NAME, "PatientID": "PID-77", "AccessionNumber": "ACC-123"})
    assert "fired" in fired and f"{word} matched" in fired
    missed = explanations(body, {"PatientName": "OTHER^PERSON", "PatientID": "X-PID-7", "AccessionNumber": "ACC-999"})
    assert "did not fire" in missed and f"{word} did not match" in missed
    for secret in (NAME, "SYNTH", "PID-7", "ACC-12", "OTHER^PERSON", "ACC-999"):
        assert secret not in fired and secret not in missed


def test_phi_in_a_when_expression_hides_its_text_and_the_values() -> None:
    body = f"when = \"Modality == 'CT' and upper(PatientName) == '{NAME}'\""
    fired = explanations(body, {"Modality": "CT", "PatientName": NAME})
    assert "fired" in fired and "it tests PatientName" in fired
    missed = explanations(body, {"Modality": "CT", "PatientName": "OTHER^PERSON"})
    assert "part 2 holds for no instance" in missed and "PatientName not shown" in missed
    assert NAME not in fired + missed and "OTHER^PERSON" not in missed


def test_other_fields_still_show_their_values() -> None:
    missed = explanations('[rule.match]\nModality = "MR"\nPatientName = { present = true }', {"Modality": "CT"})
    assert "Modality is 'CT', wanted 'MR'" in missed
