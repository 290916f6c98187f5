"""Match conditions: parsing the TOML forms, testing instances, explaining.

One entry of a rule's ``match`` table is one :class:`Condition`: a field and
one or more operator tests that must all hold for an instance.  The forms:

* ``Modality = "CT"``  -> equals
* ``BodyPartExamined = ["CHEST", "THORAX"]`` -> one of
* ``SliceThickness = { lt = 2.5 }`` / ``{ gt = 0.5, lt = 2.5 }`` / ``{ between = [1, 3] }``
* ``SeriesDescription = { glob = "*LUNG*" }``, ``{ regex = "T1|T2" }`` (run by RE2: :mod:`routing_rules.patterns`)
* ``ContrastBolusAgent = { present = true }`` (``present = false`` / ``absent = true``)
* ``ImageType = { ne = "LOCALIZER" }``, ``{ not_in = [...] }``, ``{ not_glob = ... }``, ``{ not_regex = ... }``

plus the options ``scope`` (``"any"``/``"all"`` instances), ``values``
(``"any"``/``"all"`` values of a multi-valued attribute) and
``case_sensitive``.

Semantics, per instance: a positive test holds when *any* value satisfies it
(or every value, with ``values = "all"``); a negated test (``ne``,
``not_in``, ``not_glob``, ``not_regex``) holds exactly when its positive form
does not, so ``ImageType = { ne = "LOCALIZER" }`` means "no value is
LOCALIZER", and an absent attribute satisfies every negated test.  Per
series: the condition holds when it holds for any instance (default) or for
every instance (``scope = "all"``).

Finding fields (``"finding.enhancement-hu.label"``) take the same forms; their
operands may also be TOML booleans, which compare with the words ``true`` /
``false`` (a model's ``True`` is seen as the text ``"true"``).
"""

from __future__ import annotations

import datetime as dt
import difflib
import fnmatch
import math
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

from routing_rules.errors import Quoted, SpecError
from routing_rules.fields import Field, Observed, ValueKind, check_finding_model, resolve_field
from routing_rules.patterns import MAX_MATCH_CHARS, PatternError, compile_pattern
from routing_rules.phi import is_phi

__all__ = ["Condition", "Check", "parse_condition", "OPERATORS", "OPTIONS"]

_NEGATIONS = {"ne": "eq", "not_in": "in", "not_glob": "glob", "not_regex": "regex"}
_COMPARISONS = {"lt": "<", "le": "<=", "gt": ">", "ge": ">="}
OPERATORS = ("eq", "ne", "in", "not_in", "glob", "not_glob", "regex", "not_regex", "lt", "le", "gt", "ge", "between", "present", "absent")
OPTIONS = ("scope", "values", "case_sensitive")

_ORDERED_KINDS = {ValueKind.NUMBER, ValueKind.AGE, ValueKind.UNKNOWN, ValueKind.DATE, ValueKind.TIME, ValueKind.DATETIME}
_DATE_KINDS = {ValueKind.DATE, ValueKind.TIME, ValueKind.DATETIME}
_DIGIT_PATTERNS = {
    ValueKind.DATE: re.compile(r"^\d{8}$"),
    ValueKind.TIME: re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$"),
    ValueKind.DATETIME: re.compile(r"^\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?$"),
}
_DATE_FORMS = {ValueKind.DATE: "YYYYMMDD", ValueKind.TIME: "HHMMSS", ValueKind.DATETIME: "YYYYMMDDHHMMSS"}
_AGE = re.compile(r"^(\d{1,3})\s*([DWMY])$", re.IGNORECASE)
_AGE_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}

Predicate = Callable[[Any], bool]


# --------------------------------------------------------------------------- value coercion


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _capped(value: Any) -> str:
    """The text a pattern is matched on: at most MAX_MATCH_CHARS characters, so a huge value costs no more than a short one."""
    return _as_text(value)[:MAX_MATCH_CHARS]


def _as_number(value: Any, kind: ValueKind) -> float | None:
    """Numeric reading of a header value; None when it is not a number."""
    try:
        if isinstance(value, (int, float)):
            return float(value)
        text = str(value).strip()
        if kind is ValueKind.AGE:
            m = _AGE.match(text)
            if m:
                return int(m.group(1)) * _AGE_YEARS[m.group(2).upper()]
        return float(text)
    except (ValueError, OverflowError, TypeError):
        return None


