"""The Rule model and the checking of one ``[[rule]]`` table.

A rule is checked as a whole and every problem in it is collected (an
administrator fixes all of them in one go); a rule with any problem is left
out of the rule set, the other rules are unaffected.

A rule that names any ``finding.<model>.<key>`` field (in ``match``,
``match_any`` or ``when``) is a *findings rule*: it cannot be judged from the
headers alone and waits for the findings of the models it names
(:attr:`Rule.finding_models`); see :mod:`routing_rules.ruleset` for when it is
evaluated.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from routing_rules.actions import Action, ActionContext, ActionRegistry
from routing_rules.conditions import OPERATORS, OPTIONS, Condition, parse_condition
from routing_rules.errors import ExpressionError, SpecError
from routing_rules.expression import Expression, parse_expression
from routing_rules.fields import FINDING_ROOT

__all__ = ["Rule", "parse_rule", "RULE_KEYS", "DEFAULT_ORDER", "LEVELS", "INSTANCE_ACTION_TYPES", "STUDY_MATCH_MODES"]

RULE_KEYS = (
    "name",
    "description",
    "level",
    "enabled",
    "order",
    "stop",
    "fallback",
    "study_match",
    "when",
    "match",
    "match_any",
    "actions",
)
LEVELS = ("instance", "series", "study")
# What an instance-level rule may do: act on one object as soon as it is stored.  Model
# actions need a whole series, so they stay at series or study level.
INSTANCE_ACTION_TYPES = ("forward",)
STUDY_MATCH_MODES = ("same-series", "any-series")
DEFAULT_ORDER = 100
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Rule:
    """One valid routing rule.

    Attributes:
        name: unique name (letters, digits, ``.``, ``_``, ``-``; at most 64).
        level: ``"instance"`` (evaluated on each object as soon as it is
            stored, before its series is complete: forwarding without
            waiting for the quiet period), ``"series"`` (when a series is
            complete) or ``"study"`` (when the study is complete).
        conditions: the ``match`` conditions; all must hold.
        any_groups: the ``match_any`` groups; when there are any, at least one
            group must hold in full as well.
        actions: what to do when the rule fires.
        description: free text for people.
        enabled: a disabled rule is kept (and written back) but never fires.
        order: evaluation order, smaller first (default 100); ties keep file
            name order, then the order inside the file.
        stop: when this rule fires, later rules are not evaluated.
        fallback: fires only when no ordinary rule fired.
        study_match: study level only: ``"same-series"`` (one series must
            satisfy all conditions) or ``"any-series"`` (each condition may be
            satisfied by a different series of the study).
        file: the file the rule came from (``""`` when built in code).
        line: the line of its ``[[rule]]`` header.
        when: the optional ``when`` expression, ANDed with the conditions.
    """

    name: str
    level: str
    conditions: tuple[Condition, ...]
    any_groups: tuple[tuple[Condition, ...], ...]
    actions: tuple[Action, ...]
    description: str = ""
    enabled: bool = True
    order: int = DEFAULT_ORDER
    stop: bool = False
    fallback: bool = False
    study_match: str = "same-series"
    file: str = ""
    line: int | None = None
    when: Expression | None = None

    __hash__ = None  # type: ignore[assignment]  # actions hold dicts

    @property
    def finding_models(self) -> frozenset[str]:
        """The header-fix models whose findings the rule waits for (empty: a header rule)."""
        models = {c.field.model for c in self.all_conditions() if c.field.model is not None}
        if self.when is not None:
            models |= self.when.finding_models
        return frozenset(models)

    @property
    def is_findings_rule(self) -> bool:
        """Whether the rule reads findings (and so is judged in the findings phase)."""
        return bool(self.finding_models)

    def all_conditions(self) -> Iterator[Condition]:
        """The ``match`` conditions, then those of every ``match_any`` group."""
        yield from self.conditions
        for group in self.any_groups:
            yield from group

    def to_dict(self) -> dict[str, Any]:
        """The rule as a TOML-ready table (defaults of optional flags left out)."""
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out["level"] = self.level
        out["enabled"] = self.enabled
        out["order"] = self.order
        if self.stop:
            out["stop"] = True
        if self.fallback:
            out["fallback"] = True
        if self.level == "study" and self.study_match != "same-series":
            out["study_match"] = self.study_match
        if self.when is not None:
            out["when"] = self.when.source
        out["match"] = _conditions_table(self.conditions)
        if self.any_groups:
            out["match_any"] = [_conditions_table(g) for g in self.any_groups]
        out["actions"] = [a.to_dict() for a in self.actions]
        return out


def _conditions_table(conditions: Sequence[Condition]) -> dict[str, Any]:
    return {c.field.key: c.to_toml_value() for c in conditions}


def _expect(table: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any, what: str, errors: list[SpecError]) -> Any:
    value = table.get(key, default)
    if isinstance(value, bool) and kind is int:
        errors.append(SpecError(f"'{key}' must be {what}", (key,)))
        return default
    if not isinstance(value, kind):
        errors.append(SpecError(f"'{key}' must be {what}", (key,)))
        return default
    return value


def _entries(
    table: dict[str, Any], path: tuple[Any, ...], errors: list[SpecError]
) -> Iterator[tuple[str, Any, tuple[Any, ...]]]:
    """The (field name, spec, path) entries of a match table.

    A bare dotted key ``finding.chest-view.label = "PA"`` is a nested table to
    TOML (``{"finding": {"chest-view": {"label": "PA"}}}``); it is read back as
    the field ``finding.chest-view.label``.  Nested finding keys
    (``probabilities.enhanced``) must be quoted as a whole, since their table
    could not be told from an operator table.
    """
    for key, spec in table.items():
        if key != FINDING_ROOT or not isinstance(spec, dict):
            yield key, spec, path
            continue
        for model, entries in spec.items():
            where = path + (FINDING_ROOT, model)
            if not isinstance(entries, dict) or not entries:
                errors.append(SpecError(f"finding.{model}: name a key, e.g. finding.{model}.label = ...", where))
                continue
            for name, value in entries.items():
                if isinstance(value, dict) and value and not set(value) & set(OPERATORS + OPTIONS):
                    errors.append(SpecError(
                        f"finding.{model}.{name}: a nested finding key must be quoted as a whole, "
                        f'e.g. "finding.{model}.{name}.{next(iter(value))}" = ...',
                        where + (name,),
                    ))
                    continue
                yield f"{FINDING_ROOT}.{model}.{name}", value, where


def _parse_conditions(
    table: Any, path: tuple[Any, ...], errors: list[SpecError], known_models: Collection[str] | None
) -> tuple[Condition, ...]:
    if not isinstance(table, dict):
        errors.append(SpecError(f"'{path[0]}' must be a table of conditions like {{ Modality = \"CT\" }}", path))
        return ()
    out = []
    for key, spec, where in _entries(table, path, errors):
        try:
            out.append(parse_condition(key, spec, where, known_models))
        except SpecError as exc:
            errors.append(exc)
    return tuple(out)


def _parse_when(table: dict[str, Any], known_models: Collection[str] | None, errors: list[SpecError]) -> Expression | None:
    if "when" not in table:
        return None
    text = table["when"]
    if not isinstance(text, str):
        errors.append(SpecError("'when' must be a text (an expression such as \"Modality == 'CT'\")", ("when",)))
        return None
    try:
        return parse_expression(text, known_models)
    except ExpressionError as exc:
        errors.append(SpecError(f"when: {exc.message}", ("when",)))
        return None


def _instance_level_problems(
    actions: Sequence[Action], conditions: Sequence[Condition], groups: Sequence[Sequence[Condition]], when: Expression | None,
) -> list[SpecError]:
    """Why a rule cannot be judged on one object at a time: a series-wide action, or model findings."""
    problems = [
        SpecError(
            f"action type '{action.type}' needs a whole series; level = \"instance\" allows only "
            + ", ".join(INSTANCE_ACTION_TYPES), ("actions", i),
        )
        for i, action in enumerate(actions) if action.type not in INSTANCE_ACTION_TYPES
    ]
    models = {c.field.model for c in conditions if c.field.model is not None}
    models |= {c.field.model for group in groups for c in group if c.field.model is not None}
    if when is not None:
        models |= set(when.finding_models)
    if models:
        problems.append(SpecError(
            f"level = \"instance\" rules are judged before any model runs; they cannot read findings of {', '.join(sorted(models))}",
            ("level",),
        ))
    return problems


def parse_rule(table: Any, ctx: ActionContext, registry: ActionRegistry) -> tuple[Rule | None, str | None, list[SpecError]]:
    """Check one rule table.

    Returns:
        ``(rule, name, errors)``: ``rule`` is None when there are errors;
        ``name`` is the rule's name when it could be read (for reports).
    """
    if not isinstance(table, dict):
        return None, None, [SpecError("each rule must be a table ([[rule]])")]
    errors: list[SpecError] = []
    name = table.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        shown = f" {name!r}" if name is not None else ""
        errors.append(
            SpecError(f"rule name{shown} missing or invalid: use 1-64 letters, digits, '.', '_' or '-'", ("name",))
        )
        name = name if isinstance(name, str) and name else None
    for key in table:
        if key not in RULE_KEYS:
            errors.append(SpecError(f"unknown key '{key}' (known: {', '.join(RULE_KEYS)})", (key,)))
    description = _expect(table, "description", str, "", "a text", errors)
    level = table.get("level", "series")
    if level not in LEVELS:
        errors.append(SpecError(f"'level' must be \"instance\", \"series\" or \"study\", not {level!r}", ("level",)))
        level = "series"
    enabled = _expect(table, "enabled", bool, True, "true or false", errors)
    order = _expect(table, "order", int, DEFAULT_ORDER, "an integer (smaller runs first)", errors)
    stop = _expect(table, "stop", bool, False, "true or false", errors)
    fallback = _expect(table, "fallback", bool, False, "true or false", errors)
    study_match = table.get("study_match", "same-series")
    if "study_match" in table and level != "study":
        errors.append(SpecError("'study_match' applies only to rules with level = \"study\"", ("study_match",)))
    elif study_match not in STUDY_MATCH_MODES:
        errors.append(SpecError(f"'study_match' must be \"same-series\" or \"any-series\", not {study_match!r}", ("study_match",)))
    when = _parse_when(table, ctx.models, errors)
    if "match" not in table and "when" not in table:
        errors.append(SpecError("'match' is missing (use match = {} to match everything)", ()))
    conditions = _parse_conditions(table.get("match", {}), ("match",), errors, ctx.models)
    groups: list[tuple[Condition, ...]] = []
    match_any = table.get("match_any", [])
    if not isinstance(match_any, list):
        errors.append(SpecError("'match_any' must be a list of condition tables ([[rule.match_any]])", ("match_any",)))
    else:
        for i, group in enumerate(match_any):
            parsed = _parse_conditions(group, ("match_any", i), errors, ctx.models)
            if isinstance(group, dict) and not group:
                errors.append(SpecError("an empty match_any group would always hold", ("match_any", i)))
            groups.append(parsed)
    actions: list[Action] = []
    raw_actions = table.get("actions")
    if not isinstance(raw_actions, list) or not raw_actions:
        errors.append(SpecError("'actions' must be a non-empty list ([[rule.actions]] tables)", ("actions",)))
    else:
        for i, action in enumerate(raw_actions):
            try:
                actions.append(registry.validate(action, ctx, ("actions", i)))
            except SpecError as exc:
                errors.append(exc)
    if level == "instance":
        errors.extend(_instance_level_problems(actions, conditions, groups, when))
    if errors or name is None:  # a missing name is always among the errors
        return None, name, errors
    rule = Rule(
        name=name,
        level=level,
        conditions=conditions,
        any_groups=tuple(groups),
        actions=tuple(actions),
        description=description,
        enabled=enabled,
        order=order,
        stop=stop,
        fallback=fallback,
        study_match=study_match,
        when=when,
    )
    return rule, name, []
