"""Header fields named in rules, and the values instances hold for them.

A rule names an attribute by its DICOM keyword (``BodyPartExamined``) or by
its tag, written ``"(0018,0015)"`` or ``"00180015"``.  Names are checked
against pydicom's data dictionary when the rule is loaded, so a typo is a
load error with a suggestion instead of a rule that silently never fires.

The value representation (VR) from the dictionary decides how values compare
(:class:`ValueKind`): numbers numerically, dates and times as digit strings,
ages (``045Y``) as years, everything else as case-insensitive text.

Values are normalised into an :class:`Observed`: a tuple of the attribute's
values (multi-valued attributes such as ImageType give several) with padding
spaces removed, plus whether the attribute is present.  An attribute that is
present but empty (a DICOM type 2 attribute such as ContrastBolusAgent) counts
as absent, because that is what "not given" means to a PACS administrator.

Besides header attributes, a rule may name what a header-fix model found about
the series: ``finding.<model>.<key>`` (``finding.enhancement-hu.label``).
Such a field has no tag; its values come from the findings mapping attached
to the headers (see :mod:`routing_rules.headers`) and compare "as given"
(numbers numerically, text as text), with booleans read as the words
``true`` / ``false``.
"""

from __future__ import annotations

import difflib
import enum
import numbers
import re
from collections.abc import Collection, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from pydicom.datadict import dictionary_VR, keyword_dict, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.valuerep import PersonName

from routing_rules.errors import SpecError

__all__ = [
    "ValueKind",
    "Field",
    "Observed",
    "ABSENT",
    "resolve_field",
    "parse_tag",
    "observe",
    "format_tag",
    "finding_field",
    "check_finding_model",
    "observe_finding",
]


class ValueKind(enum.Enum):
    """How the values of a field compare; derived from the dictionary VR."""

    TEXT = "text"
    NUMBER = "number"
    DATE = "date"
    TIME = "time"
    DATETIME = "datetime"
    AGE = "age"
    SEQUENCE = "sequence"
    BINARY = "binary"
    UNKNOWN = "unknown"  # private or unknown tags: no VR known, compare as given


_NUMERIC_VRS = frozenset({"DS", "IS", "US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"})
_BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
_KIND_BY_VR = {"DA": ValueKind.DATE, "TM": ValueKind.TIME, "DT": ValueKind.DATETIME, "AS": ValueKind.AGE, "SQ": ValueKind.SEQUENCE}
# Text VRs whose single value may itself contain backslashes: never split.
_UNSPLIT_VRS = frozenset({"LT", "ST", "UT", "UR"})

_TAG_PAREN = re.compile(r"^\(\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)$")
_TAG_PLAIN = re.compile(r"^([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})$")

_KEYWORDS_BY_FOLDED = {k.casefold(): k for k in keyword_dict}

FINDING_ROOT = "finding"
# Model names are registry names ("enhancement-hu"); keys may be dotted to reach
# into nested findings ("probabilities.enhanced").
_MODEL_NAME = r"[A-Za-z0-9][A-Za-z0-9_-]*"
_KEY_PART = r"[A-Za-z0-9][A-Za-z0-9_-]*"
FINDING_NAME = re.compile(rf"^{FINDING_ROOT}\.({_MODEL_NAME})\.({_KEY_PART}(?:\.{_KEY_PART})*)$")
_FINDING_FORM = "finding.<model>.<key>, e.g. finding.enhancement-hu.label"


def _kind_for_vr(vr: str) -> ValueKind:
    """Map a dictionary VR (possibly ambiguous, ``"US or SS"``) to a kind."""
    if not vr:
        return ValueKind.UNKNOWN
    options = [v.strip() for v in vr.split(" or ")]
    if any(v in _NUMERIC_VRS for v in options):
        return ValueKind.NUMBER
    if all(v in _BINARY_VRS for v in options):
        return ValueKind.BINARY
    return _KIND_BY_VR.get(options[0], ValueKind.TEXT)


def format_tag(tag: int) -> str:
    """``0x00180015`` -> ``"(0018,0015)"``."""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def parse_tag(text: str) -> int | None:
    """Parse ``"(0018,0015)"``, ``"0018,0015"`` or ``"00180015"``; None if not a tag."""
    m = _TAG_PAREN.match(text.strip()) or _TAG_PLAIN.match(text.strip())
    if m is None:
        return None
    return (int(m.group(1), 16) << 16) | int(m.group(2), 16)


