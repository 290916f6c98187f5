"""``when`` expressions: a small, safe condition language over header fields.

A rule may add a condition written as an expression::

    when = "Modality == 'CT' and upper(BodyPartExamined) in ('CHEST', 'THORAX') and not present(ContrastBolusAgent)"

The text is read with Python's own parser (``ast.parse(mode="eval")``) because
its syntax is what administrators who script already know, but it is never
compiled or run: a whitelist walker turns the syntax tree into this module's
own small node classes, and only those are evaluated.  Whatever the walker
does not know is refused with :class:`~routing_rules.errors.ExpressionError`:

* nodes: ``and`` / ``or`` / ``not``, comparisons (``== != < <= > >=``, ``in``
  and ``not in`` a literal list), names (DICOM keywords and ``true`` /
  ``false``), constants (text, integer, finite float), a minus sign on a
  number, and calls of the helpers in :data:`HELPERS` with positional
  arguments;
* attribute access only in the form ``finding.<model>.<key>``, which is read
  from the source text as one name; no other attribute, no subscripts, no
  arithmetic, no lambdas, comprehensions, f-strings, walrus or imports;
* limits: :data:`MAX_LENGTH` characters, :data:`MAX_NODES` syntax nodes,
  :data:`MAX_DEPTH` levels of nesting, lists of at most :data:`MAX_LIST`
  items, texts of at most :data:`~routing_rules.expression_values.MAX_TEXT`
  characters.  Evaluation is bounded by a step budget
  (:data:`STEPS_PER_ROW`, :data:`STEPS_TOTAL`);
* names in plain ASCII (Python would read ``Ｍodality`` as ``Modality``) and
  no bidirectional control character anywhere, so the text reads as what runs.

Semantics on a series: the expression is evaluated on each instance (each
distinct combination of the values it reads, to be exact) and holds for the
series when it holds for **any** instance, like ``match`` conditions by
default.  Absent values are *none*; comparisons with none are false.
"""

from __future__ import annotations

import ast
import math
import re
import warnings
from collections import Counter
from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field

from routing_rules.conditions import _date_operand, _summary
from routing_rules.errors import ExpressionError, SpecError
from routing_rules.expression_values import (
    DATE_KINDS,
    MAX_TEXT,
    Budget,
    OverBudget,
    Values,
    compare,
    field_values,
    member,
    text_test,
    transform,
    truthy,
)
from routing_rules.fields import (
    FINDING_NAME,
    FINDING_ROOT,
    Field,
    Observed,
    ValueKind,
    check_finding_model,
    finding_field,
    parse_tag,
    resolve_field,
)
from routing_rules.phi import is_phi
from routing_rules.textcheck import bidi_problem, line_and_column

__all__ = [
    "Expression",
    "Verdict",
    "parse_expression",
    "HELPERS",
    "MAX_LENGTH",
    "MAX_NODES",
    "MAX_DEPTH",
    "MAX_LIST",
    "STEPS_PER_ROW",
    "STEPS_TOTAL",
]

MAX_LENGTH = 2000
MAX_NODES = 200
MAX_DEPTH = 32
MAX_LIST = 100
MAX_INT = 10**18
STEPS_PER_ROW = 10_000
STEPS_TOTAL = 200_000

HELPERS: dict[str, int] = {
    "contains": 2,  # contains(SeriesDescription, 'LUNG'): a value contains the text
    "startswith": 2,
    "endswith": 2,
    "present": 1,  # present(ContrastBolusAgent): there with a non-empty value
    "absent": 1,
    "upper": 1,  # upper(BodyPartExamined) == 'CHEST'
    "lower": 1,
    "len": 1,  # number of characters of each value
    "finding": 2,  # finding('chest-view', 'label'): what a header-fix model found
    "tag": 1,  # tag('(0029,1010)'): an attribute by its tag (private tags)
}
"""The callable helpers and their number of (positional) arguments."""
_CONDITION_HELPERS = frozenset({"contains", "startswith", "endswith", "present", "absent"})
_REFERENCE_HELPERS = frozenset({"finding", "tag"})
_WORDS = {"true": True, "false": False}
_NONE_HINT = "comparisons with none are always false: test present(X) or absent(X) instead"
_COMPARE_OPS: dict[type, str] = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.In: "in",
    ast.NotIn: "not in",
}
_REFUSED: dict[type, str] = {
    ast.Attribute: "attribute access is not allowed (only finding.<model>.<key>)",
    ast.BinOp: "arithmetic is not supported",
    ast.Subscript: "indexing is not supported",
    ast.Lambda: "lambda is not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.FormattedValue: "f-strings are not allowed",
    ast.NamedExpr: "assignment (:=) is not allowed",
    ast.IfExp: "'x if c else y' is not supported: use and / or",
    ast.Dict: "dictionaries are not supported",
    ast.Set: "sets are not supported: write lists as ('A', 'B')",
    ast.Starred: "'*' is not allowed",
    ast.Await: "await is not allowed",
    ast.Yield: "yield is not allowed",
    ast.YieldFrom: "yield is not allowed",
    ast.Slice: "slices are not supported",
}
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_DOTTED_RUN = re.compile(r"^[\w.-]+$")  # looks like a finding name: resolve_field says what is wrong with it


