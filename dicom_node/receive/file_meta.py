"""The Part-10 File Meta Information group: encoded for each received object, decoded for each one sent.

Encoding (:func:`received_file_meta`):
Every stored object needs a Part-10 header (PS3.10 section 7.1) in front of
the dataset bytes it arrived with.  Building it through pydicom
(``event.file_meta`` and ``write_file_meta_info``) creates a dataset,
validates each UID with regular expressions and writes element by element:
about 0.3-1 ms per object, paid inside the C-STORE round trip.  The group
is eight fixed elements in Explicit VR Little Endian, so it is encoded
here with ``struct`` in microseconds.  ``tests/node/test_file_meta.py``
checks the bytes against pydicom's encoding.

Decoding (:func:`file_info`): the sender needs the three UIDs and the
offset of the dataset of every file it sends, before it negotiates; read
with ``struct`` too, element by element.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from dicom_node.receive.identifiers import element_header

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


@dataclass(frozen=True)
class FileInfo:
    """What sending a Part-10 file needs from its File Meta Information, and where its dataset starts."""

    path: str
    sop_class: UID
    sop_instance: UID
    transfer_syntax: UID
    dataset_offset: int


def file_info(path: str) -> FileInfo:
    """Read the File Meta Information group (PS3.10 section 7.1) with ``struct``.

    The group is always Explicit VR Little Endian; walking it element by
    element (rather than trusting the group length) finds the first byte
    of the dataset even in files whose group length is wrong.  Raises
    ``ValueError`` for a file without the ``DICM`` prefix or without the
    three UIDs a C-STORE needs.
    """
    with open(path, "rb") as handle:
        return read_file_info(handle, path)


def read_file_info(handle: BinaryIO, path: str) -> FileInfo:
    """:func:`file_info` of a file already open (read from its start), so the sender reads and sends one copy."""
    head = handle.read(132 + 4096)
    if len(head) < 132 or head[128:132] != b"DICM":
        raise ValueError("not a DICOM Part-10 file (no 'DICM' after the preamble)")
    values: dict[int, bytes] = {}
    offset = 132
    while True:
        while offset + 12 > len(head) and (more := handle.read(65536)):
            head += more
        if offset + 8 > len(head) or struct.unpack_from("<H", head, offset)[0] != 0x0002:
            break  # the dataset starts here (its encoding may not be explicit VR: look no further)
        try:
            tag, length, value_at, _ = element_header(head, offset, implicit=False)
        except struct.error:
            raise ValueError("file meta information is truncated") from None
        while value_at + length > len(head):
            more = handle.read(65536)
            if not more:
                raise ValueError("file meta information is truncated")
            head += more
        values[tag & 0xFFFF] = head[value_at:value_at + length]
        offset = value_at + length
    try:
        uids = [UID(values[e].rstrip(b"\x00 ").decode("ascii")) for e in (0x0002, 0x0003, 0x0010)]
    except KeyError as missing:
        raise ValueError(f"file meta information lacks (0002,{missing.args[0]:04X})") from None
    return FileInfo(path, uids[0], uids[1], uids[2], offset)