@dataclass(frozen=True)
class Field:
    """A header attribute as a rule names it.

    Attributes:
        key: the name exactly as written in the rule (kept for messages and
            for writing the rule back out).
        tag: the DICOM tag as an integer.
        keyword: the dictionary keyword, ``""`` for private/unknown tags.
        vr: the dictionary VR, ``""`` when unknown.
        kind: how values compare.
        finding: ``(model, key)`` for a ``finding.<model>.<key>`` field,
            ``None`` for a header attribute.  A finding field has ``tag = -1``,
            no keyword and no VR, and compares as :attr:`ValueKind.UNKNOWN`.
    """

    key: str
    tag: int
    keyword: str
    vr: str
    kind: ValueKind
    finding: tuple[str, str] | None = None

    @property
    def splits_on_backslash(self) -> bool:
        """Whether a text value ``"A\\B"`` means two values (all VRs but LT/ST/UT/UR)."""
        return self.vr not in _UNSPLIT_VRS

    @property
    def lookup_key(self) -> Hashable:
        """What identifies the source of the values: the tag, or (model, key) for findings."""
        return self.tag if self.finding is None else self.finding

    @property
    def model(self) -> str | None:
        """The model a finding field waits for; ``None`` for header attributes."""
        return None if self.finding is None else self.finding[0]


def _dictionary_vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return ""


def resolve_field(key: str) -> Field:
    """Turn a rule key into a :class:`Field`.

    ``finding.<model>.<key>`` names a header-fix finding (see :func:`finding_field`).

    Raises:
        SpecError: the key is neither a DICOM keyword nor a tag nor a
            well-formed finding name; the message suggests the nearest
            keyword when one is close.
    """
    if key == FINDING_ROOT or key.startswith(FINDING_ROOT + "."):
        return _parse_finding_name(key)
    tag = parse_tag(key)
    if tag is not None:
        vr = _dictionary_vr(tag)
        keyword = keyword_for_tag(tag) if vr else ""
        return Field(key=key, tag=tag, keyword=keyword, vr=vr, kind=_kind_for_vr(vr))
    if key in keyword_dict:
        tag = keyword_dict[key]
        vr = _dictionary_vr(tag)
        return Field(key=key, tag=tag, keyword=key, vr=vr, kind=_kind_for_vr(vr))
    raise SpecError(f"unknown field '{key}': not a DICOM keyword nor a tag like (0018,0015){_suggest(key)}")


def finding_field(model: str, key: str) -> Field:
    """The field ``finding.<model>.<key>``.

    Raises:
        SpecError: the model name or the key is not well formed.
    """
    return _parse_finding_name(f"{FINDING_ROOT}.{model}.{key}")


def _parse_finding_name(name: str) -> Field:
    m = FINDING_NAME.match(name)
    if m is None:
        parts = name.split(".")
        if len(parts) < 3 or not all(parts[1:]):
            raise SpecError(f"finding field '{name}' needs a model name and a key: {_FINDING_FORM}")
        raise SpecError(
            f"finding field '{name}': model names and keys are letters, digits, '_' and '-', starting with "
            f"a letter or digit (a dotted key reaches into nested findings): {_FINDING_FORM}"
        )
    model, key = m.group(1), m.group(2)
    return Field(key=name, tag=-1, keyword="", vr="", kind=ValueKind.UNKNOWN, finding=(model, key))


