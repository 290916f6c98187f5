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
"""

from __future__ import annotations

import difflib
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from pydicom.datadict import dictionary_VR, keyword_dict, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.valuerep import PersonName

from routing_rules.errors import SpecError

__all__ = ["ValueKind", "Field", "Observed", "ABSENT", "resolve_field", "parse_tag", "observe", "format_tag"]


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
    """

    key: str
    tag: int
    keyword: str
    vr: str
    kind: ValueKind

    @property
    def splits_on_backslash(self) -> bool:
        """Whether a text value ``"A\\B"`` means two values (all VRs but LT/ST/UT/UR)."""
        return self.vr not in _UNSPLIT_VRS


def _dictionary_vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return ""


def resolve_field(key: str) -> Field:
    """Turn a rule key into a :class:`Field`.

    Raises:
        SpecError: the key is neither a DICOM keyword nor a tag; the message
            suggests the nearest keyword when one is close.
    """
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
