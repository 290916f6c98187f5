"""dump_rules round trips, and property tests: random headers never crash evaluation."""

from __future__ import annotations

import tomllib
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rules_helpers import DESTINATIONS

from routing_rules import SeriesHeaders, StudyHeaders, dump_rules, load_rules, parse_rules_text
from routing_rules.dump import toml_value

RULES = """\
[[rule]]
name = "ct-chest"
description = "CT chest \\"thin\\" -> PACS\\nsecond line"
order = 5
stop = true

[rule.match]
Modality = "CT"
BodyPartExamined = ["CHEST", "THORAX"]
SliceThickness = { gt = 0.5, lt = 2.5, scope = "all" }
"(0008,103E)" = { glob = ["*LUNG*", "*lung*"], case_sensitive = true }
ImageType = { in = ["ORIGINAL", "PRIMARY", "AXIAL"], values = "all" }
StudyDate = 2024-03-01
PatientAge = { between = ["018Y", 90] }
ContrastBolusAgent = { absent = true }

[[rule.match_any]]
SeriesDescription = { regex = "\\\\d+ ?mm" }

[[rule.match_any]]
SeriesDescription = { not_regex = "scout|topo" }

[[rule.actions]]
type = "forward"
destinations = ["pacs", "archive"]

[[rule]]
name = "petct"
level = "study"
study_match = "any-series"
enabled = false
fallback = true
match = {}
actions = [{ type = "forward", destinations = ["archive"] }]
"""


def test_dump_round_trip(tmp_path: Path) -> None:
    original = parse_rules_text(RULES, destinations=DESTINATIONS)
    assert not original.errors, original.errors
    text = dump_rules(original.rules)
    tomllib.loads(text)  # valid TOML
    (tmp_path / "export.toml").write_text(text, encoding="utf-8")
    again = load_rules(tmp_path, DESTINATIONS)
    assert not again.errors
    assert [r.to_dict() for r in again.rules] == [r.to_dict() for r in original.rules]
    assert dump_rules(again.rules) == text  # stable
    series = SeriesHeaders([{"Modality": "CT", "BodyPartExamined": "chest", "SliceThickness": "1", "SeriesDescription": "LUNG 1 mm",
                             "ImageType": "ORIGINAL\\PRIMARY\\AXIAL", "StudyDate": "20240301", "PatientAge": "040Y"}])
    assert [str(e) for e in again.explain(series)] == [str(e) for e in original.explain(series)]
    assert [m.rule.name for m in again.evaluate(series)] == ["ct-chest"]


def test_dump_layout_is_readable() -> None:
    rules = parse_rules_text(RULES, destinations=DESTINATIONS).rules
    text = dump_rules(rules)
    assert '[rule.match]\nModality = "CT"\nBodyPartExamined = ["CHEST", "THORAX"]\n' in text
    assert 'StudyDate = "20240301"' in text  # TOML date written as the DICOM form
    assert "ContrastBolusAgent = { present = false }" in text
    assert '"(0008,103E)" = { glob = ["*LUNG*", "*lung*"], case_sensitive = true }' in text
    assert "match = {}" in text


@given(st.text(max_size=40))
def test_strings_survive_toml(text: str) -> None:
    assert tomllib.loads(f"v = {toml_value(text)}")["v"] == text


# --------------------------------------------------------------------------- property: never crash

PROPERTY_RULES = parse_rules_text(
    """\
[[rule]]
name = "numbers"
match = { SliceThickness = { between = [0.5, 3] }, Rows = { ge = 256 }, PixelSpacing = { lt = 1, values = "all" } }
actions = [{ type = "forward", destinations = ["pacs"] }]

[[rule]]
name = "texts"
match = { Modality = ["CT", "MR"], SeriesDescription = { glob = "*a*" }, ImageType = { ne = "LOCALIZER" }, PatientName = { regex = "^d" } }
actions = [{ type = "forward", destinations = ["pacs"] }]

[[rule]]
name = "dates"
match = { StudyDate = { ge = "20200101" }, StudyTime = { lt = "120000" }, PatientAge = { gt = 18 }, AcquisitionDateTime = { present = true } }
actions = [{ type = "forward", destinations = ["pacs"] }]

[[rule]]
name = "private"
level = "study"
study_match = "any-series"
match = { "(0029,1010)" = { gt = 1 }, "(0029,1020)" = { glob = "*" }, ContrastBolusAgent = { absent = true, scope = "all" } }
actions = [{ type = "forward", destinations = ["pacs"] }]
""",
    destinations=DESTINATIONS,
)

FIELDS = ["SliceThickness", "Rows", "PixelSpacing", "Modality", "SeriesDescription", "ImageType", "PatientName",
          "StudyDate", "StudyTime", "PatientAge", "AcquisitionDateTime", "(0029,1010)", "(0029,1020)", "ContrastBolusAgent",
          "SeriesInstanceUID"]

scalars = st.one_of(
    st.none(),
    st.text(max_size=12),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.binary(max_size=8),
    st.sampled_from(["1\\2", "045Y", "20240101", "  ", "\x00", "nan", "1e999", "ORIGINAL\\PRIMARY\\LOCALIZER"]),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.fixed_dictionaries({"vr": st.just("PN"), "Value": st.lists(scalars, max_size=2)}))
headers = st.dictionaries(st.sampled_from(FIELDS), values, max_size=len(FIELDS))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(headers, min_size=1, max_size=4), st.lists(headers, min_size=1, max_size=3))
def test_random_headers_never_crash(first: list[dict], second: list[dict]) -> None:
    assert not PROPERTY_RULES.errors
    series = SeriesHeaders(first)
    matches = PROPERTY_RULES.evaluate(series)
    explanations = PROPERTY_RULES.explain(series)
    assert {m.rule.name for m in matches} == {e.rule.name for e in explanations if e.fired}
    assert all(str(e) for e in explanations)
    study = StudyHeaders([series, SeriesHeaders(second)])
    study_matches = PROPERTY_RULES.evaluate(study, level="study")
    assert {m.rule.name for m in study_matches} <= {"private"}
    assert all(str(e) for e in PROPERTY_RULES.explain(study, level="study"))