# --------------------------------------------------------------------------- evaluation nodes


class _Env:
    """One instance's observations, read lazily, and the budget of its evaluation."""

    __slots__ = ("row", "fields", "budget", "_values")

    def __init__(self, row: Sequence[Observed], fields: Sequence[Field], budget: Budget) -> None:
        self.row = row
        self.fields = fields
        self.budget = budget
        self._values: dict[int, Values] = {}

    def values(self, index: int) -> Values:
        if index not in self._values:
            self._values[index] = field_values(self.row[index], self.fields[index].kind)
        return self._values[index]


_NO_REFS: frozenset[int] = frozenset()


@dataclass(frozen=True)
class _Const:
    values: Values

    def value(self, env: _Env) -> Values:
        return self.values

    def refs(self) -> frozenset[int]:
        return _NO_REFS


@dataclass(frozen=True)
class _Ref:
    index: int

    def value(self, env: _Env) -> Values:
        return env.values(self.index)

    def refs(self) -> frozenset[int]:
        return frozenset({self.index})


@dataclass(frozen=True)
class _Transform:
    name: str
    arg: _Value

    def value(self, env: _Env) -> Values:
        return transform(self.name, self.arg.value(env), env.budget)

    def refs(self) -> frozenset[int]:
        return self.arg.refs()


@dataclass(frozen=True)
class _Truth:
    flag: bool

    def truth(self, env: _Env) -> bool:
        return self.flag

    def refs(self) -> frozenset[int]:
        return _NO_REFS


@dataclass(frozen=True)
class _BoolOp:
    all_needed: bool  # and: every item; or: some item
    items: tuple[_Cond, ...]

    def truth(self, env: _Env) -> bool:
        env.budget.spend(1)
        if self.all_needed:
            return all(item.truth(env) for item in self.items)
        return any(item.truth(env) for item in self.items)

    def refs(self) -> frozenset[int]:
        return frozenset().union(*(item.refs() for item in self.items))


@dataclass(frozen=True)
class _Not:
    item: _Cond

    def truth(self, env: _Env) -> bool:
        return not self.item.truth(env)

    def refs(self) -> frozenset[int]:
        return self.item.refs()


@dataclass(frozen=True)
class _Compare:
    """A chain ``a < b <= c``: each link must hold; ``in`` ends a chain (its right side is a list)."""

    first: _Value
    links: tuple[tuple[str, _Value | Values], ...]

    def truth(self, env: _Env) -> bool:
        left = self.first.value(env)
        for op, right in self.links:
            if isinstance(right, tuple):
                return member(left, right, op == "not in", env.budget)
            right_values = right.value(env)
            if not compare(op, left, right_values, env.budget):
                return False
            left = right_values
        return True

    def refs(self) -> frozenset[int]:
        out = set(self.first.refs())
        for _, right in self.links:
            if not isinstance(right, tuple):
                out |= right.refs()
        return frozenset(out)


@dataclass(frozen=True)
class _TextTest:
    name: str
    text: _Value
    part: _Value

    def truth(self, env: _Env) -> bool:
        return text_test(self.name, self.text.value(env), self.part.value(env), env.budget)

    def refs(self) -> frozenset[int]:
        return self.text.refs() | self.part.refs()


@dataclass(frozen=True)
class _Presence:
    index: int
    wanted: bool

    def truth(self, env: _Env) -> bool:
        return env.row[self.index].present == self.wanted

    def refs(self) -> frozenset[int]:
        return frozenset({self.index})