def check_finding_model(field: Field, known_models: Collection[str] | None) -> None:
    """Reject a finding of a model the caller does not know (a typo would wait forever).

    Raises:
        SpecError: ``known_models`` is given and lacks the field's model.
    """
    model = field.model
    if model is None or known_models is None or model in known_models:
        return
    close = difflib.get_close_matches(model, sorted(known_models), n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    known = ", ".join(sorted(known_models)) or "none"
    raise SpecError(f"{field.key}: unknown model '{model}'; {hint}known: {known}")


def _suggest(key: str) -> str:
    exact = _KEYWORDS_BY_FOLDED.get(key.casefold())
    if exact is not None:
        return f"; keywords are case-sensitive: did you mean '{exact}'?"
    close = difflib.get_close_matches(key, keyword_dict.keys(), n=3, cutoff=0.8)
    if len(key) >= 4:
        close += sorted(k for k in keyword_dict if k.startswith(key) and k not in close)[: 3 - len(close)]
    return "; did you mean " + " or ".join(f"'{c}'" for c in close) + "?" if close else ""


Value = str | int | float


class Observed(NamedTuple):
    """What one instance holds for one field.

    A named tuple, because evaluation counts and compares many of them (one
    per image and field): tuple hashing and equality run in C.

    Attributes:
        values: the values, padding removed; several for multi-valued
            attributes, empty when absent or empty.
        present: whether the attribute is there with content (a sequence
            with items or binary data counts, although it gives no values).
    """

    values: tuple[Value, ...]
    present: bool

    def display(self, bare_numbers: bool = False) -> str:
        """Short human form: ``'CT'``, ``'ORIGINAL\\PRIMARY'``, ``5.0``, ``absent``.

        Args:
            bare_numbers: write numeric text without quotes (numeric fields
                read better as ``5.0`` than ``'5.0'``); non-numeric text is
                always quoted.
        """
        if not self.present:
            return "absent"
        if not self.values:
            return "present (no comparable value)"
        text = "\\".join(str(v) for v in self.values)
        texts = [v for v in self.values if isinstance(v, str)]
        if not texts or (bare_numbers and all(_is_number(v) for v in texts)):
            return text
        return f"'{text}'"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


ABSENT = Observed((), False)


def observe(raw: Any, field: Field) -> Observed:
    """Normalise a raw header value (from pydicom or from a stored dict).

    Never raises: values of unexpected types are turned into text, so that a
    strange header cannot break rule evaluation.
    """
    if raw is None:
        return ABSENT
    if isinstance(raw, Sequence) or (
        isinstance(raw, (list, tuple)) and raw and all(isinstance(i, (Dataset, Mapping)) for i in raw)
    ):
        return Observed((), len(raw) > 0)
    if isinstance(raw, (bytes, bytearray, memoryview)):
        if field.kind is ValueKind.BINARY:
            return Observed((), len(raw) > 0)
        raw = bytes(raw).decode("latin-1")
    items = raw if isinstance(raw, (list, tuple, MultiValue)) else (raw,)
    values: list[Value] = []
    for item in items:
        values.extend(_scalar_values(item, field))
    return Observed(tuple(values), bool(values))


def _scalar_values(item: Any, field: Field) -> list[Value]:
    if item is None:
        return []
    if isinstance(item, bool):
        return [int(item)]
    if isinstance(item, (int, float)):
        return [item]
    if isinstance(item, PersonName):
        text = str(item).strip(" \x00")
        return [text] if text else []
    if isinstance(item, Mapping):  # DICOM JSON person name: {"Alphabetic": "..."}
        item = item.get("Alphabetic", "")
    if isinstance(item, (bytes, bytearray)):
        item = bytes(item).decode("latin-1")
    text = item if isinstance(item, str) else str(item)
    parts = text.split("\\") if field.splits_on_backslash else [text]
    return [p for p in (part.strip(" \x00") for part in parts) if p]


def observe_finding(findings: Mapping[str, Any], field: Field) -> Observed:
    """What a findings mapping (model -> key -> value) holds for a finding field.

    The key is looked up as written first, then, if it is dotted, step by step
    through nested mappings (``probabilities.enhanced``).  Booleans become the
    texts ``"true"`` / ``"false"``; ``None`` and empty text count as absent; a
    list gives several values; a nested mapping is present without a
    comparable value.  Never raises.
    """
    if field.finding is None:
        return ABSENT
    model, key = field.finding
    values = findings.get(model)
    if not isinstance(values, Mapping):
        return ABSENT
    raw = values[key] if key in values else _nested(values, key)
    if isinstance(raw, Mapping):
        return Observed((), len(raw) > 0)
    items = raw if isinstance(raw, (list, tuple)) else (raw,)
    out: list[Value] = []
    for item in items:
        value = _finding_scalar(item)
        if value is not None:
            out.append(value)
    return Observed(tuple(out), bool(out))


def _nested(values: Mapping[str, Any], key: str) -> Any:
    node: Any = values
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _finding_scalar(item: Any) -> Value | None:
    if item is None or isinstance(item, Mapping):
        return None
    if isinstance(item, bool) or getattr(getattr(item, "dtype", None), "kind", "") == "b":  # numpy booleans too
        return "true" if item else "false"
    if isinstance(item, numbers.Integral):
        return int(item)
    if isinstance(item, numbers.Real):
        return float(item)
    text = item.decode("latin-1") if isinstance(item, (bytes, bytearray)) else str(item)
    text = text.strip(" \x00")
    return text or None
