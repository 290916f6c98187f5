"""Routing rules: file format, validation, matching and dry runs; no networking, no models.

Rules are TOML files in a folder; each ``[[rule]]`` says which series (or
studies) it applies to and what to do with them::

    [[rule]]
    name = "ct-chest-to-pacs"

    [rule.match]
    Modality = "CT"
    BodyPartExamined = ["CHEST", "THORAX"]
    SliceThickness = { le = 2.5 }

    [[rule.actions]]
    type = "forward"
    destinations = ["pacs"]

Typical use by a host application::

    from routing_rules import RulesStore, SeriesHeaders

    store = RulesStore("rules/", destinations={"pacs", "archive"})
    for error in store.errors:           # file, line, rule and reason
        log.warning("%s", error)
    store.reload_if_changed()            # call it from your own scheduler
    for match in store.ruleset.evaluate(SeriesHeaders(datasets)):
        for action in match.actions:
            ...

A rule may also add a ``when`` expression (``"Modality == 'CT' and
upper(BodyPartExamined) in ('CHEST', 'THORAX')"``), checked by a whitelist
walker and evaluated by the library's own evaluator, never by ``eval``; and it
may read what header-fix models found (``finding.enhancement-hu.label``).
Such findings rules are evaluated in a second phase, once the host has the
findings::

    series = SeriesHeaders(datasets, findings={"enhancement-hu": {"label": "enhanced"}})
    store.ruleset.evaluate(series, phase="findings", triggered_by={"enhancement-hu"})

``RuleSet.explain`` gives, for every rule, whether it fired and, if not, the
first failing condition with the actual values.  The format is documented in
``docs/rules.md``.  Action types other than ``forward`` are added by the host
to a registry of its own, passed to every loader (``registry=``); a loader
given none accepts ``forward`` only::

    ACTIONS = builtin_registry().with_type("model", check_model)
    store = RulesStore("rules/", destinations={"pacs"}, registry=ACTIONS)
"""

from routing_rules.actions import (
    Action,
    ActionContext,
    ActionRegistry,
    ActionValidator,
    builtin_registry,
)
from routing_rules.conditions import OPERATORS, Condition
from routing_rules.dump import dump_rules
from routing_rules.errors import ActionError, ExpressionError, RuleError
from routing_rules.expression import Expression, parse_expression
from routing_rules.fields import Field, ValueKind, resolve_field
from routing_rules.headers import SeriesHeaders, StudyHeaders
from routing_rules.loader import load_rules, parse_rules_text, rule_files
from routing_rules.rules import Rule
from routing_rules.ruleset import RuleExplanation, RuleMatch, RuleSet
from routing_rules.store import RulesStore

__all__ = [
    "Action",
    "ActionContext",
    "ActionError",
    "ActionRegistry",
    "ActionValidator",
    "Condition",
    "Expression",
    "ExpressionError",
    "Field",
    "OPERATORS",
    "Rule",
    "RuleError",
    "RuleExplanation",
    "RuleMatch",
    "RuleSet",
    "RulesStore",
    "SeriesHeaders",
    "StudyHeaders",
    "ValueKind",
    "builtin_registry",
    "dump_rules",
    "load_rules",
    "parse_expression",
    "parse_rules_text",
    "resolve_field",
    "rule_files",
]
