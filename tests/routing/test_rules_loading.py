"""Loading rule folders: errors with file and line, isolation of bad rules, actions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rules_helpers import DESTINATIONS

from routing_rules import (
    ActionError,
    ActionRegistry,
    SeriesHeaders,
    builtin_registry,
    load_rules,
    parse_rules_text,
)

GOOD = """\
# CT of the chest goes to the PACS
[[rule]]
name = "ct-chest"
description = "CT chest"

[rule.match]
Modality = "CT"
BodyPartExamined = ["CHEST", "THORAX"]

[[rule.actions]]
type = "forward"
destinations = ["pacs"]
"""

MIXED = """\
[[rule]]
name = "mr-brain"
[rule.match]
Modality = "MR"
BodyPartExamined = "BRAIN"
[[rule.actions]]
type = "forward"
destinations = ["archive"]

[[rule]]
name = "typo-field"
[rule.match]
Modality = "MR"
BodyPart = "KNEE"
[[rule.actions]]
type = "forward"
destinations = ["pacs"]

[[rule]]
name = "bad-regex"
[rule.match]
SeriesDescription = { regex = "t1(" }
[[rule.actions]]
type = "forward"
destinations = ["pacs"]

[[rule]]
name = "bad-destination"
[rule.match]
Modality = "CR"
[[rule.actions]]
type = "forward"
destinations = ["pacs"]

