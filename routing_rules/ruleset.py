"""A loaded set of rules: evaluation and dry-run explanation.

Evaluation walks the enabled rules of the requested level in order
(``order``, then file name, then position in the file):

* every ordinary rule whose conditions hold fires;
* a fired rule with ``stop = true`` ends the walk: later rules are not
  evaluated (and fallbacks are not needed, since a rule fired);
* fallback rules are evaluated only when no ordinary rule fired.

Instance level: the rule's conditions are judged on one object (a
:class:`SeriesHeaders` of that object alone), as soon as it is stored; such
rules only forward (see :data:`routing_rules.rules.INSTANCE_ACTION_TYPES`).
Series level: the rule's conditions are judged on the series' instances.
Study level: with ``study_match = "same-series"`` (default) the rule fires
when at least one series of the study satisfies all its conditions ("the
study has a CT series of the chest"), and :attr:`RuleMatch.series_uids`
names those series; with ``"any-series"`` every condition is judged on the
instances of the whole study, so each may be satisfied by a different series
("the study has a CT series and a PT series").

Two phases.  Rules that read findings of header-fix models
(``finding.<model>.<key>``, :attr:`Rule.finding_models`) cannot be judged
when the series completes: the models have not run yet.  So evaluation has a
``phase``:

* ``"headers"`` (default): header rules are evaluated; findings rules are not
  (``awaiting_findings`` while their models' findings are missing,
  ``other_phase`` once they are there);
* ``"findings"``: called by the host when findings have arrived (attached to
  the headers); only findings rules whose models all have findings are
  evaluated, the others are ``awaiting_findings``; header rules are
  ``other_phase``, except that a header rule with ``stop = true`` that fires
  still ends the walk, so both phases together behave like one walk.
  ``triggered_by`` (the models whose findings just arrived) limits the phase
  to the rules that read one of them, so a rule judged when an earlier model
  reported is not judged (and fired) twice.

``stop`` and ``fallback`` act within a phase: a findings fallback fires when
no ordinary findings rule fired in that findings phase.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any, Literal

from routing_rules.actions import Action
from routing_rules.conditions import Condition
from routing_rules.errors import RuleError
from routing_rules.expression import Expression, Verdict
from routing_rules.fields import Field, Observed
from routing_rules.headers import SeriesHeaders, StudyHeaders
from routing_rules.rules import Rule

__all__ = ["RuleSet", "RuleMatch", "RuleExplanation", "Status", "Phase"]

Level = Literal["instance", "series", "study"]
Phase = Literal["headers", "findings"]
PHASES = ("headers", "findings")
Status = Literal[
    "fired",
    "not_matched",
    "disabled",
    "other_level",
    "stopped",
    "fallback_unused",
    "awaiting_findings",
    "other_phase",
    "not_triggered",
]
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
            ``stopped`` (an earlier rule with ``stop = true`` fired),
            ``fallback_unused`` (a fallback rule, and other rules fired),
            ``awaiting_findings`` (a findings rule whose models have not all
            reported), ``other_phase`` (a rule of the other phase) or
            ``not_triggered`` (findings phase with ``triggered_by``: the rule
            reads none of the models that just reported).
        reasons: for fired rules, why each condition held.
        failure: for ``not_matched``, the first failing condition with the
            actual values.
        stopped_by: for ``stopped``, the rule that stopped the walk.
        waiting_for: for ``awaiting_findings``, the models still missing.
    """

    rule: Rule
    status: Status
    reasons: tuple[str, ...] = ()
    failure: str | None = None
    stopped_by: str | None = None
    waiting_for: tuple[str, ...] = ()

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
            article = "an" if self.rule.level == "instance" else "a"
            return f"{name} is {article} {self.rule.level}-level rule: not evaluated here"
        if self.status == "stopped":
            return f"{name} was not evaluated: rule '{self.stopped_by}' fired and has stop = true"
        models = ", ".join(sorted(self.rule.finding_models))
        if self.status == "awaiting_findings":
            return f"{name} is waiting for findings of {', '.join(self.waiting_for)}"
        if self.status == "other_phase":
            if self.rule.finding_models:
                return f"{name} uses findings of {models}: evaluated in the findings phase, not here"
            return f"{name} reads headers only: evaluated in the headers phase, not here"
        if self.status == "not_triggered":
            return f"{name} was not evaluated: none of its models ({models}) just reported"
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
        self._tallies: dict[Hashable, Counter[Observed]] = {}
        self._rows: dict[tuple[Hashable, ...], Counter[tuple[Observed, ...]]] = {}
        self._verdicts: dict[str, Verdict] = {}

    def tally(self, field: Field) -> Counter[Observed]:
        key = field.lookup_key
        if key not in self._tallies:
            self._tallies[key] = Counter(self._source.observe(field))
        return self._tallies[key]

    def rows(self, fields: Sequence[Field]) -> Counter[tuple[Observed, ...]]:
        """Each distinct combination of these fields' values over the instances, counted."""
        key = tuple(f.lookup_key for f in fields)
        if key not in self._rows:
            columns = [self._source.observe(f) for f in fields]
            self._rows[key] = Counter(zip(*columns)) if columns else Counter({(): self._instances()})
        return self._rows[key]

    def _instances(self) -> int:
        source = self._source
        return len(source) if isinstance(source, SeriesHeaders) else sum(len(s) for s in source)

    def verdict(self, expression: Expression) -> Verdict:
        if expression.source not in self._verdicts:
            self._verdicts[expression.source] = expression.judge(self.rows(expression.fields))
        return self._verdicts[expression.source]


