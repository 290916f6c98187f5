"""A structural walk of a received dataset: every tag and length to the end, no value decoding.

The receiver stores the bytes as they came, so an object whose elements do
not add up (a length past the end, truncated pixel data, garbage in the
middle of a JPEG object) would otherwise be acknowledged and fail only later,
in the main process or at the PACS, and could replace a good stored copy of
the same SOP Instance UID.  This walk runs before anything is stored and
answers "does this parse?" the way a reader would have to: element headers
in the negotiated encoding, sequences and items of defined and undefined
length, encapsulated pixel data fragments, delimiters where they belong.  It
jumps over every value, so it costs the number of elements, not the size of
the object (microseconds per CT slice; docs/benchmarks/receiver.md).

Two values are read on the way, both at the top level: the SOP Class UID
(the receiver compares it with the C-STORE request's) and the image
geometry, so that native Pixel Data shorter than its rows x columns x
samples x frames x bits is refused as truncated.

Big and little endian, implicit and explicit VR are walked; a deflated
dataset is inflated first, within limits (:mod:`dicom_node.receive.deflate`).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from pydicom.datadict import DicomDictionary
from pydicom.uid import UID

from dicom_node.defaults import STRUCTURE_MAX_DEPTH
from dicom_node.receive.deflate import DeflateError, DeflateLimits, inflate_prefix, measure

UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_SOP_CLASS_UID = 0x00080016
_PIXEL_DATA = 0x7FE00010
_GEOMETRY = {0x00280002: "samples", 0x00280008: "frames", 0x00280010: "rows", 0x00280011: "columns", 0x00280100: "bits"}
_PHOTOMETRIC = 0x00280004
# Explicit VR element forms with a 32-bit length (PS3.5 section 7.1.2)
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_SHORT_VRS = frozenset({
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN", b"SH", b"SL", b"SS",
    b"ST", b"TM", b"UI", b"UL", b"US",
})
# In implicit VR only the dictionary says which defined-length elements are sequences.
_SEQUENCE_TAGS = frozenset(tag for tag, entry in DicomDictionary.items() if entry[0] == "SQ")

# container kinds on the walk's stack
_DATASET, _SEQUENCE, _FRAGMENTS = 0, 1, 2
_NAMES = {_DATASET: "item", _SEQUENCE: "sequence", _FRAGMENTS: "pixel data fragments"}


class MalformedDataset(ValueError):
    """The bytes are not a dataset: the message says what and at which byte."""


@dataclass(frozen=True)
class Structure:
    """What the walk read besides "it parses"."""

    sop_class_uid: str | None
    elements: int


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _text(value: bytes | bytearray | memoryview) -> str:
    return bytes(value).rstrip(b"\0 ").decode("ascii", "replace")


def _expected_pixel_bytes(geometry: dict[str, int]) -> int | None:
    """Bytes native Pixel Data needs for its geometry; None when a needed attribute is absent."""
    try:
        rows, columns, bits = geometry["rows"], geometry["columns"], geometry["bits"]
    except KeyError:
        return None
    if "subsampled" in geometry:
        return None
    pixel_bits = rows * columns * geometry.get("samples", 1) * geometry.get("frames", 1) * bits
    return (pixel_bits + 7) // 8


def walk(data: bytes | bytearray | memoryview, *, implicit_vr: bool, little_endian: bool, native_pixels: bool = True) -> Structure:
    """Walk every element of ``data`` (a dataset without file meta); raise :class:`MalformedDataset` if it does not parse.

    ``native_pixels`` says the transfer syntax is not encapsulated, so that
    defined-length Pixel Data is checked against the image geometry.
    """
    order = "<" if little_endian else ">"
    tag_length = struct.Struct(order + "HHI").unpack_from
    short_length = struct.Struct(order + "H").unpack_from
    long_length = struct.Struct(order + "I").unpack_from
    end = len(data)
    pos = 0
    elements = 0
    sop_class: str | None = None
    geometry: dict[str, int] = {}
    # frames: [kind, limit (None = undefined length), bound (nearest defined limit), implicit VR]
    stack: list[tuple[int, int | None, int, bool]] = [(_DATASET, end, end, implicit_vr)]
    while stack:
        kind, limit, bound, implicit = stack[-1]
        if pos == limit:
            stack.pop()
            continue
        if pos + 8 > bound:
            if limit is None:
                raise MalformedDataset(f"undefined-length {_NAMES[kind]} not ended before byte {bound}")
            raise MalformedDataset(f"{bound - pos} stray byte(s) at byte {pos}, too few for an element")
        group, element, length = tag_length(data, pos)
        tag = group << 16 | element
        if kind != _DATASET:  # items and delimiters only
            pos += 8
            if tag == _SEQUENCE_END and limit is None:
                if length:
                    raise MalformedDataset(f"sequence delimiter with length {length} at byte {pos - 8}")
                stack.pop()
            elif tag != _ITEM:
                raise MalformedDataset(f"{_tag(tag)} at byte {pos - 8} where a {_NAMES[kind]} item was expected")
            elif kind == _FRAGMENTS or length != UNDEFINED:
                if length == UNDEFINED or pos + length > bound:
                    raise MalformedDataset(f"item length {length} at byte {pos - 8} runs past the end ({bound - pos} bytes left)")
                if kind == _FRAGMENTS:
                    pos += length
                else:
                    stack.append((_DATASET, pos + length, pos + length, implicit))
            else:
                stack.append((_DATASET, None, bound, implicit))
            if len(stack) > STRUCTURE_MAX_DEPTH:
                raise MalformedDataset(f"sequences nested deeper than {STRUCTURE_MAX_DEPTH} at byte {pos}")
            continue
        elements += 1
        if group == 0xFFFE:
            if tag == _ITEM_END and limit is None and len(stack) > 1 and length == 0:
                pos += 8
                stack.pop()
                continue
            raise MalformedDataset(f"{_tag(tag)} at byte {pos} inside a dataset")
        vr = b""
        if implicit:
            header = 8
        else:
            vr = bytes(data[pos + 4:pos + 6])
            if vr in _LONG_VRS:
                if pos + 12 > bound:
                    raise MalformedDataset(f"element {_tag(tag)} header cut off at byte {pos}")
                (length,) = long_length(data, pos + 8)
                header = 12
            elif vr in _SHORT_VRS:
                (length,) = short_length(data, pos + 6)
                header = 8
            else:
                raise MalformedDataset(f"element {_tag(tag)} at byte {pos} has no valid VR ({vr!r})")
        value = pos + header
        if length == UNDEFINED:
            if tag == _PIXEL_DATA and vr in (b"OB", b"OW", b""):
                stack.append((_FRAGMENTS, None, bound, implicit))
            elif vr in (b"SQ", b""):
                stack.append((_SEQUENCE, None, bound, implicit))
            elif vr == b"UN":  # holds a sequence encoded in implicit VR little endian (PS3.5 6.2.2)
                stack.append((_SEQUENCE, None, bound, True))
            else:
                raise MalformedDataset(f"element {_tag(tag)} ({vr.decode('ascii')}) of undefined length at byte {pos}")
            if len(stack) > STRUCTURE_MAX_DEPTH:
                raise MalformedDataset(f"sequences nested deeper than {STRUCTURE_MAX_DEPTH} at byte {pos}")
            pos = value
            continue
        if value + length > bound:
            raise MalformedDataset(
                f"element {_tag(tag)} at byte {pos} has length {length}, past the end ({bound - value} bytes left)"
            )
        if vr == b"SQ" or (implicit and tag in _SEQUENCE_TAGS):
            stack.append((_SEQUENCE, value + length, value + length, implicit))
            if len(stack) > STRUCTURE_MAX_DEPTH:
                raise MalformedDataset(f"sequences nested deeper than {STRUCTURE_MAX_DEPTH} at byte {pos}")
        elif len(stack) == 1:
            if tag == _SOP_CLASS_UID:
                sop_class = _text(data[value:value + length]) or None
            elif tag == _PHOTOMETRIC and b"_42" in bytes(data[value:value + length]):
                geometry["subsampled"] = 1  # YBR_*_422 / _420: fewer bytes than rows x columns x samples
            elif tag in _GEOMETRY:
                _read_geometry(geometry, _GEOMETRY[tag], data[value:value + length], little_endian)
            elif tag == _PIXEL_DATA and native_pixels:
                needed = _expected_pixel_bytes(geometry)
                if needed is not None and length < needed:
                    raise MalformedDataset(f"Pixel Data has {length} bytes, its image needs {needed} (truncated)")
        pos = value + length
    return Structure(sop_class_uid=sop_class, elements=elements)


def _read_geometry(geometry: dict[str, int], name: str, value: bytes | bytearray | memoryview, little_endian: bool) -> None:
    """Keep one geometry value when it reads cleanly (US, or IS for Number of Frames); a bad one just skips the check."""
    if name == "frames":
        try:
            geometry[name] = max(int(bytes(value).strip(b"\0 ") or b"1"), 1)
        except ValueError:
            pass
    elif len(value) == 2:
        geometry[name] = int.from_bytes(value, "little" if little_endian else "big")


STATUS_CANNOT_UNDERSTAND = 0xC210
STATUS_OUT_OF_RESOURCES = 0xA700  # "Refused: out of resources": a deflated dataset past the inflation limits
DEFAULT_DEFLATE_LIMITS = DeflateLimits(max_bytes=256 << 20, max_ratio=100.0)  # node.toml's defaults
STATUS_SOP_CLASS_MISMATCH = 0xA900  # "Error: data set does not match SOP class" (PS3.4 B.2.3)


@dataclass(frozen=True)
class Refusal:
    """The C-STORE status for a dataset that must not be stored, and the log line's reason."""

    status: int
    reason: str


