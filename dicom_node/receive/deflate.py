"""Bounded inflation of Deflated Explicit VR Little Endian datasets: a deflate bomb never reaches memory.

A deflated dataset (PS3.5 A.5) is a raw DEFLATE stream of Explicit VR
Little Endian bytes.  pydicom inflates all of it before reading a single
element, so a 1 MB object that inflates to 1000 MB costs 1000 MB (twice,
where a copy is made) in whichever process reads it.  Everything here
inflates in chunks with ``zlib.decompressobj(...).decompress(data,
max_length)``, so no call ever holds more than the bytes it was asked for:

* :func:`measure` inflates the whole stream and throws the output away,
  refusing as soon as it grows past a size or ratio limit (the receiver's
  check before it acknowledges);
* :func:`inflate_prefix` inflates only the first bytes (the header
  attributes come before the pixel data, so identifying attributes and
  rule headers need a prefix, not the image).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

CHUNK = 1 << 20  # output per decompress call: memory stays at about this much


class DeflateError(ValueError):
    """The stream is not valid DEFLATE, or inflates past a limit (the message says which)."""


@dataclass(frozen=True)
class DeflateLimits:
    """How large an inflated dataset may be: absolute, and relative to its compressed size.

    Real deflated objects (structured reports, waveforms, the odd image)
    compress a few times; a ratio in the hundreds is a bomb, not a dataset.
    """

    max_bytes: int
    max_ratio: float

    def allowed(self, compressed: int) -> int:
        return int(min(self.max_bytes, max(compressed, 1) * self.max_ratio))


def _inflater() -> zlib._Decompress:
    return zlib.decompressobj(-zlib.MAX_WBITS)  # raw DEFLATE, no zlib header (PS3.5 A.5)


def measure(data: bytes | bytearray | memoryview, limits: DeflateLimits) -> int:
    """The inflated size of ``data``; :class:`DeflateError` when it is corrupt or over ``limits``.

    The output is discarded chunk by chunk, so this needs about
    :data:`CHUNK` of memory whatever the stream inflates to.
    """
    allowed = limits.allowed(len(data))
    inflater = _inflater()
    total = 0
    pending: bytes | bytearray | memoryview = data
    try:
        while True:
            total += len(inflater.decompress(pending, CHUNK))
            if total > allowed:
                raise DeflateError(
                    f"deflated dataset inflates past {allowed} bytes ({len(data)} compressed; limits: "
                    f"{limits.max_bytes} bytes, ratio {limits.max_ratio:g})"
                )
            pending = inflater.unconsumed_tail
            if not pending:
                break
        total += len(inflater.flush())
    except zlib.error as exc:
        raise DeflateError(f"deflated dataset is not a valid DEFLATE stream: {exc}") from None
    if total > allowed:
        raise DeflateError(f"deflated dataset inflates past {allowed} bytes")
    return total


def inflate_prefix(data: bytes | bytearray | memoryview, length: int) -> bytes:
    """The first ``length`` inflated bytes of ``data`` (fewer if the stream is shorter); never more in memory."""
    inflater = _inflater()
    try:
        out = inflater.decompress(data, length)
    except zlib.error as exc:
        raise DeflateError(f"deflated dataset is not a valid DEFLATE stream: {exc}") from None
    return out
