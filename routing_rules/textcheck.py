"""Checks of rule text before it is parsed: hidden direction changes and hostile nesting.

Bidirectional control characters (the "Trojan Source" characters: embeddings,
overrides and isolates, U+202A-U+202E and U+2066-U+2069, and the marks
U+200E, U+200F and U+061C) make an editor show text in another order than the
one it has, so a rule could read ``Modality == 'CT'`` and test something
else.  Rules have no use for them, so they are refused anywhere in a rule
file, inside strings and comments too.

``tomllib`` parses arrays and inline tables by recursion: a file nested some
thousand levels deep ends in a :class:`RecursionError` instead of a syntax
error.  :func:`nesting_problem` measures the depth with a linear scan first
(brackets and braces outside strings and comments), so such a file is one
error of its own; rule files need a handful of levels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["BIDI_CONTROLS", "MAX_NESTING", "bidi_problem", "document_depth", "line_and_column", "nesting_problem"]

BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
MAX_NESTING = 20
"""Deepest nesting of arrays, inline tables and dotted keys in a rule file (a rule needs about 5)."""

_OPEN, _CLOSE = "[{", "]}"


def line_and_column(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of a character offset."""
    line_start = text.rfind("\n", 0, offset) + 1
    return text.count("\n", 0, offset) + 1, offset - line_start + 1


def bidi_problem(text: str) -> tuple[int, str] | None:
    """(offset, message) of the first bidirectional control character, or None."""
    for offset, char in enumerate(text):
        if char in BIDI_CONTROLS:
            return offset, (
                f"bidirectional control character U+{ord(char):04X} refused: it makes the text display "
                "in another order than it is read"
            )
    return None


def nesting_problem(text: str, limit: int = MAX_NESTING) -> tuple[int, str] | None:
    """(offset, message) where TOML text nests arrays/inline tables deeper than ``limit``, or None.

    A scan, not a parser: it skips strings (basic, literal, multi-line) and
    comments as TOML defines them and counts the brackets between.  Where the
    text is not valid TOML the count may be off, but ``tomllib`` then stops
    at the syntax error before it reaches the brackets concerned.
    """
    depth, i, n = 0, 0, len(text)
    while i < n:
        char = text[i]
        if char == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif char in "\"'":
            i = _string_end(text, i)
        elif char in _OPEN:
            depth += 1
            if depth > limit:
                return i, f"nested deeper than {limit} levels (arrays and inline tables)"
            i += 1
        else:
            if char in _CLOSE and depth > 0:
                depth -= 1
            i += 1
    return None


def _string_end(text: str, start: int) -> int:
    """Offset just after the string starting at ``start`` (or after its line, if it is not closed there)."""
    quote = text[start]
    basic = quote == '"'
    if text.startswith(quote * 3, start):
        i = start + 3
        while i < len(text):
            if basic and text[i] == "\\":
                i += 2
            elif text.startswith(quote * 3, i):
                return i + 3 + (2 if text.startswith(quote * 5, i) else 1 if text.startswith(quote * 4, i) else 0)
            else:
                i += 1
        return len(text)
    i = start + 1
    while i < len(text) and text[i] != "\n":
        if basic and text[i] == "\\":
            i += 2
        elif text[i] == quote:
            return i + 1
        else:
            i += 1
    return i


def document_depth(document: Mapping[str, Any]) -> int:
    """Levels of tables and arrays in a parsed document (dotted keys nest too), counted without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        children: Iterable[Any] = node.values() if isinstance(node, Mapping) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, (Mapping, list)))
    return deepest
