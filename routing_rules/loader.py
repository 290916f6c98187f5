"""Loading rule files: every ``*.toml`` in a folder, sorted by file name.

Failure is contained at the smallest unit that can be trusted:

* a file that cannot be read or is not valid TOML contributes no rules and
  one error (with tomllib's line and column); so does a file with a
  bidirectional control character anywhere, or nested deeper than
  :data:`~routing_rules.textcheck.MAX_NESTING` levels (see
  :mod:`routing_rules.textcheck`);
* in a file that parses, each rule is checked on its own: an invalid rule is
  left out with its errors, the valid rules of the same file are kept;
* a rule whose name is already taken (in an earlier file, or earlier in the
  same file) is left out; the first one keeps working.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from routing_rules.actions import ActionContext, ActionRegistry, builtin_registry
from routing_rules.errors import RuleError
from routing_rules.locate import SourceMap, syntax_error_line
from routing_rules.rules import Rule, parse_rule
from routing_rules.ruleset import RuleSet
from routing_rules.textcheck import MAX_NESTING, bidi_problem, document_depth, line_and_column, nesting_problem

__all__ = ["load_rules", "parse_rules_text", "rule_files"]


def rule_files(folder: str | Path) -> list[Path]:
    """The rule files of a folder, in load order (sorted by name)."""
    return sorted((p for p in Path(folder).glob("*.toml") if p.is_file()), key=lambda p: p.name)


def _parse_text(
    text: str, file: str, ctx: ActionContext, registry: ActionRegistry
) -> tuple[list[Rule], list[RuleError]]:
    """Rules (in file order) and errors of one file's text."""
    for refused in (bidi_problem(text), nesting_problem(text)):
        if refused is not None:
            offset, message = refused
            at_line, column = line_and_column(text, offset)
            return [], [RuleError(file, at_line, None, f"{message} (column {column})")]
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line, message = syntax_error_line(str(exc), text)
        return [], [RuleError(file, line, None, message)]
    except RecursionError:  # the scan above keeps tomllib far from this; kept as the last line of defence
        return [], [RuleError(file, None, None, f"nested deeper than {MAX_NESTING} levels")]
    if document_depth(document) > MAX_NESTING:
        return [], [RuleError(file, None, None, f"nested deeper than {MAX_NESTING} levels (tables and dotted keys)")]
    source = SourceMap(text)
    errors: list[RuleError] = []
    for key in document:
        if key != "rule":
            errors.append(RuleError(file, source.key_line(key), None, f"unknown top-level key '{key}': rules are written as [[rule]] tables"))
    tables = document.get("rule", [])
    if isinstance(tables, dict):
        errors.append(RuleError(file, source.key_line("rule"), None, "rules must be written as [[rule]] tables (this file has [rule] or a [rule.<key>] table without a [[rule]] before it)"))
        return [], errors
    if not isinstance(tables, list):
        errors.append(RuleError(file, 1, None, "'rule' must be an array of tables ([[rule]])"))
        return [], errors
    rules: list[Rule] = []
    for index, table in enumerate(tables):
        rule, name, problems = parse_rule(table, ctx, registry)
        for problem in problems:
            errors.append(RuleError(file, source.locate(index, name, problem.path), name, problem.message))
        if rule is not None:
            rules.append(replace(rule, file=file, line=source.rule_line(index, name)))
    return rules, errors


def _merge(
    per_file: Iterable[tuple[list[Rule], list[RuleError]]],
) -> RuleSet:
    """Drop duplicate names (first wins), then sort into evaluation order."""
    kept: list[tuple[int, int, Rule]] = []
    errors: list[RuleError] = []
    first: dict[str, Rule] = {}
    for file_index, (rules, file_errors) in enumerate(per_file):
        errors.extend(file_errors)
        for position, rule in enumerate(rules):
            earlier = first.get(rule.name)
            if earlier is not None:
                where = f"{earlier.file}:{earlier.line}" if earlier.line else earlier.file
                errors.append(RuleError(rule.file, rule.line, rule.name, f"duplicate rule name (already defined at {where}); this one is ignored"))
                continue
            first[rule.name] = rule
            kept.append((file_index, position, rule))
    kept.sort(key=lambda item: (item[2].order, item[0], item[1]))
    return RuleSet(rules=[r for _, _, r in kept], errors=errors)


def parse_rules_text(
    text: str,
    file: str = "<text>",
    destinations: Iterable[str] | None = None,
    registry: ActionRegistry | None = None,
    known_models: Iterable[str] | None = None,
) -> RuleSet:
    """Check the text of one rule file (e.g. from an editor before saving); arguments as for :func:`load_rules`."""
    ctx = ActionContext(destinations, known_models)
    return _merge([_parse_text(text, file, ctx, builtin_registry() if registry is None else registry)])


def load_rules(
    folder: str | Path,
    destinations: Iterable[str] | None = None,
    registry: ActionRegistry | None = None,
    known_models: Iterable[str] | None = None,
) -> RuleSet:
    """Load every ``*.toml`` rule file of ``folder``.

    Args:
        folder: the rules folder.
        destinations: the destination names actions may use; ``None`` skips
            the check (e.g. for a syntax-only check without the node config).
        registry: the action types rules may use; the built-in ones
            (``forward``) when not given.
        known_models: the model names ``finding.<model>.<key>`` fields (in
            ``match``, ``match_any`` and ``when``) may use; ``None`` skips the
            check.

    Returns:
        A :class:`RuleSet`; never raises for bad content, problems are in
        ``.errors``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return RuleSet(errors=[RuleError(str(folder), None, None, "rules folder does not exist or is not a folder")])
    ctx = ActionContext(destinations, known_models)
    registry = builtin_registry() if registry is None else registry
    per_file: list[tuple[list[Rule], list[RuleError]]] = []
    for path in rule_files(folder):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            per_file.append(([], [RuleError(str(path), None, None, f"cannot read file: {exc}")]))
            continue
        per_file.append(_parse_text(text, str(path), ctx, registry))
    return _merge(per_file)
