"""Deflated datasets are inflated with bounded memory: a deflate bomb never costs what it claims to hold (issue 15.3).

The bombs are real Part-10 files in Deflated Explicit VR Little Endian: a
small header, then Pixel Data (or a private block) of zeros that deflate
about 1000:1.  Memory is measured as the peak RSS of a child process that
reads one file, so each figure is about that read alone.
"""
from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from dicom_node.defaults import HEADER_INFLATE_BYTES
from dicom_node.receive.deflate import CHUNK, DeflateError, DeflateLimits, inflate_prefix, measure
from dicom_node.receive.headers import read_header
from tests.peers import node_db_rows

MB = 1 << 20


def _header() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.SeriesDescription = "deflate bomb (synthetic)"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 8, 8, 7
    ds.SamplesPerPixel, ds.PixelRepresentation, ds.PhotometricInterpretation = 1, 0, "MONOCHROME2"
    return ds


def write_bomb(path: Path, zeros: int, *, before_pixels: int = 0) -> Dataset:
    """A deflated Part-10 file whose dataset inflates to about ``zeros + before_pixels`` bytes.

    ``before_pixels`` puts a private OB block of that many zeros before Pixel Data, so the header itself is large.
    """
    ds = _header()
    plain = DicomBytesIO()
    plain.is_little_endian, plain.is_implicit_VR = True, False  # a deflated dataset is Explicit VR LE before deflation
    write_dataset(plain, ds)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunks = [deflater.compress(plain.getvalue())]

    def zero_element(tag: int, length: int) -> None:
        group, element = tag >> 16, tag & 0xFFFF
        chunks.append(deflater.compress(struct.pack("<HH2sHI", group, element, b"OB", 0, length)))
        block = bytes(min(length, 8 * MB))
        left = length
        while left:
            n = min(left, len(block))
            chunks.append(deflater.compress(block[:n]))
            left -= n

    if before_pixels:
        chunks.append(deflater.compress(struct.pack("<HH2sH4s", 0x0009, 0x0010, b"LO", 4, b"BOMB")))  # private creator
        zero_element(0x00091000, before_pixels)
    zero_element(0x7FE00010, zeros)
    chunks.append(deflater.flush())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta.ImplementationClassUID = generate_uid()
    body = DicomBytesIO()
    pydicom.filewriter.write_file_meta_info(body, meta)
    path.write_bytes(b"\x00" * 128 + b"DICM" + body.getvalue() + b"".join(chunks))
    return ds