@dataclass(frozen=True)
class _FindingTruth:
    index: int

    def truth(self, env: _Env) -> bool:
        return truthy(env.values(self.index))

    def refs(self) -> frozenset[int]:
        return frozenset({self.index})


_Value = _Const | _Ref | _Transform
_Cond = _Truth | _BoolOp | _Not | _Compare | _TextTest | _Presence | _FindingTruth


# --------------------------------------------------------------------------- the expression


@dataclass(frozen=True)
class Verdict:
    """An expression judged on a group of instances (a series, or a study).

    Attributes:
        holds: it holds for at least one instance.
        matched: instances it holds for.
        total: instances judged.
        too_costly: instances given up on because the step budget ran out
            (counted as not holding).
    """

    holds: bool
    matched: int
    total: int
    too_costly: int = 0


@dataclass(frozen=True)
class _Part:
    """A top-level ``and`` operand, kept to say which part of a rule failed."""

    text: str
    cond: _Cond
    refs: tuple[int, ...]


Rows = Mapping[tuple[Observed, ...], int]


@dataclass(frozen=True)
class Expression:
    """A checked ``when`` expression, ready to evaluate.

    Two expressions are equal when their source texts are.

    Attributes:
        source: the text as written (what :func:`routing_rules.dump_rules`
            writes back).
        fields: every field it reads, in order of first use; a row given to
            :meth:`evaluate` holds one observation per field, in this order.
    """

    source: str
    fields: tuple[Field, ...] = dc_field(compare=False)
    _root: _Cond = dc_field(compare=False, repr=False)
    _parts: tuple[_Part, ...] = dc_field(compare=False, repr=False)

    @property
    def finding_models(self) -> frozenset[str]:
        """Models whose findings the expression reads."""
        return frozenset(f.model for f in self.fields if f.model is not None)

    def evaluate(self, row: Sequence[Observed]) -> bool:
        """Whether the expression holds for one instance; never raises.

        An evaluation that runs out of its :data:`STEPS_PER_ROW` steps counts
        as not holding.
        """
        return self._row(row, self._root, Budget(STEPS_PER_ROW)) is True

    def _row(self, row: Sequence[Observed], cond: _Cond, total: Budget) -> bool | None:
        budget = Budget(min(STEPS_PER_ROW, total.left))
        start = budget.left
        try:
            result: bool | None = cond.truth(_Env(row, self.fields, budget))
        except OverBudget:
            result = None
        total.left -= start - max(budget.left, 0)
        return result

    def judge(self, rows: Rows) -> Verdict:
        """Judge each distinct row (with its number of instances) within :data:`STEPS_TOTAL` steps."""
        total = Budget(STEPS_TOTAL)
        matched = count = too_costly = 0
        for row, n in rows.items():
            count += n
            result = self._row(row, self._root, total) if total.left > 0 else None
            if result is None:
                too_costly += n
            elif result:
                matched += n
        return Verdict(matched > 0, matched, count, too_costly)

    @property
    def _phi_keys(self) -> list[str]:
        """The PHI fields it reads (:mod:`routing_rules.phi`): then its text, which holds their operands, is not shown."""
        return [f.key for f in self.fields if is_phi(f)]

    def _shown(self, verb: str) -> str:
        phi = self._phi_keys
        if phi:
            return f"when expression {verb} (text not shown: it tests {', '.join(phi)})"
        return f'when "{self.source}" {verb}'

    def reason(self, verdict: Verdict) -> str:
        """Why it held, for a fired rule's explanation."""
        text = self._shown("holds")
        if verdict.matched < verdict.total:
            text += f" in {verdict.matched} of {verdict.total} instances"
        return text

    def failure(self, rows: Rows, verdict: Verdict) -> str:
        """Why it did not hold, with the values of the fields concerned (not those of PHI fields)."""
        head = self._shown("is false")
        if verdict.too_costly:
            head += f" (evaluation gave up on {verdict.too_costly} of {verdict.total} instances: too much work)"
        if len(self._parts) > 1:
            budget = Budget(STEPS_TOTAL)
            for number, part in enumerate(self._parts, start=1):
                if not any(self._row(row, part.cond, budget) for row in rows):
                    shown = f"part {number}" if self._phi_keys else f'"{part.text}"'
                    return f"{head}: {shown} holds for no instance ({self._values_text(part.refs, rows)})"
            every = tuple(range(len(self.fields)))
            return f"{head}: its parts hold only in different instances ({self._values_text(every, rows)})"
        return f"{head} ({self._values_text(tuple(range(len(self.fields))), rows)})"

    def _values_text(self, indexes: Sequence[int], rows: Rows, limit: int = 4) -> str:
        if not indexes:
            return "it reads no field"
        shown = []
        for i in indexes[:limit]:
            tally: Counter[Observed] = Counter()
            for row, n in rows.items():
                tally[row[i]] += n
            field = self.fields[i]
            if is_phi(field):
                shown.append(f"{field.key} not shown")
                continue
            shown.append(f"{field.key} {_summary(tally, field.kind in (ValueKind.NUMBER, ValueKind.UNKNOWN))}")
        if len(indexes) > limit:
            shown.append(f"and {len(indexes) - limit} more fields")
        return "; ".join(shown)


