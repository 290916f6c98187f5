"""Regular expressions of rules, evaluated by RE2: time linear in the value, whatever the pattern.

Python's ``re`` backtracks: ``(a+)+$`` against 28 ``a`` and a ``!`` takes
tens of seconds, doubling with each character, and a rule editor can plant
such a pattern while any modality can send the value.  RE2 (``google-re2``)
matches without backtracking, so no pattern can do that; the price is that
the few features that need backtracking (backreferences, lookahead and
lookbehind, atomic groups, possessive quantifiers, conditionals) are not
available.  A pattern that uses one is refused when its rule is loaded, with
the feature named, rather than accepted and run by another engine.

Values are matched on at most :data:`MAX_MATCH_CHARS` characters: a DICOM
text of up to 4 GB (UT) costs no more than a short one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import re2  # type: ignore[import-untyped]

__all__ = ["MAX_MATCH_CHARS", "MAX_PATTERN_CHARS", "PatternError", "compile_pattern"]

MAX_MATCH_CHARS = 4096
"""A value longer than this is matched on its first 4096 characters (DICOM LO is 64, LT 10240)."""
MAX_PATTERN_CHARS = 1000
"""Longest pattern accepted; RE2 also refuses patterns whose program exceeds its memory budget."""

# Features RE2 has not, recognised in the pattern text to name them in the error.
_FEATURES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\\[1-9]|\\g[<{0-9-]|\\k[<{']|\(\?P="), "backreferences (\\1, (?P=name)) are not supported"),
    (re.compile(r"\(\?<?[=!]"), "lookahead and lookbehind ((?=...), (?!...), (?<=...), (?<!...)) are not supported"),
    (re.compile(r"\(\?>"), "atomic groups ((?>...)) are not supported"),
    (re.compile(r"\(\?\("), "conditionals ((?(1)...)) are not supported"),
    (re.compile(r"[*+?}]\+"), "possessive quantifiers (*+, ++, ?+) are not supported"),
    (re.compile(r"\\Z"), "\\Z is not supported: write \\z for the end of the value"),
)


class PatternError(ValueError):
    """RE2 refuses the pattern; the message says why in words."""


def _options(case_sensitive: bool) -> Any:
    options = re2.Options()
    options.case_sensitive = case_sensitive
    options.log_errors = False  # the error is reported once, with the rule; not on stderr as well
    return options


def compile_pattern(pattern: str, case_sensitive: bool) -> Callable[[str], bool]:
    """A test "the pattern is found in the text" (like ``re.search``), run by RE2.

    Raises:
        PatternError: the pattern is too long, uses a feature RE2 lacks, or
            is not a valid expression.
    """
    if len(pattern) > MAX_PATTERN_CHARS:
        raise PatternError(f"regular expression longer than {MAX_PATTERN_CHARS} characters")
    try:
        compiled = re2.compile(pattern, _options(case_sensitive))
    except re2.error as exc:
        raise PatternError(_explain(pattern, exc)) from None

    def found(text: str) -> bool:
        return compiled.search(text[:MAX_MATCH_CHARS]) is not None

    return found


def _explain(pattern: str, exc: Exception) -> str:
    for feature, message in _FEATURES:
        if feature.search(pattern):
            return f"{message} (rules use the RE2 engine, which never backtracks)"
    detail = exc.args[0] if exc.args else exc
    text = detail.decode("utf-8", "replace") if isinstance(detail, bytes) else str(detail)
    return f"{text} (RE2 syntax)"
