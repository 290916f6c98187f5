"""Finding the line of a problem in a rule file's text.

``tomllib`` gives line numbers only for syntax errors.  For a rule that
parses but is wrong (an unknown field, a bad regex, an unknown destination)
the line is found here, in the source text: the n-th ``[[rule]]`` header
starts the n-th rule, and within it the error's path (``("match",
"BodyPart")``, ``("actions", 1, "destinations", Quoted("pacz"))``) is followed
key by key.  This is a text search, not a second TOML parser: when a step is
not found, the line of the last step found is given, which is still the right
rule.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from typing import Any

from routing_rules.errors import Quoted

__all__ = ["SourceMap", "syntax_error_line"]

_RULE_HEADER = re.compile(r"^[ \t]*\[\[[ \t]*rule[ \t]*\]\]", re.MULTILINE)
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_TOML_END = re.compile(r"\s*\(at end of document\)$")


def syntax_error_line(message: str, text: str) -> tuple[int | None, str]:
    """Split tomllib's message into (line, reason with the column kept)."""
    m = _TOML_POSITION.search(message)
    if m:
        return int(m.group(1)), f"TOML syntax error: {message[: m.start()]} (column {m.group(2)})"
    m = _TOML_END.search(message)
    if m:
        return max(1, text.count("\n") + (0 if text.endswith("\n") else 1)), f"TOML syntax error: {message[: m.start()]} (at end of file)"
    return None, f"TOML syntax error: {message}"


class SourceMap:
    """Line lookups in one rule file's text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._line_starts = [0] + [m.end() for m in re.finditer(r"\n", text)]
        self._rule_starts = [m.start() for m in _RULE_HEADER.finditer(text)]

    def line_of(self, offset: int) -> int:
        return bisect.bisect_right(self._line_starts, offset)

    def _rule_span(self, index: int, name: str | None) -> tuple[int, int] | None:
        if index < len(self._rule_starts):
            end = self._rule_starts[index + 1] if index + 1 < len(self._rule_starts) else len(self.text)
            return self._rule_starts[index], end
        if name:  # rules written as `rule = [ {...} ]`: fall back to the name
            m = re.search(r"name\s*=\s*[\"']" + re.escape(name) + r"[\"']", self.text)
            if m:
                return m.start(), len(self.text)
        return None

    def rule_line(self, index: int, name: str | None) -> int | None:
        """Line of the rule's ``[[rule]]`` header (or of its name)."""
        span = self._rule_span(index, name)
        return None if span is None else self.line_of(span[0])

    def key_line(self, key: str) -> int | None:
        """Line of the first occurrence of a key anywhere in the file."""
        found = self._first(_key_pattern(key), 0, len(self.text))
        return None if found is None else self.line_of(found)

    def locate(self, index: int, name: str | None, path: tuple[Any, ...]) -> int | None:
        """Best line for a problem at ``path`` inside the ``index``-th rule."""
        span = self._rule_span(index, name)
        if span is None:
            return None
        pos, end = span
        parent: Any = None
        for step in path:
            found = None
            if isinstance(step, int):
                found = self._nth_item(parent, step, pos, end)
            elif isinstance(step, Quoted):
                found = self._first(self._value_pattern(step.value), pos, end)
            elif isinstance(step, str):
                found = self._first(_key_pattern(step), pos, end)
            if found is not None:
                pos = found
            parent = step
        return self.line_of(pos)

    def _uncommented(self, pattern: re.Pattern[str], pos: int, end: int) -> Iterator[int]:
        for m in pattern.finditer(self.text, pos, end):
            line_start = self._line_starts[self.line_of(m.start()) - 1]
            if "#" not in self.text[line_start : m.start()]:
                yield m.start()

    def _first(self, pattern: re.Pattern[str], pos: int, end: int) -> int | None:
        return next(self._uncommented(pattern, pos, end), None)

    def _nth_item(self, parent: Any, n: int, pos: int, end: int) -> int | None:
        """Start of the n-th table of an array (``[[rule.actions]]`` or inline)."""
        if isinstance(parent, str):
            header = re.compile(r"^[ \t]*\[\[[ \t]*rule\." + re.escape(parent) + r"[ \t]*\]\]", re.MULTILINE)
            headers = list(self._uncommented(header, pos, end))
            if headers:
                return headers[n] if n < len(headers) else None
            if parent == "actions":  # inline tables: count their `type =` keys
                types = list(self._uncommented(_key_pattern("type"), pos, end))
                return types[n] if n < len(types) else None
        return None

    @staticmethod
    def _value_pattern(value: Any) -> re.Pattern[str]:
        if isinstance(value, str):
            return re.compile("[\"']" + re.escape(value) + "[\"']")
        return re.compile(r"(?<![\w.])" + re.escape(str(value)) + r"(?![\w.])")


def _key_pattern(key: str) -> re.Pattern[str]:
    """A key as written in TOML: bare, quoted, dotted, or as a table header part."""
    k = re.escape(key)
    return re.compile(r"(?:^|(?<=[\s{,.\[]))(?:\"" + k + r"\"|'" + k + r"'|" + k + r")(?=[ \t]*[=.\]])", re.MULTILINE)