# --------------------------------------------------------------------------- parsing


def parse_expression(text: str, known_models: Collection[str] | None = None) -> Expression:
    """Check an expression and build it.

    Args:
        text: the expression (line breaks are allowed, e.g. from a TOML
            multi-line string).
        known_models: model names ``finding`` references may use; ``None``
            skips the check.

    Raises:
        ExpressionError: for anything outside the language or its limits, with
            the column (and line, for multi-line texts) of the problem.  No
            other exception escapes, whatever the input.
    """
    if not isinstance(text, str):
        raise ExpressionError("the expression must be a text")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"the expression is longer than {MAX_LENGTH} characters")
    bidi = bidi_problem(text)
    if bidi is not None:
        line, column = line_and_column(text, bidi[0])
        raise ExpressionError(bidi[1], line, column, multiline=line_and_column(text, len(text))[0] > 1)
    # One logical line: line breaks become spaces (offsets are kept), leading blanks are skipped.
    flat = _LINE_BREAK.sub(lambda m: " " * len(m.group()), text)
    body = flat.lstrip(" \t\f")
    if not body.strip():
        raise ExpressionError("the expression is empty")
    builder = _Builder(text, body, len(flat) - len(body), known_models)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. invalid escape sequences: the text is data, not code
            tree = ast.parse(body, mode="eval")
    except SyntaxError as exc:
        reason = f"syntax error: {exc.msg}" if exc.msg else "syntax error"
        if not exc.offset:  # Python gives no column when the text ends too early
            raise ExpressionError(f"{reason} at the end of the expression") from None
        raise builder.error_at(reason, exc.offset - 1) from None
    except (ValueError, MemoryError, RecursionError) as exc:
        raise ExpressionError(f"cannot be read: {type(exc).__name__}") from None
    nodes = _expressions(tree)
    if len(nodes) > MAX_NODES:
        raise ExpressionError(f"the expression is too complex ({len(nodes)} parts, at most {MAX_NODES})")
    builder.check_names(nodes)
    return builder.build(tree.body)


def _expressions(tree: ast.AST) -> list[ast.expr]:
    """Expression nodes of the tree, collected without recursion (and without ``ast.walk``'s lazy import)."""
    found: list[ast.expr] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.expr):
            found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


