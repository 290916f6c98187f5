"""A loaded set of rules: evaluation and dry-run explanation.

Evaluation walks the enabled rules of the requested level in order
(``order``, then file name, then position in the file):

* every ordinary rule whose conditions hold fires;
* a fired rule with ``stop = true`` ends the walk: later rules are not
  evaluated (and fallbacks are not needed, since a rule fired);
* fallback rules are evaluated only when no ordinary rule fired.

Series level: the rule's conditions are judged on the series' instances.
Study level: with ``study_match = "same-series"`` (default) the rule fires
when at least one series of the study satisfies all its conditions ("the
study has a CT series of the chest"), and :attr:`RuleMatch.series_uids`
names those series; with ``"any-series"`` every condition is judged on the
instances of the whole study, so each may be satisfied by a different series
("the study has a CT series and a PT series").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field as dc_field
from typing import Literal

from routing_rules.actions import Action
from routing_rules.conditions import Condition
from routing_rules.errors import RuleError
from routing_rules.fields import Field, Observed
from routing_rules.headers import SeriesHeaders, StudyHeaders
from routing_rules.rules import Rule

__all__ = ["RuleSet", "RuleMatch", "RuleExplanation", "Status"]

Level = Literal["series", "study"]
Status = Literal["fired", "not_matched", "disabled", "other_level", "stopped", "fallback_unused"]
_SHOWN_SERIES = 3


@dataclass(frozen=True)
class RuleMatch:
    """A rule that fired.

    Attributes:
        rule: the rule.
        actions: its actions (same as ``rule.actions``, for convenience).
        reasons: one sentence per condition saying which values made it hold.
        series_uids: the SeriesInstanceUIDs the match concerns: the series
            itself at series level; at study level the series that satisfy
            the rule (``same-series``) or all series (``any-series``).
    """

    rule: Rule
    actions: tuple[Action, ...]
    reasons: tuple[str, ...]
    series_uids: tuple[str, ...]

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class RuleExplanation:
    """What happened to one rule in a dry run.

    Attributes:
        rule: the rule.
        status: ``fired``, ``not_matched``, ``disabled``, ``other_level``,
            ``stopped`` (an earlier rule with ``stop = true`` fired) or
            ``fallback_unused`` (a fallback rule, and other rules fired).
        reasons: for fired rules, why each condition held.
        failure: for ``not_matched``, the first failing condition with the
            actual values.
    """

    rule: Rule
    status: Status
    reasons: tuple[str, ...] = ()
    failure: str | None = None
    stopped_by: str | None = None

    __hash__ = None  # type: ignore[assignment]

    @property
    def fired(self) -> bool:
        return self.status == "fired"

    def __str__(self) -> str:
        name = f"rule '{self.rule.name}'"
        if self.status == "fired":
            return f"{name} fired: " + "; ".join(self.reasons)
        if self.status == "not_matched":
            return f"{name} did not fire: {self.failure}"
        if self.status == "disabled":
            return f"{name} is disabled"
        if self.status == "other_level":
            return f"{name} is a {self.rule.level}-level rule: not evaluated here"
        if self.status == "stopped":
            return f"{name} was not evaluated: rule '{self.stopped_by}' fired and has stop = true"
        return f"{name} is a fallback and other rules fired"


class _View:
    """Instances a rule is judged on, with per-field observations cached.

    One view per series (or study) is shared by all rules of an evaluation,
    so every field is read from the headers once.  Images of a series mostly
    repeat the same values, so the view keeps a tally (each distinct
    observation with its number of images): conditions are decided on the
    distinct observations, and the counts go into explanations.
    """

    def __init__(self, source: SeriesHeaders | StudyHeaders) -> None:
        self._source = source
        self._tallies: dict[int, Counter[Observed]] = {}

    def tally(self, field: Field) -> Counter[Observed]:
        key = field.tag
        if key not in self._tallies:
            self._tallies[key] = Counter(self._source.observe(field))
        return self._tallies[key]


def _group_holds(conditions: Sequence[Condition], view: _View) -> bool:
    return all(c.holds(view.tally(c.field)) for c in conditions)


def _holds(rule: Rule, view: _View) -> bool:
    if not _group_holds(rule.conditions, view):
        return False
    return not rule.any_groups or any(_group_holds(g, view) for g in rule.any_groups)


def _reasons(rule: Rule, view: _View) -> list[str]:
    reasons = [c.reason(view.tally(c.field)) for c in rule.conditions]
    for i, group in enumerate(rule.any_groups, start=1):
        if _group_holds(group, view):
            reasons.extend(f"match_any group {i}: {c.reason(view.tally(c.field))}" for c in group)
            break
    return reasons or ["no conditions (matches everything)"]


def _first_failure(conditions: Sequence[Condition], view: _View) -> str | None:
    for c in conditions:
        if not c.holds(view.tally(c.field)):
            return c.failure(view.tally(c.field))
    return None


def _failure(rule: Rule, view: _View) -> str:
    failed = _first_failure(rule.conditions, view)
    if failed is not None:
        return failed
    parts = [f"group {i}: {_first_failure(g, view)}" for i, g in enumerate(rule.any_groups, start=1)]
    return "no match_any group holds (" + "; ".join(parts) + ")"


def _series_label(series: SeriesHeaders, index: int) -> str:
    uid = series.series_uid
    return f"series {uid}" if uid else f"series #{index + 1} (no SeriesInstanceUID)"


@dataclass
class _Outcome:
    fired: bool
    reasons: list[str] = dc_field(default_factory=list)
    failure: str = ""
    series_uids: tuple[str, ...] = ()


class _Views:
    """The views of one evaluation: the whole input and each of its series."""

    def __init__(self, headers: SeriesHeaders | StudyHeaders) -> None:
        self.headers = headers
        self.whole = _View(headers)
        self.series = [_View(s) for s in headers] if isinstance(headers, StudyHeaders) else []


def _judge(rule: Rule, views: _Views, want_failure: bool) -> _Outcome:
    headers = views.headers
    if isinstance(headers, SeriesHeaders):
        if _holds(rule, views.whole):
            return _Outcome(True, _reasons(rule, views.whole), series_uids=(headers.series_uid,))
        return _Outcome(False, failure=_failure(rule, views.whole) if want_failure else "")
    if rule.study_match == "any-series":
        uids = tuple(s.series_uid for s in headers)
        if _holds(rule, views.whole):
            return _Outcome(True, _reasons(rule, views.whole), series_uids=uids)
        return _Outcome(False, failure=("in the study: " + _failure(rule, views.whole)) if want_failure else "")
    matched: list[tuple[int, SeriesHeaders, _View]] = []
    failures: list[str] = []
    for i, (series, view) in enumerate(zip(headers, views.series)):
        if _holds(rule, view):
            matched.append((i, series, view))
        elif want_failure and len(failures) < _SHOWN_SERIES:
            failures.append(f"{_series_label(series, i)}: {_failure(rule, view)}")
    if matched:
        i, series, view = matched[0]
        reasons = [f"{_series_label(series, i)} matches"] + _reasons(rule, view)
        return _Outcome(True, reasons, series_uids=tuple(s.series_uid for _, s, _ in matched))
    if not want_failure:
        return _Outcome(False)
    more = len(headers) - len(failures)
    tail = f"; and {more} more series" if more > 0 else ""
    return _Outcome(False, failure="no series of the study matches: " + "; ".join(failures) + tail)


@dataclass
class RuleSet:
    """Valid rules in evaluation order, and the errors found while loading.

    Attributes:
        rules: valid rules (enabled or not), in evaluation order.
        errors: every problem found; rules with a problem are not in
            :attr:`rules`.
    """

    rules: list[Rule] = dc_field(default_factory=list)
    errors: list[RuleError] = dc_field(default_factory=list)

    def get(self, name: str) -> Rule | None:
        """The valid rule with this name, if any."""
        return next((r for r in self.rules if r.name == name), None)

    def evaluate(self, headers: SeriesHeaders | StudyHeaders, level: Level = "series") -> list[RuleMatch]:
        """The rules of ``level`` that fire for these headers, in order.

        Args:
            headers: a :class:`SeriesHeaders` for series level; for study
                level a :class:`StudyHeaders` (a lone SeriesHeaders is taken
                as a study of one series).
            level: ``"series"`` or ``"study"``.

        Raises:
            TypeError: study headers were given for series level.
            ValueError: unknown level.
        """
        return [
            RuleMatch(e.rule, e.rule.actions, e.reasons, uids)
            for e, uids in self._run(headers, level, want_failure=False)
            if e.status == "fired"
        ]

    def explain(self, headers: SeriesHeaders | StudyHeaders, level: Level = "series") -> list[RuleExplanation]:
        """A dry run: for every rule, whether it fired and if not, why not."""
        return [e for e, _ in self._run(headers, level, want_failure=True)]

    def _run(
        self, headers: SeriesHeaders | StudyHeaders, level: Level, want_failure: bool
    ) -> list[tuple[RuleExplanation, tuple[str, ...]]]:
        if level not in ("series", "study"):
            raise ValueError(f"level must be 'series' or 'study', not {level!r}")
        if level == "series" and not isinstance(headers, SeriesHeaders):
            raise TypeError("series-level evaluation needs a SeriesHeaders")
        if level == "study" and isinstance(headers, SeriesHeaders):
            headers = StudyHeaders([headers])
        if not isinstance(headers, (SeriesHeaders, StudyHeaders)):
            raise TypeError("headers must be a SeriesHeaders or a StudyHeaders")
        views = _Views(headers)
        results: dict[str, tuple[RuleExplanation, tuple[str, ...]]] = {}
        stopped_by: str | None = None
        any_fired = False
        for fallback_pass in (False, True):
            for rule in self.rules:
                if rule.fallback != fallback_pass:
                    continue
                if not rule.enabled:
                    results[rule.name] = (RuleExplanation(rule, "disabled"), ())
                elif rule.level != level:
                    results[rule.name] = (RuleExplanation(rule, "other_level"), ())
                elif stopped_by is not None:
                    results[rule.name] = (RuleExplanation(rule, "stopped", stopped_by=stopped_by), ())
                elif fallback_pass and any_fired:
                    results[rule.name] = (RuleExplanation(rule, "fallback_unused"), ())
                else:
                    outcome = _judge(rule, views, want_failure)
                    if outcome.fired:
                        results[rule.name] = (RuleExplanation(rule, "fired", tuple(outcome.reasons)), outcome.series_uids)
                        if not fallback_pass:
                            any_fired = True
                        if rule.stop:
                            stopped_by = rule.name
                    else:
                        results[rule.name] = (RuleExplanation(rule, "not_matched", failure=outcome.failure), ())
        return [results[r.name] for r in self.rules]