def _date_key(value: Any, kind: ValueKind) -> str:
    """Dates and times compare as digit strings; old-style separators are dropped."""
    text = _as_text(value).strip()
    if kind is ValueKind.DATE:
        return text.replace(".", "").replace("-", "")
    if kind is ValueKind.TIME:
        return text.replace(":", "")
    return text


# --------------------------------------------------------------------------- tests


@dataclass(frozen=True)
class Check:
    """One operator with its operand, as written (normalised) and compiled.

    Attributes:
        op: operator name (``eq``, ``in``, ``lt``, ...; ``absent`` is stored
            as ``present = false``).
        operand: the normalised operand, as it will be written back out.
        wanted: human description of what the test wants.
    """

    op: str
    operand: Any
    wanted: str
    predicate: Predicate = dc_field(repr=False, compare=False)

    @property
    def negated(self) -> bool:
        return self.op in _NEGATIONS


def _check_finite(number: float, path: tuple[Any, ...]) -> None:
    if isinstance(number, float) and not math.isfinite(number):
        raise SpecError("numbers in rules must be finite", path)


def _normalise_scalar(value: Any, field: Field, path: tuple[Any, ...]) -> str | int | float | bool:
    """Operand of eq/ne/in/not_in, converted to the type the field compares by."""
    kind = field.kind
    if isinstance(value, bool) and field.finding is not None:
        return value  # a model's yes/no finding; compared with the words true/false
    if isinstance(value, (bool, list, dict)):
        raise SpecError(f"{field.key}: expected a text or a number, got {_toml_type(value)}", path)
    if isinstance(value, (dt.date, dt.time)):
        return _normalise_date_value(value, field, path)
    if kind in (ValueKind.SEQUENCE, ValueKind.BINARY):
        raise SpecError(f"{field.key} holds {kind.value} data: only present/absent can be tested", path)
    if kind is ValueKind.NUMBER:
        return _numeric_operand(value, field, path)
    if kind in _DATE_KINDS:
        return _date_operand(value, field, path)
    if isinstance(value, float):
        _check_finite(value, path)
    if kind is ValueKind.TEXT:
        return _as_text(value)
    if isinstance(value, (str, int, float)):
        return value  # AGE and UNKNOWN: a number compares numerically, a text as text
    raise SpecError(f"{field.key}: expected a text or a number, got {_toml_type(value)}", path)


def _normalise_date_value(value: dt.date | dt.time, field: Field, path: tuple[Any, ...]) -> str:
    if field.kind is ValueKind.DATE and isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value.strftime("%Y%m%d")
    if field.kind is ValueKind.DATETIME and isinstance(value, dt.datetime):
        return value.strftime("%Y%m%d%H%M%S")
    if field.kind is ValueKind.TIME and isinstance(value, dt.time):
        return value.strftime("%H%M%S")
    raise SpecError(f"{field.key} ({field.vr or 'no VR'}): a TOML date/time does not fit this field", path)


def _numeric_operand(value: Any, field: Field, path: tuple[Any, ...]) -> int | float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        _check_finite(value, path)
        return value
    if isinstance(value, str):
        number = _as_number(value, field.kind)
        if number is not None and math.isfinite(number):
            return int(number) if number.is_integer() and re.fullmatch(r"\s*[+-]?\d+\s*", value) else number
    if field.finding is not None:
        raise SpecError(f"{field.key}: findings are ordered only as numbers: {value!r} is not a number", path)
    raise SpecError(f"{field.key} is numeric ({field.vr or 'no VR'}): {value!r} is not a number", path)


def _date_operand(value: Any, field: Field, path: tuple[Any, ...]) -> str:
    if isinstance(value, (dt.date, dt.time)):
        return _normalise_date_value(value, field, path)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise SpecError(f"{field.key} ({field.vr}): write the value as text {_DATE_FORMS[field.kind]}", path)
    key = _date_key(value, field.kind)
    if not _DIGIT_PATTERNS[field.kind].match(key):
        raise SpecError(f"{field.key} ({field.vr}): {value!r} is not of the form {_DATE_FORMS[field.kind]}", path)
    return key


