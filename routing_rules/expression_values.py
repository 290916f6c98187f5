"""Values inside a ``when`` expression and the few operations on them.

Every value is a tuple of scalars (text, number or true/false): ``()`` is
*none* (the attribute is absent or empty), one element is an ordinary value,
several are the values of a multi-valued attribute such as ImageType.  Every
operation is total: whatever the headers hold, it gives an answer and never
raises, which is what lets a hostile or broken header pass through routing
without stopping the node.

The rules, kept close to those of ``match``:

* a comparison with none is false (``!=`` included);
* a positive comparison holds when *any* pair of values satisfies it;
  ``!=`` and ``not in`` hold exactly when their positive form does not;
* text compares with text as text (case matters: use ``upper()``), numbers
  with numbers, and a text with a number numerically when the text reads as
  a number (``"2.50"``, or an age ``"045Y"`` = 45 years), otherwise never;
* true/false equal only true/false or the texts "true"/"false".

Work is bounded twice: by the size of the inputs (texts cut at
:data:`MAX_TEXT` characters, at most :data:`MAX_VALUES` values per attribute)
and by a :class:`Budget` of steps that each operation spends from.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

from routing_rules.conditions import _as_number, _date_key
from routing_rules.fields import Observed, ValueKind

__all__ = [
    "Scalar",
    "Values",
    "Budget",
    "OverBudget",
    "MAX_TEXT",
    "MAX_VALUES",
    "DATE_KINDS",
    "field_values",
    "compare",
    "member",
    "text_test",
    "transform",
    "truthy",
]

Scalar = str | int | float | bool
Values = tuple[Scalar, ...]

MAX_TEXT = 1024
"""Characters of one text value an expression looks at (a longer value is cut)."""
MAX_VALUES = 64
"""Values of one multi-valued attribute an expression looks at."""
_MAX_INT_BITS = 256  # larger header integers are read as +-infinity: no giant int <-> text work
DATE_KINDS = frozenset({ValueKind.DATE, ValueKind.TIME, ValueKind.DATETIME})

_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


class OverBudget(Exception):
    """The evaluation used up its steps; the caller counts the instance as not matching."""


class Budget:
    """Steps left for an evaluation; every operation pays for its pairs of values."""

    __slots__ = ("left",)

    def __init__(self, steps: int) -> None:
        self.left = steps

    def spend(self, steps: int) -> None:
        self.left -= steps
        if self.left < 0:
            raise OverBudget


def field_values(obs: Observed, kind: ValueKind) -> Values:
    """An instance's observation as expression values.

    Numeric attributes give numbers where the text reads as one; dates and
    times drop old-style separators (``2024.03.01`` -> ``20240301``) so they
    compare as digit strings, like in ``match``.
    """
    out: list[Scalar] = []
    for value in obs.values[:MAX_VALUES]:
        if isinstance(value, str):
            value = value[:MAX_TEXT]
            if kind in DATE_KINDS:
                value = _date_key(value, kind)
            elif kind is ValueKind.NUMBER:
                number = _number(value)
                value = value if number is None else number
        elif isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
            value = math.inf if value > 0 else -math.inf
        elif not isinstance(value, (int, float)):
            value = str(value)[:MAX_TEXT]
        out.append(value)
    return tuple(out)


def _number(value: Scalar) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    return _as_number(value, ValueKind.AGE)  # plain numbers, and ages such as "045Y"


def _text(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def _equal(x: Scalar, y: Scalar) -> bool:
    if isinstance(x, bool) or isinstance(y, bool):
        if isinstance(x, bool) and isinstance(y, bool):
            return x == y
        flag, other = (x, y) if isinstance(x, bool) else (y, x)
        return isinstance(other, str) and other.strip().casefold() == ("true" if flag else "false")
    if isinstance(x, str) and isinstance(y, str):
        return x == y
    a, b = _number(x), _number(y)
    if a is None or b is None:
        return False
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    try:
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    except OverflowError:  # an integer too large for a float
        return a == b


def _ordered(op: str, x: Scalar, y: Scalar) -> bool:
    if isinstance(x, bool) or isinstance(y, bool):
        return False
    if isinstance(x, str) and isinstance(y, str):
        return _ORDER[op](x, y)
    a, b = _number(x), _number(y)
    if a is None or b is None:
        return False
    return _ORDER[op](a, b)


def compare(op: str, left: Values, right: Values, budget: Budget) -> bool:
    """``left op right`` for ``== != < <= > >=``; false when a side is none."""
    if not left or not right:
        return False
    budget.spend(len(left) * len(right))
    if op == "==":
        return any(_equal(x, y) for x in left for y in right)
    if op == "!=":
        return not any(_equal(x, y) for x in left for y in right)
    return any(_ordered(op, x, y) for x in left for y in right)


def member(left: Values, options: Values, negated: bool, budget: Budget) -> bool:
    """``left in (...)`` / ``left not in (...)``; false when left is none."""
    if not left:
        return False
    budget.spend(len(left) * len(options))
    found = any(_equal(x, o) for x in left for o in options)
    return found != negated


_TEXT_TESTS: dict[str, Callable[[str, str], bool]] = {
    "contains": lambda text, part: part in text,
    "startswith": str.startswith,
    "endswith": str.endswith,
}


def text_test(name: str, values: Values, parts: Values, budget: Budget) -> bool:
    """``contains`` / ``startswith`` / ``endswith``: some value has some part."""
    if not values or not parts:
        return False
    budget.spend(len(values) * len(parts))
    test = _TEXT_TESTS[name]
    return any(test(_text(v), _text(p)) for v in values for p in parts)


def transform(name: str, values: Values, budget: Budget) -> Values:
    """``upper`` / ``lower`` / ``len``, applied to each value (none stays none)."""
    budget.spend(max(1, len(values)))
    if name == "len":
        return tuple(len(_text(v)) for v in values)
    method = str.upper if name == "upper" else str.lower
    return tuple(method(_text(v))[:MAX_TEXT] for v in values)


def truthy(values: Values) -> bool:
    """A finding used as a condition: true when it says true (a yes/no finding)."""
    return any(v is True or (isinstance(v, str) and v.strip().casefold() == "true") for v in values)
