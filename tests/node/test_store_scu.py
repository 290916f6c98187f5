"""The node's C-STORE SCU (dicom_node.delivery.store_scu, dicom_node.delivery.send) against real SCPs.

dcmtk storescp checks what a PACS-like peer receives; a pynetdicom SCP, whose
handler decides the answer, provides the peer behaviours storescp cannot be
asked for (failure and warning statuses, aborts, silence, tiny PDUs,
rejection).
"""
from __future__ import annotations

import struct
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless, RLELossless
from pynetdicom import AE, build_context, evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import CTImageStorage

from dicom_node.config import DicomDestination
from dicom_node.delivery.send import ItemResult, SendError, send_dicom
from dicom_node.delivery.store_scu import StoreAssociation, parse_command, store_request_command
from dicom_node.ops.synthetic import chest_ct_series, write_datasets
from dicom_node.receive.file_meta import file_info
from tests.node.test_forwarding import dataset_bytes
from tests.peers import StoreSCP, free_port


def _send(port: int, files: list[Path], *, ae_title: str = "STORESCP", timeout: float = 10.0) -> list[ItemResult]:
    results: list[ItemResult] = []
    destination = DicomDestination(name="dest", ae_title=ae_title, host="127.0.0.1", port=port, timeout_seconds=timeout)
    send_dicom(destination, [str(f) for f in files], "NODE_SCU", results.append)
    return results


@pytest.fixture
def ct_files(tmp_path: Path) -> list[Path]:
    return write_datasets(chest_ct_series(6, 128, seed=11), tmp_path / "ct", "CT")


class PynetdicomSCP:
    """A pynetdicom storage SCP whose C-STORE handler is the test's; keeps what it received."""

    def __init__(self, handler=None, *, max_pdu: int = 16382, **ae_options) -> None:  # type: ignore[no-untyped-def]
        self.received: dict[str, bytes] = {}
        self.handler = handler
        self.ae = AE(ae_title="PYSCP")
        for key, value in ae_options.items():
            setattr(self.ae, key, value)
        self.ae.maximum_pdu_size = max_pdu
        self.ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.port = free_port()
        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def _on_store(self, event: evt.Event) -> int | Dataset:
        uid = str(event.request.AffectedSOPInstanceUID)
        self.received[uid] = event.request.DataSet.getvalue()
        return self.handler(event, len(self.received)) if self.handler else 0x0000

    def close(self) -> None:
        self.server.shutdown()


def test_command_set_matches_pynetdicoms_encoding() -> None:
    primitive = C_STORE()
    primitive.MessageID = 513
    primitive.AffectedSOPClassUID = CTImageStorage
    primitive.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.123"  # odd length: padded with NUL
    primitive.Priority = 0
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    message.command_set.CommandDataSetType = 0x0000
    body = encode(message.command_set, True, True)
    assert body is not None
    expected = struct.pack("<HHII", 0, 0, 4, len(body[12:])) + body[12:]  # pynetdicom sets the group length when sending
    ours = store_request_command(513, CTImageStorage, "1.2.826.0.1.3680043.8.498.123")
    assert parse_command(ours) == parse_command(expected)
    assert ours == expected


def test_file_info_finds_the_dataset_where_pydicom_does(tmp_path: Path) -> None:
    for name in ("CT_small.dcm", "image_dfl.dcm", "693_J2KI.dcm", "rtplan.dcm"):
        path = get_testdata_file(name)
        info = file_info(path)
        meta = pydicom.filereader.read_file_meta_info(path)
        assert (info.sop_class, info.sop_instance, info.transfer_syntax) == (
            meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID)
        assert Path(path).read_bytes()[info.dataset_offset:] == dataset_bytes(path)
    # a wrong group length does not mislead it: the elements are walked
    raw = bytearray(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    struct.pack_into("<I", raw, 132 + 8, 10)
    wrong = tmp_path / "wrong-length.dcm"
    wrong.write_bytes(raw)
    assert wrong.read_bytes()[file_info(str(wrong)).dataset_offset:] == dataset_bytes(get_testdata_file("CT_small.dcm"))
    bare = tmp_path / "bare.dcm"
    bare.write_bytes(b"\x08\x00\x16\x00" + b"\x00" * 200)
    with pytest.raises(ValueError, match="not a DICOM Part-10 file"):
        file_info(str(bare))


@pytest.mark.peers
def test_storescp_receives_every_dataset_byte_for_byte(storescp, ct_files, tmp_path: Path) -> None:
    odd = tmp_path / "odd.dcm"
    odd.write_bytes(b"not dicom at all")
    results = _send(storescp.port, [*ct_files, odd])
    by_path = {r.path: r for r in results}
    assert not by_path[str(odd)].ok and "not a DICOM Part-10 file" in by_path[str(odd)].error
    assert all(by_path[str(f)].ok and by_path[str(f)].status == 0 for f in ct_files)
    arrived = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): dataset_bytes(p) for p in storescp.files()}
    assert arrived == {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): dataset_bytes(f) for f in ct_files}


