"""The identifying attributes of a received dataset, read straight from its bytes.

Every C-STORE needs the Study, Series and SOP Instance UIDs, the Modality
and the Series Description before it can be stored and recorded.  They all
sit at the start of the dataset (groups 0008 and 0020, before Series
Instance UID), but decoding that part with pydicom builds a ``Dataset`` and
element objects and runs per-value conversions: about a tenth of the
receiver's CPU per CT slice.  This module walks the top-level elements with
``struct`` instead, stepping over sequences (nested, of defined or
undefined length), and stops after Series Instance UID.

It handles the little-endian encodings (implicit and explicit VR) with
ASCII text.  Anything else (big endian, a non-ASCII Series Description,
bytes that do not parse) returns None, and the caller decodes with
pydicom as before.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

UNDEFINED = 0xFFFFFFFF
_LAST = 0x0020000E  # Series Instance UID
_WANTED = {
    0x00080018: "sop_uid",
    0x00080060: "modality",
    0x0008103E: "series_description",
    0x0020000D: "study_uid",
    0x0020000E: "series_uid",
}
# Explicit VR element forms with a 32-bit length (PS3.5 section 7.1.2)
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


@dataclass(frozen=True)
class Identifiers:
    """What the receiver keeps of a dataset; None where the attribute is absent or empty."""

    study_uid: str | None
    series_uid: str | None
    sop_uid: str | None
    modality: str | None
    series_description: str | None


def element_header(data: bytes | memoryview, offset: int, implicit: bool) -> tuple[int, int, int, bool]:
    """(tag, value length, value offset, value is implicit VR) of the element at ``offset``."""
    group, element = struct.unpack_from("<HH", data, offset)
    tag = group << 16 | element
    if implicit or group == 0xFFFE:  # item and delimiter tags carry no VR in either encoding
        (length,) = struct.unpack_from("<I", data, offset + 4)
        return tag, length, offset + 8, implicit
    vr = bytes(data[offset + 4:offset + 6])
    if vr in LONG_VRS:
        (length,) = struct.unpack_from("<I", data, offset + 8)
        # an undefined-length UN holds a sequence encoded in implicit VR (PS3.5 section 6.2.2)
        return tag, length, offset + 12, vr == b"UN"
    if not vr.isalpha() or not vr.isupper():
        raise ValueError(f"no VR at byte {offset}")
    (length,) = struct.unpack_from("<H", data, offset + 6)
    return tag, length, offset + 8, False


def _skip_sequence(data: memoryview, offset: int, implicit: bool) -> int:
    """Step over the items of an undefined-length sequence; returns the offset after its delimiter."""
    while True:
        tag, length, offset, _ = element_header(data, offset, True)
        if tag == _SEQUENCE_END:
            return offset
        if tag != _ITEM:
            raise ValueError(f"expected an item at byte {offset - 8}")
        if length != UNDEFINED:
            offset += length
            continue
        while True:  # the item's own elements, up to its delimiter
            tag, length, offset, nested_implicit = element_header(data, offset, implicit)
            if tag == _ITEM_END:
                break
            offset = _skip_sequence(data, offset, nested_implicit) if length == UNDEFINED else offset + length


def read_identifiers(dataset: bytes | memoryview, *, implicit_vr: bool, little_endian: bool) -> Identifiers | None:
    """The identifying attributes of an encoded dataset, or None where pydicom must decode it."""
    if not little_endian:
        return None
    data = memoryview(dataset)
    values: dict[str, str] = {}
    offset = 0
    try:
        while offset + 8 <= len(data):
            tag, length, value_at, nested_implicit = element_header(data, offset, implicit_vr)
            if tag > _LAST:
                break
            if length == UNDEFINED:
                offset = _skip_sequence(data, value_at, nested_implicit)
                continue
            offset = value_at + length
            if offset > len(data):
                return None
            name = _WANTED.get(tag)
            if name is not None:
                raw = bytes(data[value_at:offset])
                if not raw.isascii() or b"\\" in raw:
                    return None  # other character sets and multiple values: pydicom's job
                values[name] = raw.rstrip(b"\x00 ").lstrip(b" ").decode("ascii")
    except (struct.error, ValueError):
        return None
    return Identifiers(**{name: values.get(name) or None for name in _WANTED.values()})
