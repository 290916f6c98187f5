"""The File Meta Information group of a received object, encoded directly.

Every stored object needs a Part-10 header (PS3.10 section 7.1) in front of
the dataset bytes it arrived with.  Building it through pydicom
(``event.file_meta`` and ``write_file_meta_info``) creates a dataset,
validates each UID with regular expressions and writes element by element:
about 0.3-1 ms per object, paid inside the C-STORE round trip.  The group
is eight fixed elements in Explicit VR Little Endian, so it is encoded
here with ``struct`` in microseconds.  ``tests/node/test_file_meta.py``
checks the bytes against pydicom's encoding.
"""
from __future__ import annotations

import struct

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

IMPLEMENTATION_CLASS_UID = str(PYNETDICOM_IMPLEMENTATION_UID)
IMPLEMENTATION_VERSION_NAME = PYNETDICOM_IMPLEMENTATION_VERSION


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    """One group-0002 element; the short (16-bit length) form, except OB."""
    if vr == b"OB":
        return struct.pack("<HH2sHI", 0x0002, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def padded_uid(value: str) -> bytes:
    """A UID's bytes, padded with NUL to even length (PS3.5 section 6.2)."""
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _text(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b" " if len(raw) % 2 else raw


def received_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae_title: str) -> bytes:
    """The encoded group 0002, group length first, for the bytes after the 128-byte preamble and ``DICM``.

    Raises ``ValueError`` for values that cannot be written as they are
    (non-ASCII, or longer than the VR allows), so a malformed request is
    refused instead of producing a header that other software rejects.
    """
    for name, value, limit in (
        ("SOP Class UID", sop_class_uid, 64), ("SOP Instance UID", sop_instance_uid, 64),
        ("Transfer Syntax UID", transfer_syntax_uid, 64), ("source AE title", source_ae_title, 16),
    ):
        if not value.isascii() or len(value) > limit:
            raise ValueError(f"{name} {value!r} cannot be written in the file meta information")
    body = b"".join((
        _element(0x0001, b"OB", b"\x00\x01"),
        _element(0x0002, b"UI", padded_uid(sop_class_uid)),
        _element(0x0003, b"UI", padded_uid(sop_instance_uid)),
        _element(0x0010, b"UI", padded_uid(transfer_syntax_uid)),
        _element(0x0012, b"UI", padded_uid(IMPLEMENTATION_CLASS_UID)),
        _element(0x0013, b"SH", _text(IMPLEMENTATION_VERSION_NAME)),
        _element(0x0016, b"AE", _text(source_ae_title)),
    ))
    return struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body)) + body