def _order_operand(value: Any, field: Field, op: str, path: tuple[Any, ...]) -> tuple[Any, Any]:
    """Operand of lt/le/gt/ge/between -> (as written, comparison key)."""
    kind = field.kind
    if kind not in _ORDERED_KINDS:
        raise SpecError(
            f"{field.key} is {kind.value} ({field.vr or 'no VR'}): '{op}' needs a numeric, date, time or age field", path
        )
    if kind in _DATE_KINDS:
        key = _date_operand(value, field, path)
        return key, key
    if kind is ValueKind.AGE and isinstance(value, str):
        number = _as_number(value, kind)
        if number is None:
            raise SpecError(f"{field.key} (AS): {value!r} is neither a number of years nor an age like 045Y", path)
        return value, number
    written = _numeric_operand(value, field, path)
    return written, float(written)


def _text_predicate(operand: str, field: Field, case_sensitive: bool) -> Predicate:
    if field.kind in _DATE_KINDS:
        return lambda v: _date_key(v, field.kind) == operand
    if case_sensitive:
        return lambda v: _as_text(v) == operand
    folded = operand.casefold()
    return lambda v: _as_text(v).casefold() == folded


def _equals_predicate(operand: Any, field: Field, case_sensitive: bool) -> Predicate:
    if isinstance(operand, bool):
        word = "true" if operand else "false"
        return lambda v: _as_text(v).casefold() == word
    if isinstance(operand, (int, float)):
        target = float(operand)
        kind = field.kind
        return lambda v: (n := _as_number(v, kind)) is not None and math.isclose(n, target, rel_tol=1e-9, abs_tol=1e-12)
    return _text_predicate(operand, field, case_sensitive)


def _show(operand: Any) -> str:
    if isinstance(operand, bool):
        return "true" if operand else "false"
    if isinstance(operand, str):
        return f"'{operand}'"
    if isinstance(operand, list):
        return "[" + ", ".join(_show(o) for o in operand) + "]"
    return str(operand)


def _patterns(value: Any, field: Field, op: str, path: tuple[Any, ...]) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(i, str) for i in items):
        raise SpecError(f"{field.key}: '{op}' needs a text or a non-empty list of texts", path)
    return items