def _group_holds(conditions: Sequence[Condition], view: _View) -> bool:
    return all(c.holds(view.tally(c.field)) for c in conditions)


def _holds(rule: Rule, view: _View) -> bool:
    if not _group_holds(rule.conditions, view):
        return False
    if rule.any_groups and not any(_group_holds(g, view) for g in rule.any_groups):
        return False
    return rule.when is None or view.verdict(rule.when).holds


def _reasons(rule: Rule, view: _View) -> list[str]:
    reasons = [c.reason(view.tally(c.field)) for c in rule.conditions]
    for i, group in enumerate(rule.any_groups, start=1):
        if _group_holds(group, view):
            reasons.extend(f"match_any group {i}: {c.reason(view.tally(c.field))}" for c in group)
            break
    if rule.when is not None:
        reasons.append(rule.when.reason(view.verdict(rule.when)))
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
    if rule.any_groups and not any(_group_holds(g, view) for g in rule.any_groups):
        parts = [f"group {i}: {_first_failure(g, view)}" for i, g in enumerate(rule.any_groups, start=1)]
        return "no match_any group holds (" + "; ".join(parts) + ")"
    assert rule.when is not None  # the only part left that can fail
    return rule.when.failure(view.rows(rule.when.fields), view.verdict(rule.when))


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

    def evaluate(
        self,
        headers: SeriesHeaders | StudyHeaders,
        level: Level = "series",
        phase: Phase = "headers",
        triggered_by: Iterable[str] | None = None,
    ) -> list[RuleMatch]:
        """The rules of ``level`` and ``phase`` that fire for these headers, in order.

        Args:
            headers: a :class:`SeriesHeaders` for series level (of one
                object for instance level); for study
                level a :class:`StudyHeaders` (a lone SeriesHeaders is taken
                as a study of one series).  Findings, if any, are attached to
                them.
            level: ``"instance"``, ``"series"`` or ``"study"``.
            phase: ``"headers"`` (when the series or study is complete) or
                ``"findings"`` (when header-fix findings have arrived).
            triggered_by: findings phase only: the models whose findings just
                arrived; only the findings rules that read one of them are
                evaluated.  ``None``: every findings rule that is ready.

        Raises:
            TypeError: study headers were given for series level.
            ValueError: unknown level or phase, or ``triggered_by`` in the
                headers phase.
        """
        return [
            RuleMatch(e.rule, e.rule.actions, e.reasons, uids)
            for e, uids in self._run(headers, level, False, phase, triggered_by)
            if e.status == "fired"
        ]

    def explain(
        self,
        headers: SeriesHeaders | StudyHeaders,
        level: Level = "series",
        phase: Phase = "headers",
        triggered_by: Iterable[str] | None = None,
    ) -> list[RuleExplanation]:
        """A dry run: for every rule, whether it fired and if not, why not (same arguments as :meth:`evaluate`)."""
        return [e for e, _ in self._run(headers, level, True, phase, triggered_by)]

    def explain_instances(self, datasets: Sequence[Any]) -> list[tuple[RuleExplanation, int]]:
        """A dry run of the instance-level rules over the objects of one series, one object at a time.

        Returns, per instance-level rule, the number of objects it fires for
        and an explanation: of the first object it does not fire for, or of
        the first object when it fires for all (empty when there are no
        instance-level rules or no objects).
        """
        summary: dict[str, tuple[RuleExplanation, int]] = {}
        for dataset in datasets:
            for explanation in self.explain(SeriesHeaders.from_datasets([dataset]), level="instance"):
                if explanation.status == "other_level":
                    continue
                shown, fired = summary.get(explanation.rule.name, (explanation, 0))
                if shown.fired and not explanation.fired:
                    shown = explanation
                summary[explanation.rule.name] = (shown, fired + explanation.fired)
        return list(summary.values())

    def _run(
        self,
        headers: SeriesHeaders | StudyHeaders,
        level: Level,
        want_failure: bool,
        phase: Phase = "headers",
        triggered_by: Iterable[str] | None = None,
    ) -> list[tuple[RuleExplanation, tuple[str, ...]]]:
        if level not in ("instance", "series", "study"):
            raise ValueError(f"level must be 'instance', 'series' or 'study', not {level!r}")
        if phase not in PHASES:
            raise ValueError(f"phase must be 'headers' or 'findings', not {phase!r}")
        if triggered_by is not None and phase != "findings":
            raise ValueError("triggered_by applies to the findings phase only")
        if level in ("instance", "series") and not isinstance(headers, SeriesHeaders):
            raise TypeError(f"{level}-level evaluation needs a SeriesHeaders")
        if level == "study" and isinstance(headers, SeriesHeaders):
            headers = StudyHeaders([headers])
        if not isinstance(headers, (SeriesHeaders, StudyHeaders)):
            raise TypeError("headers must be a SeriesHeaders or a StudyHeaders")
        views = _Views(headers)
        available = headers.finding_models
        triggered = None if triggered_by is None else frozenset(triggered_by)
        in_findings_phase = phase == "findings"
        results: dict[str, tuple[RuleExplanation, tuple[str, ...]]] = {}
        stopped_by: str | None = None
        any_fired = False
        for fallback_pass in (False, True):
            for rule in self.rules:
                if rule.fallback != fallback_pass:
                    continue
                models = rule.finding_models
                if not rule.enabled:
                    results[rule.name] = (RuleExplanation(rule, "disabled"), ())
                elif rule.level != level:
                    results[rule.name] = (RuleExplanation(rule, "other_level"), ())
                elif stopped_by is not None:
                    results[rule.name] = (RuleExplanation(rule, "stopped", stopped_by=stopped_by), ())
                elif not models <= available:
                    waiting = tuple(sorted(models - available))
                    results[rule.name] = (RuleExplanation(rule, "awaiting_findings", waiting_for=waiting), ())
                elif bool(models) != in_findings_phase:
                    # A header rule with stop = true ended the headers walk before any findings
                    # rule after it: it ends the findings walk too (judged again, silently).
                    if in_findings_phase and rule.stop and not fallback_pass and _judge(rule, views, False).fired:
                        stopped_by = rule.name
                    results[rule.name] = (RuleExplanation(rule, "other_phase"), ())
                elif triggered is not None and models.isdisjoint(triggered):
                    results[rule.name] = (RuleExplanation(rule, "not_triggered"), ())
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