def refusal(data: bytes | bytearray | memoryview, *, transfer_syntax: UID, sop_class_uid: str,
            deflate_limits: DeflateLimits | None = None) -> Refusal | None:
    """Why a received dataset must be refused before it is stored, or None when it walks cleanly.

    0xC210 when it does not parse in the negotiated transfer syntax, 0xA900
    when its SOP Class UID is not the one the C-STORE request names.  A
    deflated dataset is first inflated in chunks and thrown away, only to
    learn its size: past ``deflate_limits`` it is refused with 0xA700 (a
    deflate bomb is a resource attack, not a dataset); within them it is
    inflated and walked like any other.
    """
    if transfer_syntax.is_deflated:
        try:
            measure(data, deflate_limits or DEFAULT_DEFLATE_LIMITS)
            data = inflate_prefix(data, (deflate_limits or DEFAULT_DEFLATE_LIMITS).max_bytes)
        except DeflateError as exc:
            status = STATUS_OUT_OF_RESOURCES if "inflates past" in str(exc) else STATUS_CANNOT_UNDERSTAND
            return Refusal(status, str(exc))
    try:
        found = walk(
            data, implicit_vr=transfer_syntax.is_implicit_VR, little_endian=transfer_syntax.is_little_endian,
            native_pixels=not transfer_syntax.is_encapsulated,
        )
    except MalformedDataset as exc:
        return Refusal(STATUS_CANNOT_UNDERSTAND, f"dataset does not parse: {exc}")
    if found.sop_class_uid is not None and found.sop_class_uid != sop_class_uid:
        return Refusal(STATUS_SOP_CLASS_MISMATCH, f"dataset SOP Class UID {found.sop_class_uid} differs from the request's {sop_class_uid}")
    return None