[[rule.actions]]
type = "forward"
destinations = ["archive", "pacz"]
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line of the n-th line containing needle (the expected error line)."""
    hits = [i for i, line in enumerate(text.splitlines(), start=1) if needle in line]
    return hits[occurrence - 1]


def test_good_rules_keep_working_next_to_bad_ones(tmp_path: Path) -> None:
    write(tmp_path, "10-good.toml", GOOD)
    mixed = write(tmp_path, "20-mixed.toml", MIXED)
    write(tmp_path, "30-broken.toml", '[[rule]]\nname = "x"\nmatch = { Modality = "CT" \n')
    write(tmp_path, "notes.txt", "not a rule file")
    rs = load_rules(tmp_path, DESTINATIONS)
    assert [r.name for r in rs.rules] == ["ct-chest", "mr-brain"]
    found = {(Path(e.file).name, e.line, e.rule_name) for e in rs.errors}
    assert found == {
        ("20-mixed.toml", line_of(MIXED, "BodyPart = "), "typo-field"),
        ("20-mixed.toml", line_of(MIXED, "regex = "), "bad-regex"),
        ("20-mixed.toml", line_of(MIXED, '"pacz"'), "bad-destination"),
        ("30-broken.toml", 3, None),
    }
    messages = {e.rule_name: e.message for e in rs.errors}
    assert "unknown field 'BodyPart'" in messages["typo-field"]
    assert "bad regular expression" in messages["bad-regex"]
    assert "unknown destination 'pacz' (known: archive, pacs)" in messages["bad-destination"]
    assert messages[None].startswith("TOML syntax error")
    assert str(mixed) in {e.file for e in rs.errors}
    # the valid rules evaluate normally
    hit = rs.evaluate(SeriesHeaders([{"Modality": "MR", "BodyPartExamined": "brain"}]))
    assert [m.rule.name for m in hit] == ["mr-brain"]


def test_error_string_has_file_line_rule(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", MIXED)
    rs = load_rules(tmp_path, DESTINATIONS)
    text = str(next(e for e in rs.errors if e.rule_name == "typo-field"))
    assert text.startswith(f"{tmp_path / 'a.toml'}:{line_of(MIXED, 'BodyPart = ')}: rule 'typo-field': unknown field 'BodyPart'")


def test_syntax_error_line_and_column() -> None:
    text = '[[rule]]\nname = "a"\nlevel = series\n'
    [error] = parse_rules_text(text, "x.toml").errors
    assert (error.file, error.line, error.rule_name) == ("x.toml", 3, None)
    assert "column 9" in error.message


def test_duplicate_names_across_files(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", GOOD)
    second = GOOD.replace('Modality = "CT"', 'Modality = "MR"')
    write(tmp_path, "b.toml", "\n\n" + second)
    rs = load_rules(tmp_path, DESTINATIONS)
    assert len(rs.rules) == 1 and rs.rules[0].file.endswith("a.toml")
    [error] = rs.errors
    assert Path(error.file).name == "b.toml" and error.line == 4 and error.rule_name == "ct-chest"
    assert "duplicate rule name" in error.message and "a.toml:2" in error.message


def test_inline_rules_and_inline_actions_are_located() -> None:
    text = (
        'rule = [\n'
        '  { name = "one", match = { Modality = "CT" }, actions = [{ type = "forward", destinations = ["pacs"] }] },\n'
        '  { name = "two", match = { Modality = "CT" }, actions = [{ type = "forward", destinations = ["nowhere"] }] },\n'
        ']\n'
    )
    rs = parse_rules_text(text, destinations=DESTINATIONS)
    assert [r.name for r in rs.rules] == ["one"]
    [error] = rs.errors
    assert (error.line, error.rule_name) == (3, "two")


@pytest.mark.parametrize(
    ("body", "fragment", "needle"),
    [
        ('level = "patient"', "'level' must be", "level ="),
        ("enabled = 1", "'enabled' must be true or false", "enabled ="),
        ("order = true", "'order' must be an integer", "order ="),
        ("priority = 5", "unknown key 'priority'", "priority ="),
        ('study_match = "any-series"', "applies only to rules with level", "study_match"),
    ],
)
def test_rule_key_errors(body: str, fragment: str, needle: str) -> None:
    text = f'[[rule]]\nname = "r"\n{body}\nmatch = {{ Modality = "CT" }}\nactions = [{{ type = "forward", destinations = ["pacs"] }}]\n'
    rs = parse_rules_text(text, destinations=DESTINATIONS)
    assert not rs.rules
    [error] = rs.errors
    assert fragment in error.message and error.line == line_of(text, needle)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[[rule]]\nname = "bad name!"\nmatch = {}\nactions = [{ type = "forward", destinations = ["pacs"] }]\n', "name 'bad name!'"),
        ('[[rule]]\nname = "r"\nactions = [{ type = "forward", destinations = ["pacs"] }]\n', "'match' is missing"),
        ('[[rule]]\nname = "r"\nmatch = {}\n', "'actions' must be a non-empty list"),
        ('[[rule]]\nname = "r"\nmatch = {}\nactions = [{ destinations = ["pacs"] }]\n', "without a 'type'"),
        ('[[rule]]\nname = "r"\nmatch = {}\nactions = [{ type = "forward" }]\n', "'destinations' is required"),
        ('[[rule]]\nname = "r"\nmatch = {}\nactions = [{ type = "forward", destinations = ["pacs"], to = 1 }]\n', "unknown key 'to'"),
        ('[[rule]]\nname = "r"\nmatch = {}\nactions = [{ type = "forward", destinations = ["pacs", "pacs"] }]\n', "listed twice"),
        ('[rule]\nname = "r"\n', "rules must be written as [[rule]] tables"),
        ('title = "my rules"\n', "unknown top-level key 'title'"),
    ],
)
def test_structural_errors(text: str, fragment: str) -> None:
    rs = parse_rules_text(text, destinations=DESTINATIONS)
    assert not rs.rules
    assert any(fragment in e.message for e in rs.errors), [e.message for e in rs.errors]
    assert all(e.line is not None for e in rs.errors)


def test_all_errors_of_a_rule_are_reported() -> None:
    text = '[[rule]]\nname = "r"\nlevel = "x"\nmatch = { Foo = 1, Bar = 2 }\nactions = [{ type = "forward", destinations = ["nope"] }]\n'
    assert len(parse_rules_text(text, destinations=DESTINATIONS).errors) == 4


def test_destinations_unchecked_when_none(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", MIXED)
    rs = load_rules(tmp_path, None)
    assert "bad-destination" in {r.name for r in rs.rules}


def test_missing_folder_is_an_error_not_an_exception(tmp_path: Path) -> None:
    rs = load_rules(tmp_path / "nope", DESTINATIONS)
    assert rs.rules == [] and len(rs.errors) == 1 and rs.errors[0].line is None


def test_unreadable_encoding(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_bytes(b'[[rule]]\nname = "\xff"\n')
    write(tmp_path, "good.toml", GOOD)
    rs = load_rules(tmp_path, DESTINATIONS)
    assert [r.name for r in rs.rules] == ["ct-chest"]
    assert "cannot read file" in rs.errors[0].message


MODEL_RULE = """\
[[rule]]
name = "lung-seg"
[rule.match]
Modality = "CT"
[[rule.actions]]
type = "model"
model = "lung_ct"
threshold = 0.5
destinations = ["pacs"]
"""


def check_model(params: dict[str, Any], ctx) -> dict[str, Any]:
    ctx.reject_unknown_keys(params, {"model", "threshold", "destinations"})
    if not isinstance(params.get("model"), str):
        raise ActionError("'model' must name a model", key="model")
    threshold = params.get("threshold", 0.5)
    if not 0 < threshold < 1:
        raise ActionError("'threshold' must be between 0 and 1", key="threshold")
    return {"model": params["model"], "threshold": threshold, "destinations": ctx.destinations_of(params)}


def test_unknown_action_type_is_a_clear_error() -> None:
    rs = parse_rules_text(MODEL_RULE, destinations=DESTINATIONS, registry=ActionRegistry())
    [error] = rs.errors
    assert error.message.startswith("unknown action type 'model' (known: none)")
    assert "registry it passes to the loader" in error.message and error.line == line_of(MODEL_RULE, 'type = "model"')
    [error] = parse_rules_text(MODEL_RULE, destinations=DESTINATIONS).errors
    assert "(known: forward)" in error.message


def test_added_action_type_is_validated_by_its_validator() -> None:
    registry = builtin_registry().with_type("model", check_model)
    with pytest.raises(ValueError):
        registry.with_type("model", check_model)
    assert registry.with_type("model", check_model, replace=True).names() == ["forward", "model"]
    rs = parse_rules_text(MODEL_RULE, destinations=DESTINATIONS, registry=registry)
    assert not rs.errors
    [action] = rs.rules[0].actions
    assert (action.type, action.params["model"], action.destinations) == ("model", "lung_ct", ("pacs",))
    bad = MODEL_RULE.replace("threshold = 0.5", "threshold = 3")
    [error] = parse_rules_text(bad, destinations=DESTINATIONS, registry=registry).errors
    assert error.message == "action 'model': 'threshold' must be between 0 and 1"
    assert error.line == line_of(bad, "threshold")
    wrong_dest = MODEL_RULE.replace('["pacs"]', '["pacs", "viewer"]')
    [error] = parse_rules_text(wrong_dest, destinations=DESTINATIONS, registry=registry).errors
    assert "unknown destination 'viewer'" in error.message


def test_adding_a_type_leaves_the_builtin_registry_and_plain_loaders_alone(tmp_path: Path) -> None:
    """Registries are values: what one caller added is never what another caller's loader accepts."""
    registry = builtin_registry().with_type("model", check_model)
    (tmp_path / "a.toml").write_text(MODEL_RULE)
    assert not load_rules(tmp_path, DESTINATIONS, registry).errors
    assert builtin_registry().names() == ["forward"]
    [error] = load_rules(tmp_path, DESTINATIONS).errors
    assert error.message.startswith("unknown action type 'model' (known: forward)")


def test_crashing_validator_disables_only_its_rule() -> None:
    registry = builtin_registry().with_type("model", lambda params, ctx: 1 / 0)
    rs = parse_rules_text(MODEL_RULE + "\n" + GOOD, destinations=DESTINATIONS, registry=registry)
    assert [r.name for r in rs.rules] == ["ct-chest"]
    assert "validator failed: ZeroDivisionError" in rs.errors[0].message