class _Builder:
    """The whitelist walker: Python syntax tree in, evaluation nodes out."""

    def __init__(self, text: str, body: str, lead: int, known_models: Collection[str] | None) -> None:
        self.text = text
        self.body = body
        self.encoded = body.encode("utf-8", "surrogatepass")
        self.lead = lead
        self.known_models = known_models
        self.fields: list[Field] = []
        self._index: dict[Hashable, int] = {}

    # ---- errors with positions

    def error_at(self, reason: str, char_offset: int | None) -> ExpressionError:
        """An error at a character offset of the parsed body (None: no position)."""
        if char_offset is None:
            return ExpressionError(reason)
        pos = self.lead + max(0, min(char_offset, len(self.body)))
        starts = [0] + [m.end() for m in _LINE_BREAK.finditer(self.text)]
        line = sum(1 for s in starts if s <= pos)
        return ExpressionError(reason, line, pos - starts[line - 1] + 1, multiline=len(starts) > 1)

    def error(self, reason: str, node: ast.AST) -> ExpressionError:
        offset = getattr(node, "col_offset", None)
        if offset is None:
            return self.error_at(reason, None)
        return self.error_at(reason, len(self.encoded[:offset].decode("utf-8", "ignore")))

    def refuse(self, node: ast.AST) -> ExpressionError:
        reason = _REFUSED.get(type(node))
        if reason is None:
            reason = f"{type(node).__name__} is not allowed here"
        return self.error(reason, node)

    def segment(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.body, node) or ""

    def check_names(self, nodes: Sequence[ast.expr]) -> None:
        """Refuse names written with other than ASCII letters.

        Python reads names in NFKC form, so ``Ｍodality`` (a fullwidth M) would
        silently test Modality: the text would not read as what runs.
        """
        for node in nodes:
            if isinstance(node, ast.Name):
                written = self.segment(node)
            elif isinstance(node, ast.Attribute):
                written = self.segment(node).rsplit(".", 1)[-1]
            else:
                continue
            if not written.isascii():
                raise self.error(f"name {written!r} has non-ASCII characters: write names in plain ASCII letters", node)

    # ---- building

    def build(self, node: ast.expr) -> Expression:
        root = self.condition(node, 1)
        if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And):
            assert isinstance(root, _BoolOp)
            parts = tuple(
                _Part(self.segment(n), c, tuple(sorted(c.refs()))) for n, c in zip(node.values, root.items)
            )
        else:
            parts = (_Part(self.segment(node), root, tuple(sorted(root.refs()))),)
        return Expression(self.text.strip(), tuple(self.fields), root, parts)

    def _check_depth(self, node: ast.AST, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise self.error(f"nested too deeply (more than {MAX_DEPTH} levels)", node)

    def condition(self, node: ast.expr, depth: int) -> _Cond:
        """A node that must be true or false."""
        self._check_depth(node, depth)
        if isinstance(node, ast.BoolOp):
            return _BoolOp(isinstance(node.op, ast.And), tuple(self.condition(v, depth + 1) for v in node.values))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return _Not(self.condition(node.operand, depth + 1))
        if isinstance(node, ast.Compare):
            return self.comparison(node, depth)
        if isinstance(node, ast.Call):
            return self.call_condition(node, depth)
        if isinstance(node, ast.Constant) and isinstance(node.value, bool):
            return _Truth(node.value)
        if isinstance(node, ast.Name) and node.id in _WORDS:
            return _Truth(_WORDS[node.id])
        finding = self.dotted_finding(node)
        if finding is not None:
            return _FindingTruth(self.ref(finding))
        if isinstance(node, ast.Name):
            self.name_field(node)  # an unknown name is reported as such first
        elif isinstance(node, (ast.Constant, ast.UnaryOp)):
            self.constant(node)
        else:
            raise self.refuse(node)
        shown = self.segment(node)
        raise self.error(f"{shown} is a value, not a condition: compare it, e.g. {shown} == ...", node)

    def value(self, node: ast.expr, depth: int) -> _Value:
        """A node that gives values to compare."""
        self._check_depth(node, depth)
        if isinstance(node, ast.Constant) or (isinstance(node, ast.UnaryOp) and not isinstance(node.op, ast.Not)):
            return _Const(self.constant(node))
        if isinstance(node, ast.Name):
            if node.id in _WORDS:
                return _Const((_WORDS[node.id],))
            return _Ref(self.ref(self.comparable(self.name_field(node), node)))
        finding = self.dotted_finding(node)
        if finding is not None:
            return _Ref(self.ref(finding))
        if isinstance(node, ast.Call):
            return self.call_value(node, depth)
        if isinstance(node, (ast.Compare, ast.BoolOp, ast.UnaryOp)):
            raise self.error("compare values, not conditions (combine conditions with and / or)", node)
        if isinstance(node, (ast.Tuple, ast.List)):
            raise self.error("a list is only allowed after 'in' or 'not in'", node)
        raise self.refuse(node)

    def constant(self, node: ast.expr) -> Values:
        if isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, ast.USub):
                raise self.error("only '-' may precede a number", node)
            (inner,) = self.constant(node.operand)
            if isinstance(inner, bool) or not isinstance(inner, (int, float)):
                raise self.error("'-' may only precede a number", node)
            return (-inner,)
        if isinstance(node, ast.Name) and node.id in _WORDS:
            return (_WORDS[node.id],)
        if isinstance(node, ast.Name) and node.id == "none":
            raise self.error(_NONE_HINT, node)
        if not isinstance(node, ast.Constant):
            raise self.error("expected a text, a number or true/false", node)
        value = node.value
        if isinstance(value, bool):
            return (value,)
        if value is None:
            raise self.error(_NONE_HINT, node)
        if isinstance(value, int):
            if abs(value) > MAX_INT:
                raise self.error(f"number too large (at most {MAX_INT:.0e})", node)
            return (value,)
        if isinstance(value, float):
            if not math.isfinite(value):
                raise self.error("numbers must be finite", node)
            return (value,)
        if isinstance(value, str):
            if len(value) > MAX_TEXT:
                raise self.error(f"text longer than {MAX_TEXT} characters", node)
            return (value,)
        raise self.error(f"{type(value).__name__} constants are not supported", node)

    # ---- names and fields

    def ref(self, field: Field) -> int:
        key = field.lookup_key
        if key not in self._index:
            self._index[key] = len(self.fields)
            self.fields.append(field)
        return self._index[key]

    def name_field(self, node: ast.Name) -> Field:
        if node.id == FINDING_ROOT:
            raise self.error("a finding needs a model and a key: finding.<model>.<key> or finding('model', 'key')", node)
        if node.id == "none":
            raise self.error(_NONE_HINT, node)
        try:
            return resolve_field(node.id)
        except SpecError as exc:
            raise self.error(exc.message, node) from None

    def comparable(self, field: Field, node: ast.AST) -> Field:
        if field.kind in (ValueKind.SEQUENCE, ValueKind.BINARY):
            raise self.error(f"{field.key} holds {field.kind.value} data: only present() / absent() can test it", node)
        return field

    def checked_model(self, field: Field, node: ast.AST) -> Field:
        try:
            check_finding_model(field, self.known_models)
        except SpecError as exc:
            raise self.error(exc.message, node) from None
        return field

    def dotted_finding(self, node: ast.expr) -> Field | None:
        """``finding.chest-view.agrees_with_header`` (Python sees attributes and minus signs)."""
        if not isinstance(node, (ast.Attribute, ast.BinOp)):
            return None
        root: ast.expr = node
        while isinstance(root, (ast.Attribute, ast.BinOp)):
            root = root.value if isinstance(root, ast.Attribute) else root.left
        if not (isinstance(root, ast.Name) and root.id == FINDING_ROOT):
            return None
        # The text decides, not the tree: only a run of name characters, '-' and '.' is accepted.
        text = self.segment(node)
        if not FINDING_NAME.match(text) and not _DOTTED_RUN.match(text):
            raise self.error(
                "write a finding as finding.<model>.<key> (without spaces) or finding('model', 'key')", node
            )
        try:
            field = resolve_field(text)
        except SpecError as exc:
            raise self.error(exc.message, node) from None
        return self.checked_model(field, node)

    def reference(self, node: ast.expr, helper: str) -> Field:
        """The argument of present() / absent(): a field, of any kind."""
        if isinstance(node, ast.Name) and node.id not in _WORDS:
            return self.name_field(node)
        finding = self.dotted_finding(node)
        if finding is not None:
            return finding
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _REFERENCE_HELPERS:
            return self.reference_call(node)
        raise self.error(f"{helper}() takes a field, e.g. {helper}(ContrastBolusAgent)", node)

    # ---- calls

    def checked_call(self, node: ast.Call) -> str:
        if not isinstance(node.func, ast.Name):
            raise self.error(f"only these functions can be called: {', '.join(HELPERS)}", node)
        name = node.func.id
        if name not in HELPERS:
            raise self.error(f"unknown function '{name}' (known: {', '.join(HELPERS)})", node)
        if node.keywords:
            raise self.error(f"{name}() takes no keyword arguments", node.keywords[0].value)
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise self.refuse(arg)
        wanted = HELPERS[name]
        if len(node.args) != wanted:
            raise self.error(
                f"{name}() takes {wanted} argument{'s' if wanted != 1 else ''} ({len(node.args)} given)", node
            )
        return name

    def literal_text(self, node: ast.expr, helper: str) -> str:
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            raise self.error(f"{helper}() takes quoted texts", node)
        return node.value

    def reference_call(self, node: ast.Call) -> Field:
        """``finding('model', 'key')`` or ``tag('(0029,1010)')``."""
        name = self.checked_call(node)
        texts = [self.literal_text(arg, name) for arg in node.args]
        try:
            if name == "finding":
                return self.checked_model(finding_field(texts[0], texts[1]), node)
            if parse_tag(texts[0]) is None:
                raise SpecError(f"tag() takes a tag like '(0029,1010)', not {texts[0]!r}")
            return resolve_field(texts[0])
        except SpecError as exc:
            raise self.error(exc.message, node) from None

    def call_condition(self, node: ast.Call, depth: int) -> _Cond:
        name = self.checked_call(node)
        if name in ("present", "absent"):
            return _Presence(self.ref(self.reference(node.args[0], name)), name == "present")
        if name in _CONDITION_HELPERS:
            return _TextTest(name, self.value(node.args[0], depth + 1), self.value(node.args[1], depth + 1))
        if name == "finding":
            return _FindingTruth(self.ref(self.reference_call(node)))
        raise self.error(f"{name}() gives a value, not a condition: compare it, e.g. {name}(...) == ...", node)

    def call_value(self, node: ast.Call, depth: int) -> _Value:
        name = self.checked_call(node)
        if name in _CONDITION_HELPERS:
            raise self.error(f"{name}() is a condition, not a value", node)
        if name in _REFERENCE_HELPERS:
            return _Ref(self.ref(self.comparable(self.reference_call(node), node)))
        return _Transform(name, self.value(node.args[0], depth + 1))

    # ---- comparisons

    def comparison(self, node: ast.Compare, depth: int) -> _Cond:
        symbols: list[str] = []
        for i, op in enumerate(node.ops):
            symbol = _COMPARE_OPS.get(type(op))
            if symbol is None:
                raise self.error("'is' is not supported: use == or != (or present() / absent())", node.comparators[i])
            if symbol in ("in", "not in") and i + 1 < len(node.ops):
                raise self.error("nothing may follow a list: join comparisons with 'and'", node.comparators[i + 1])
            symbols.append(symbol)
        nodes = [node.left, *node.comparators]
        operands: list[_Value | Values] = [self.value(node.left, depth + 1)]
        for symbol, right_node in zip(symbols, node.comparators):
            if symbol in ("in", "not in"):
                left = operands[-1]
                assert not isinstance(left, tuple)
                operands.append(self.options(right_node, left))
            else:
                operands.append(self.value(right_node, depth + 1))
        for i in range(len(symbols)):  # a text next to a date field: checked and normalised
            left, right = operands[i], operands[i + 1]
            if isinstance(left, tuple) or isinstance(right, tuple):
                continue
            operands[i] = self.date_literal(left, right, nodes[i])
            operands[i + 1] = self.date_literal(right, left, nodes[i + 1])
        first = operands[0]
        assert not isinstance(first, tuple)
        return _Compare(first, tuple(zip(symbols, operands[1:])))

    def options(self, node: ast.expr, left: _Value) -> Values:
        if not isinstance(node, (ast.Tuple, ast.List)):
            raise self.error(
                "'in' needs a list of values, like ('CT', 'MR'); to look for a text inside a value use contains()",
                node,
            )
        if not node.elts:
            raise self.error("the list after 'in' is empty", node)
        if len(node.elts) > MAX_LIST:
            raise self.error(f"the list after 'in' has more than {MAX_LIST} items", node)
        values: list[str | int | float | bool] = []
        for elt in node.elts:
            if not isinstance(elt, (ast.Constant, ast.UnaryOp, ast.Name)) or (
                isinstance(elt, ast.Name) and elt.id not in (*_WORDS, "none")
            ):
                raise self.error("the list after 'in' may hold only texts, numbers and true/false", elt)
            const = self.date_literal(_Const(self.constant(elt)), left, elt)
            assert isinstance(const, _Const)
            values.extend(const.values)
        return tuple(values)

    def date_literal(self, this: _Value, other: _Value, node: ast.AST) -> _Value:
        """A text compared with a date/time field is checked and written the DICOM way (``'2024-03-01'`` -> ``'20240301'``)."""
        if not (isinstance(this, _Const) and isinstance(other, _Ref) and isinstance(this.values[0], str)):
            return this
        field = self.fields[other.index]
        if field.kind not in DATE_KINDS:
            return this
        try:
            return _Const((_date_operand(this.values[0], field, ()),))
        except SpecError as exc:
            raise self.error(exc.message, node) from None
