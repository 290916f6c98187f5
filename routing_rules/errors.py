"""Error types of the rules library.

Two kinds of errors exist, and they are kept apart on purpose:

* :class:`RuleError` is a *report*, not an exception.  Loading a rules folder
  never raises because one file is broken: every problem becomes a
  ``RuleError`` with the file, the line and the rule it concerns, and the
  rules that are fine keep working.
* :class:`SpecError` and :class:`ActionError` are raised *while* one rule is
  being checked.  They carry a path into the rule's table (for example
  ``("match", "BodyPartExamined")``) so that the loader can find the line of
  the offending key in the source text, which ``tomllib`` does not tell.

:class:`ExpressionError` is the one exception
:func:`routing_rules.expression.parse_expression` raises for any text it
refuses, hostile or merely mistyped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["RuleError", "SpecError", "ActionError", "ExpressionError", "Quoted"]


@dataclass(frozen=True)
class RuleError:
    """One problem found while loading rules.

    Attributes:
        file: the rule file (or ``"<text>"`` for rules parsed from a string).
        line: 1-based line of the problem, or ``None`` when no line applies
            (a missing folder, an unreadable file).
        rule_name: the rule concerned, or ``None`` for file-level problems
            such as a TOML syntax error.
        message: what is wrong, in words an administrator can act on.
    """

    file: str
    line: int | None
    rule_name: str | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        if self.rule_name is None:
            return f"{where}: {self.message}"
        return f"{where}: rule '{self.rule_name}': {self.message}"


@dataclass(frozen=True)
class Quoted:
    """A value (not a key) to look for in the source text when placing an error.

    Used as the last element of an error path, e.g. the destination name
    ``"pacz"`` inside ``destinations = ["pacs", "pacz"]``.
    """

    value: Any


class SpecError(ValueError):
    """A part of one rule is invalid.

    Args:
        message: the reason, without file or line (the loader adds those).
        path: keys (and list indexes) leading from the rule's table to the
            offending entry; used only to find the line in the source.
    """

    def __init__(self, message: str, path: tuple[Any, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


class ActionError(ValueError):
    """Raised by action validators (built-in or registered by the host).

    Args:
        message: the reason, e.g. ``"unknown destination 'pacz'"``.
        key: the action key concerned (``"destinations"``), if any.
        value: the offending value, if any; helps to find the exact line.
    """

    def __init__(self, message: str, key: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key
        self.value = value


class ExpressionError(SpecError):
    """A ``when`` expression is refused.

    Args:
        reason: what is wrong, e.g. ``"unknown function 'open'"``.
        line: 1-based line inside the expression text, or None.
        column: 1-based column inside that line, or None.
        multiline: the expression spans several lines (a TOML multi-line
            string), so the line is worth naming.

    ``message`` is the reason with its place: ``"unknown function 'open' at
    column 12"``, or ``"... at line 2, column 5"`` for a multi-line text.
    """

    def __init__(self, reason: str, line: int | None = None, column: int | None = None, multiline: bool = False) -> None:
        where = ""
        if column is not None:
            where = f" at line {line}, column {column}" if multiline and line is not None else f" at column {column}"
        super().__init__(reason + where, ("when",))
        self.reason = reason
        self.line = line
        self.column = column