def peak_rss_mib(code: str) -> float:
    """Run ``code`` in a fresh interpreter and return its peak RSS (MiB); the code's own assertions check its result."""
    # VmHWM, not ru_maxrss: Linux carries the parent's maximum into ru_maxrss across fork and exec, so a
    # child of a large pytest process would report the parent's size.
    script = code + (
        "\nprint('PEAK', next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM:')) / 1024)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return float(result.stdout.rsplit("PEAK", 1)[1])


def test_measure_gives_the_inflated_size() -> None:
    data = bytes(range(256)) * 5000
    deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = deflater.compress(data) + deflater.flush()
    assert measure(stream, DeflateLimits(max_bytes=10 * MB, max_ratio=1000)) == len(data)


def test_measure_refuses_a_stream_past_the_ratio_or_size() -> None:
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = deflater.compress(bytes(50 * MB)) + deflater.flush()  # about 50 KB
    with pytest.raises(DeflateError, match="inflates past"):
        measure(stream, DeflateLimits(max_bytes=1 << 40, max_ratio=100))
    with pytest.raises(DeflateError, match="inflates past"):
        measure(stream, DeflateLimits(max_bytes=10 * MB, max_ratio=1e9))
    assert measure(stream, DeflateLimits(max_bytes=64 * MB, max_ratio=1e9)) == 50 * MB


def test_corrupt_stream_is_an_error_not_a_crash() -> None:
    with pytest.raises(DeflateError, match="not a valid DEFLATE stream"):
        measure(b"\xff" * 100, DeflateLimits(max_bytes=MB, max_ratio=100))
    with pytest.raises(DeflateError, match="not a valid DEFLATE stream"):
        inflate_prefix(b"\xff" * 100, 10)


def test_inflate_prefix_stops_at_the_length() -> None:
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = deflater.compress(bytes(20 * MB)) + deflater.flush()
    assert len(inflate_prefix(stream, 1000)) == 1000
    assert len(inflate_prefix(stream, 40 * MB)) == 20 * MB


@pytest.mark.parametrize("name", ["image_dfl.dcm", "CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm", "MR_small_bigendian.dcm"])
def test_read_header_agrees_with_pydicom_on_real_files(name: str) -> None:
    path = get_testdata_file(name)
    ours = read_header(path)
    assert ours == pydicom.dcmread(path, stop_before_pixels=True)
    assert ours.file_meta.TransferSyntaxUID == pydicom.dcmread(path).file_meta.TransferSyntaxUID
    from_bytes = read_header(Path(path).read_bytes(), specific_tags=["SOPInstanceUID"])
    assert from_bytes.SOPInstanceUID == ours.SOPInstanceUID


def test_a_bomb_header_is_read_without_inflating_the_pixels(tmp_path: Path) -> None:
    path = tmp_path / "bomb.dcm"
    ds = write_bomb(path, 600 * MB)
    assert path.stat().st_size < 2 * MB
    header = read_header(str(path))
    assert header.SOPInstanceUID == ds.SOPInstanceUID and "PixelData" not in header
    # The node's header reader (rules, read-ahead) against what pydicom alone would cost.
    ours = peak_rss_mib(f"from dicom_node.routing.header_readahead import load_header; h = load_header({str(path)!r}); assert not isinstance(h, str), h")
    plain = peak_rss_mib(f"import pydicom; pydicom.dcmread({str(path)!r}, stop_before_pixels=True)")
    assert plain > 600, f"pydicom alone peaked at {plain:.0f} MiB: the bomb does not work"
    assert ours < 250, f"reading the header peaked at {ours:.0f} MiB (pydicom alone: {plain:.0f} MiB)"


def test_a_header_too_large_to_inflate_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "fat-header.dcm"
    write_bomb(path, 10, before_pixels=HEADER_INFLATE_BYTES + CHUNK)
    with pytest.raises(DeflateError, match="larger than"):
        read_header(str(path))
    from dicom_node.routing.header_readahead import load_header

    assert "larger than" in str(load_header(str(path)))


def test_an_explicit_little_endian_copy_of_the_header_reads_the_same(tmp_path: Path) -> None:
    """The deflated path parses the inflated bytes as Explicit VR Little Endian, as PS3.5 A.5 defines them."""
    source = pydicom.dcmread(get_testdata_file("image_dfl.dcm"))
    source.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    plain = tmp_path / "plain.dcm"
    source.save_as(plain, enforce_file_format=True)
    deflated = read_header(get_testdata_file("image_dfl.dcm"))
    assert read_header(str(plain)) == deflated


# --- the receiver ---------------------------------------------------------------------------------

def _deflated_body(path: Path) -> tuple[str, str, bytes]:
    """(SOP class, SOP instance, the deflated dataset bytes as a C-STORE carries them) of a file from write_bomb."""
    from dicom_node.receive.file_meta import file_info

    info = file_info(str(path))
    return str(info.sop_class), str(info.sop_instance), path.read_bytes()[info.dataset_offset:]


def _send_deflated(port: int, sop_class: str, sop_uid: str, body: bytes) -> int:
    from pynetdicom import build_context

    from dicom_node.delivery.store_scu import StoreAssociation

    syntax = DeflatedExplicitVRLittleEndian
    with StoreAssociation.open(
        "127.0.0.1", port, calling_ae="DICOM_NODE_SCU", called_ae="DICOM_NODE",
        contexts=[build_context(sop_class, syntax)], timeout=60,
    ) as assoc:
        return assoc.store(assoc.accepted[(sop_class, syntax)], sop_class, sop_uid, body).status


def _receiver_peak_mib(node) -> float:  # type: ignore[no-untyped-def]
    """Peak RSS of the node's receiver child (the process holding the DICOM port)."""
    peaks = []
    for status_file in Path("/proc").glob("[0-9]*/status"):
        try:
            status = dict(line.split(":", 1) for line in status_file.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if status.get("PPid", "").strip() == str(node.proc.pid) and "VmHWM" in status:
            peaks.append(int(status["VmHWM"].split()[0]) / 1024)
    assert peaks, "the node has no child processes"
    return max(peaks)


@pytest.mark.peers
def test_the_receiver_refuses_a_deflate_bomb_without_inflating_it(make_node, tmp_path: Path) -> None:
    node = make_node()
    before = _receiver_peak_mib(node)
    bomb = tmp_path / "bomb.dcm"
    write_bomb(bomb, 1000 * MB)  # about 1 MB on the wire
    sop_class, sop_uid, body = _deflated_body(bomb)
    assert len(body) < 2 * MB
    assert _send_deflated(node.port, sop_class, sop_uid, body) == 0xA700
    assert _receiver_peak_mib(node) - before < 150, "the receiver inflated the bomb"
    assert node_db_rows(node, "select count(*) from instances") == [(0,)]
    assert "inflates past" in node.log_text()


@pytest.mark.peers
def test_the_receiver_stores_a_real_deflated_object_and_reads_its_identifiers(make_node, tmp_path: Path) -> None:
    node = make_node()
    source = get_testdata_file("image_dfl.dcm")
    sop_class, sop_uid, body = _deflated_body(Path(source))
    assert _send_deflated(node.port, sop_class, sop_uid, body) == 0x0000
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    assert node_db_rows(node, "select sop_instance_uid, transfer_syntax_uid from instances") == [
        (sop_uid, DeflatedExplicitVRLittleEndian)
    ]
    assert node_db_rows(node, "select series_instance_uid from series") == [(str(ds.SeriesInstanceUID),)]


@pytest.mark.peers
def test_the_receiver_refuses_a_corrupt_deflate_stream(make_node) -> None:
    node = make_node()
    sop_class, sop_uid, body = _deflated_body(Path(get_testdata_file("image_dfl.dcm")))
    broken = body[:200] + b"\xff" * 64 + body[264:]
    assert _send_deflated(node.port, sop_class, sop_uid, broken) == 0xC210
    assert node_db_rows(node, "select count(*) from instances") == [(0,)]
