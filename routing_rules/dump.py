"""Writing rules back as TOML (export, and editing through the admin UI).

A small emitter rather than a generic TOML writer, because the layout is
part of readability: rule scalars first, then ``[rule.match]`` with one
condition per line (short forms where they mean the same), then
``[[rule.match_any]]`` groups and ``[[rule.actions]]`` tables.  Loading the
output gives rules equal to the input (``Rule.to_dict()`` is the same).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from routing_rules.rules import Rule

__all__ = ["dump_rules", "toml_value"]

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _string(key)


def _string(text: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes; TOML also forbids a raw DEL.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value: Any) -> str:
    """One value in TOML inline syntax.

    Raises:
        TypeError: a value TOML cannot hold (e.g. None).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _table_lines(table: Mapping[str, Any]) -> list[str]:
    return [f"{_key(k)} = {toml_value(v)}" for k, v in table.items()]


def _rule_text(rule: Rule) -> str:
    data = rule.to_dict()
    match = data.pop("match")
    groups = data.pop("match_any", [])
    actions = data.pop("actions")
    lines = ["[[rule]]", *_table_lines(data)]
    if not match:
        lines.append("match = {}")
    else:
        lines += ["", "[rule.match]", *_table_lines(match)]
    for group in groups:
        lines += ["", "[[rule.match_any]]", *_table_lines(group)]
    for action in actions:
        lines += ["", "[[rule.actions]]", *_table_lines(action)]
    return "\n".join(lines) + "\n"


def dump_rules(rules: Iterable[Rule]) -> str:
    """TOML text of the rules, in the order given, one ``[[rule]]`` each."""
    return "\n".join(_rule_text(rule) for rule in rules)