def _build_test(op: str, value: Any, field: Field, case_sensitive: bool, path: tuple[Any, ...]) -> Check:
    if op in ("present", "absent"):
        if not isinstance(value, bool):
            raise SpecError(f"{field.key}: '{op}' takes true or false", path)
        wanted_present = value if op == "present" else not value
        return Check("present", wanted_present, "present" if wanted_present else "absent", lambda v: True)
    if field.kind in (ValueKind.SEQUENCE, ValueKind.BINARY):
        raise SpecError(f"{field.key} holds {field.kind.value} data: only present/absent can be tested", path)
    base = _NEGATIONS.get(op, op)
    prefix = "not " if op in _NEGATIONS else ""
    if base == "eq":
        operand = _normalise_scalar(value, field, path)
        return Check(op, operand, prefix + _show(operand), _equals_predicate(operand, field, case_sensitive))
    if base == "in":
        if not isinstance(value, list) or not value:
            raise SpecError(f"{field.key}: '{op}' needs a non-empty list", path)
        operands = [_normalise_scalar(v, field, path) for v in value]
        preds = [_equals_predicate(o, field, case_sensitive) for o in operands]
        word = "none of " if op == "not_in" else "one of "
        return Check(op, operands, word + _show(operands), lambda v: any(p(v) for p in preds))
    if base == "glob":
        pats = _patterns(value, field, op, path)
        if case_sensitive:
            pred = lambda v: any(fnmatch.fnmatchcase(_capped(v), p) for p in pats)  # noqa: E731
        else:
            folded = [p.casefold() for p in pats]
            pred = lambda v: any(fnmatch.fnmatchcase(_capped(v).casefold(), p) for p in folded)  # noqa: E731
        return Check(op, value, f"{prefix}to match {_show(value)}", pred)
    if base == "regex":
        pats = _patterns(value, field, op, path)
        compiled = []
        for pattern in pats:
            try:
                compiled.append(compile_pattern(pattern, case_sensitive))
            except PatternError as exc:
                raise SpecError(f"{field.key}: bad regular expression {pattern!r}: {exc}", path + (Quoted(pattern),)) from None
        return Check(op, value, f"{prefix}to match regex {_show(value)}", lambda v: any(found(_as_text(v)) for found in compiled))
    if op in _COMPARISONS:
        written, key = _order_operand(value, field, op, path)
        return Check(op, written, f"{_COMPARISONS[op]} {_show(written)}", _order_predicate(op, key, field.kind))
    if op == "between":
        if not isinstance(value, list) or len(value) != 2:
            raise SpecError(f"{field.key}: 'between' needs two values [low, high]", path)
        (lo_w, lo), (hi_w, hi) = (_order_operand(v, field, op, path) for v in value)
        if lo > hi:
            raise SpecError(f"{field.key}: 'between' low value {_show(lo_w)} is above high value {_show(hi_w)}", path)
        low, high = _order_predicate("ge", lo, field.kind), _order_predicate("le", hi, field.kind)
        return Check(op, [lo_w, hi_w], f"between {_show(lo_w)} and {_show(hi_w)}", lambda v: low(v) and high(v))
    close = difflib.get_close_matches(op, OPERATORS + OPTIONS, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise SpecError(f"{field.key}: unknown operator '{op}'; {hint}known: {', '.join(OPERATORS)}", path)


def _order_predicate(op: str, key: Any, kind: ValueKind) -> Predicate:
    compare: Callable[[Any, Any], bool] = {
        "lt": lambda a, b: a < b,
        "le": lambda a, b: a <= b,
        "gt": lambda a, b: a > b,
        "ge": lambda a, b: a >= b,
    }[op]
    if kind in _DATE_KINDS:
        return lambda v: compare(_date_key(v, kind), key)
    return lambda v: (n := _as_number(v, kind)) is not None and compare(n, key)


# --------------------------------------------------------------------------- conditions


@dataclass(frozen=True)
class Condition:
    """One field of a rule's match table with all its tests and options.

    Attributes:
        field: the attribute tested.
        tests: the operator tests; an instance satisfies the condition when
            every test holds for it.
        scope: ``"any"`` (default: some instance of the series satisfies it)
            or ``"all"`` (every instance must).
        values: ``"any"`` (default: some value of a multi-valued attribute)
            or ``"all"`` (every value) for positive tests.
        case_sensitive: text comparisons ignore case unless this is true.
    """

    field: Field
    tests: tuple[Check, ...]
    scope: str = "any"
    values: str = "any"
    case_sensitive: bool = False

    # ---- evaluation

    def _test_holds(self, test: Check, obs: Observed) -> bool:
        if test.op == "present":
            return bool(obs.present == test.operand)
        if not obs.values:
            positive = False
        elif self.values == "all":
            positive = all(test.predicate(v) for v in obs.values)
        else:
            positive = any(test.predicate(v) for v in obs.values)
        return positive != test.negated

    def instance_holds(self, obs: Observed) -> bool:
        """Whether one instance's value satisfies every test."""
        return all(self._test_holds(t, obs) for t in self.tests)

    def holds(self, observed: Iterable[Observed]) -> bool:
        """Whether the condition holds for a group of instances (series or study).

        Passing each distinct observation once gives the same answer as
        passing every instance's, only faster.
        """
        if self.scope == "all":
            return all(self.instance_holds(o) for o in observed)
        return any(self.instance_holds(o) for o in observed)

    # ---- explanation

    @property
    def _bare_numbers(self) -> bool:
        return self.field.kind in (ValueKind.NUMBER, ValueKind.UNKNOWN)

    @property
    def wanted(self) -> str:
        text = " and ".join(t.wanted for t in self.tests)
        if self.values == "all" and any(t.op != "present" for t in self.tests):
            text += " for every value"
        if self.case_sensitive:
            text += " (case-sensitive)"
        if self.scope == "all":
            text += " in every instance"
        return text

    def reason(self, tally: Mapping[Observed, int]) -> str:
        """Why the condition holds: the values that satisfied it (only the field's name for a PHI field).

        Args:
            tally: each distinct observation with its number of instances.
        """
        good = {o: n for o, n in tally.items() if self.instance_holds(o)}
        if is_phi(self.field):
            text = f"{self.field.key} matched"
        else:
            text = f"{self.field.key} {_summary(good, self._bare_numbers)} (wanted {self.wanted})"
        n_good, n_all = sum(good.values()), sum(tally.values())
        if n_good < n_all:
            text += f" in {n_good} of {n_all} instances"
        return text

    def failure(self, tally: Mapping[Observed, int]) -> str:
        """Why the condition does not hold, with the actual values (none for a PHI field: :mod:`routing_rules.phi`)."""
        where = ""
        if self.scope == "all":
            bad = {o: n for o, n in tally.items() if not self.instance_holds(o)}
            n_all = sum(tally.values())
            where = f" in {sum(bad.values())} of {n_all} instances" if n_all > 1 else ""
            tally = bad
        if is_phi(self.field):
            return f"{self.field.key} did not match{where}"
        return f"{self.field.key} {_summary(tally, self._bare_numbers)}{where}, wanted {self.wanted}"

    # ---- writing back

    def to_toml_value(self) -> Any:
        """The shortest TOML value that means this condition."""
        default_options = self.scope == "any" and self.values == "any" and not self.case_sensitive
        if default_options and len(self.tests) == 1:
            test = self.tests[0]
            if test.op == "eq":
                return test.operand
            if test.op == "in":
                return list(test.operand)
        table: dict[str, Any] = {t.op: t.operand for t in self.tests}
        if self.scope != "any":
            table["scope"] = self.scope
        if self.values != "any":
            table["values"] = self.values
        if self.case_sensitive:
            table["case_sensitive"] = True
        return table


def _summary(tally: Mapping[Observed, int], bare_numbers: bool = False, limit: int = 4) -> str:
    """``is 'CT'`` or ``has 'AXIAL' (118 instances), 'LOCALIZER' (2 instances)``."""
    counts: Counter[str] = Counter()
    for obs, n in tally.items():
        counts[obs.display(bare_numbers)] += n
    if len(counts) == 1:
        return f"is {next(iter(counts))}"
    shown = [f"{value} ({n} instance{'s' if n != 1 else ''})" for value, n in counts.most_common(limit)]
    if len(counts) > limit:
        shown.append(f"and {len(counts) - limit} other values")
    return "has " + ", ".join(shown)


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _option(spec: dict[str, Any], name: str, allowed: tuple[Any, ...], default: Any, field_key: str, path: tuple[Any, ...]) -> Any:
    value = spec.get(name, default)
    if value not in allowed or type(value) is not type(default):
        choices = " or ".join(_show(a) if isinstance(a, str) else str(a).lower() for a in allowed)
        raise SpecError(f"{field_key}: option '{name}' must be {choices}", path + (name,))
    return value


def parse_condition(
    key: str, spec: Any, path: tuple[Any, ...] = (), known_models: Collection[str] | None = None
) -> Condition:
    """Parse one ``match`` entry (short or long form) into a :class:`Condition`.

    Args:
        key: the field name as written.
        spec: the TOML value.
        path: path of the match table inside the rule, for error locations.
        known_models: model names a ``finding.<model>.<key>`` field may
            name; ``None`` skips the check.

    Raises:
        SpecError: unknown field, model or operator, wrong operand type, bad
            regex.
    """
    path = path + (key,)
    try:
        field = resolve_field(key)
        check_finding_model(field, known_models)
    except SpecError as exc:
        raise SpecError(exc.message, path) from None
    if isinstance(spec, dict):
        scope = _option(spec, "scope", ("any", "all"), "any", key, path)
        values = _option(spec, "values", ("any", "all"), "any", key, path)
        case_sensitive = _option(spec, "case_sensitive", (True, False), False, key, path)
        ops = [(op, v) for op, v in spec.items() if op not in OPTIONS]
        if not ops:
            raise SpecError(f"{key}: no operator given (known: {', '.join(OPERATORS)})", path)
        if "present" in spec and "absent" in spec:
            raise SpecError(f"{key}: use either 'present' or 'absent', not both", path + ("absent",))
        tests = tuple(_build_test(op, v, field, case_sensitive, path + (op,)) for op, v in ops)
        return Condition(field, tests, scope, values, case_sensitive)
    if isinstance(spec, bool) and field.finding is None:
        raise SpecError(f"{key}: true/false is not a value to compare; write {{ present = {str(spec).lower()} }}", path)
    op = "in" if isinstance(spec, list) else "eq"
    return Condition(field, (_build_test(op, spec, field, False, path),))