@pytest.mark.peers
def test_compressed_files_go_uncompressed_to_a_peer_that_only_takes_uncompressed(tmp_path: Path) -> None:
    rle = chest_ct_series(1, 64, seed=5)[0]
    rle.compress(RLELossless, generate_instance_uid=False)
    rle_path = tmp_path / "rle.dcm"
    rle.save_as(rle_path, enforce_file_format=True)
    sources = [rle_path, Path(get_testdata_file("MR_small_jpeg_ls_lossless.dcm")), Path(get_testdata_file("image_dfl.dcm"))]
    assert file_info(str(sources[1])).transfer_syntax == JPEGLSLossless
    peer = StoreSCP(tmp_path / "plain", accept_all=False).start()
    try:
        results = _send(peer.port, sources)
        assert [r.ok for r in results] == [True, True, True], [r.error for r in results]
        arrived = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, peer.files())}
    finally:
        peer.stop()
    for source in sources:
        original = pydicom.dcmread(source)
        received = arrived[str(original.SOPInstanceUID)]
        assert not received.file_meta.TransferSyntaxUID.is_compressed
        assert np.array_equal(received.pixel_array, original.pixel_array)  # lossless all three


def test_failure_and_warning_statuses_are_reported_per_object(ct_files) -> None:
    def answer(event: evt.Event, n: int) -> int | Dataset:
        if n == 2:
            return 0xA700
        if n == 3:
            status = Dataset()
            status.Status = 0xB007
            status.ErrorComment = "coerced"
            return status
        return 0x0000

    peer = PynetdicomSCP(answer)
    try:
        results = _send(peer.port, ct_files[:4], ae_title="PYSCP")
    finally:
        peer.close()
    assert [(r.ok, r.status) for r in results] == [(True, 0), (False, 0xA700), (True, 0xB007), (True, 0)]
    assert results[1].error == "C-STORE status 0xA700"


def test_small_peer_pdu_fragments_the_dataset(ct_files) -> None:
    peer = PynetdicomSCP(max_pdu=4096)
    try:
        results = _send(peer.port, ct_files, ae_title="PYSCP")
    finally:
        peer.close()
    assert all(r.ok for r in results)
    assert peer.received == {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): dataset_bytes(f) for f in ct_files}


def test_destination_max_pdu_caps_what_is_sent() -> None:
    peer = PynetdicomSCP(max_pdu=16382)
    try:
        contexts = lambda: [build_context(CTImageStorage, ExplicitVRLittleEndian)]  # noqa: E731 - fresh contexts per call
        for cap, fragment in ((0, 16382 - 6), (8192, 8192 - 6), (65536, 16382 - 6)):
            assoc = StoreAssociation.open("127.0.0.1", peer.port, calling_ae="NODE_SCU", called_ae="PYSCP",
                                          contexts=contexts(), timeout=10, max_send_pdu=cap)
            assert assoc.fragment_size == fragment
            assoc.release()
    finally:
        peer.close()


def test_rejection_abort_and_silence_are_batch_errors(ct_files) -> None:
    picky = PynetdicomSCP(require_calling_aet=["SOMEONE_ELSE"])
    try:
        with pytest.raises(SendError, match=r"association rejected by PYSCP@127\.0\.0\.1:\d+ \(rejected permanent, service user\): Calling AE title not recognised"):
            _send(picky.port, ct_files, ae_title="PYSCP")
    finally:
        picky.close()

    def abort_second(event: evt.Event, n: int) -> int:
        if n == 2:  # abort from another thread (abort() stops this one's reactor), answer only once it is done
            aborted = threading.Event()
            threading.Thread(target=lambda: (event.assoc.abort(), aborted.set())).start()
            assert aborted.wait(10), "the association did not abort"
        return 0x0000

    aborting = PynetdicomSCP(abort_second)
    results: list[ItemResult] = []
    try:
        with pytest.raises(SendError, match="ended mid-batch"):
            send_dicom(DicomDestination(name="dest", ae_title="PYSCP", host="127.0.0.1", port=aborting.port, timeout_seconds=10),
                       [str(f) for f in ct_files], "NODE_SCU", results.append)
    finally:
        aborting.close()
    assert [r.ok for r in results] == [True]

    # the scenario, not synchronisation: a peer that answers only after the sender's 1 s timeout
    silent = PynetdicomSCP(lambda event, n: time.sleep(3) or 0x0000)
    try:
        with pytest.raises(SendError, match=r"no C-STORE response from dest within 1 s"):
            _send(silent.port, ct_files[:1], ae_title="PYSCP", timeout=1)
    finally:
        silent.close()

    with pytest.raises(SendError, match="cannot connect"):
        _send(free_port(), ct_files[:1])
