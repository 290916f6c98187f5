"""The header (every attribute before Pixel Data) of a stored Part-10 object, read with bounded memory.

Rules, recovery and dry runs need headers, never pixels.  For most
transfer syntaxes pydicom's ``stop_before_pixels`` already reads only the
header; a deflated dataset, though, is inflated whole before pydicom reads
its first element.  Here a deflated file is inflated only up to
:data:`dicom_node.defaults.HEADER_INFLATE_BYTES`, which holds any real
header; a header that does not fit is an error, not an allocation of what
the stream claims to hold.
"""
from __future__ import annotations

import io
from collections.abc import Sequence

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicom_node.defaults import HEADER_INFLATE_BYTES
from dicom_node.receive.deflate import DeflateError, inflate_prefix

PIXEL_DATA = 0x7FE00010


def read_header(source: str | bytes, specific_tags: Sequence[str] | None = None) -> Dataset:
    """The header of a Part-10 file (a path, or its bytes); raises like :func:`pydicom.dcmread` for a bad file.

    ``specific_tags`` (keywords) limits what is read, as in ``dcmread``.

    Raises:
        DeflateError: a deflated dataset whose header does not fit in
            :data:`~dicom_node.defaults.HEADER_INFLATE_BYTES` once inflated,
            or whose stream is corrupt.
    """
    with io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb") as handle:
        read_preamble(handle, force=False)
        meta = read_dataset(handle, is_implicit_VR=False, is_little_endian=True, stop_when=lambda tag, vr, length: tag.group != 2)
        if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            handle.seek(0)
            return pydicom.dcmread(handle, stop_before_pixels=True, specific_tags=None if specific_tags is None else list(specific_tags))
        compressed = handle.read()
    tags = None if specific_tags is None else [tag for tag in map(tag_for_keyword, specific_tags) if tag is not None]
    return _deflated_header(compressed, FileMetaDataset(meta), tags)


def _deflated_header(compressed: bytes, file_meta: FileMetaDataset, specific_tags: list[int] | None) -> Dataset:
    inflated = inflate_prefix(compressed, HEADER_INFLATE_BYTES)
    reached_pixels = False

    def stop(tag: int, vr: str | None, length: int) -> bool:
        nonlocal reached_pixels
        reached_pixels = tag >= PIXEL_DATA
        return reached_pixels

    dataset = read_dataset(io.BytesIO(inflated), is_implicit_VR=False, is_little_endian=True, stop_when=stop, specific_tags=specific_tags)
    if not reached_pixels and len(inflated) >= HEADER_INFLATE_BYTES:
        raise DeflateError(f"the header of this deflated dataset is larger than {HEADER_INFLATE_BYTES} bytes inflated")
    dataset.file_meta = file_meta
    dataset.set_original_encoding(False, True)
    return dataset
