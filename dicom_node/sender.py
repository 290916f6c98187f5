"""Sending objects to destinations: a C-STORE SCU, or a copy into a folder.

One association per batch.  Each file is sent as stored (no decode) when
the destination accepted its transfer syntax; otherwise it is decoded and
sent uncompressed if pydicom can decompress it, and fails with a clear
reason if not.  The caller gets one :class:`ItemResult` per file, as soon as
it is known, so it can commit progress object by object.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, UID
from pynetdicom import AE, _config, build_context
from pynetdicom.sop_class import Verification

from dicom_node.config import Destination, DicomDestination, FolderDestination
from dicom_node.spool import Spool

log = logging.getLogger("dicom_node.sender")

# Send files by path without decoding them (pynetdicom reads them in chunks).
_config.STORE_SEND_CHUNKED_DATASET = True

UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


class SendError(Exception):
    """The whole batch could not be sent (no association, rejected, aborted)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class ItemResult:
    path: str
    ok: bool
    status: int | None
    error: str | None
    duration_ms: float


@dataclass(frozen=True)
class FileInfo:
    path: str
    sop_class: UID
    sop_instance: UID
    transfer_syntax: UID


def file_info(path: str) -> FileInfo:
    meta = pydicom.filereader.read_file_meta_info(path)
    return FileInfo(path, UID(meta.MediaStorageSOPClassUID), UID(meta.MediaStorageSOPInstanceUID), UID(meta.TransferSyntaxUID))


def _contexts(infos: Iterable[FileInfo]) -> list:
    """Per SOP class: one context per stored syntax (sent as is), plus an uncompressed fallback."""
    wanted: dict[UID, set[UID]] = {}
    for info in infos:
        wanted.setdefault(info.sop_class, set()).add(info.transfer_syntax)
    contexts = []
    for sop_class, syntaxes in wanted.items():
        for ts in sorted(syntaxes):
            contexts.append(build_context(sop_class, [ts]))
        if syntaxes != {ExplicitVRLittleEndian}:
            contexts.append(build_context(sop_class, UNCOMPRESSED))
    if len(contexts) > 128:
        raise SendError(f"batch needs {len(contexts)} presentation contexts; the maximum is 128", permanent=True)
    return contexts


def echo(destination: DicomDestination, calling_ae: str) -> tuple[bool, str]:
    """C-ECHO ``destination``; returns (ok, human-readable outcome)."""
    ae = AE(ae_title=destination.calling_ae_title or calling_ae)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = destination.timeout_seconds
    ae.add_requested_context(Verification)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        return False, _association_failure(assoc, destination)
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if status and status.Status == 0:
        return True, f"C-ECHO {destination.ae_title}@{destination.host}:{destination.port} OK"
    return False, f"C-ECHO {destination.ae_title}: no or failed response ({status.Status if status else 'none'})"


def _association_failure(assoc, destination: DicomDestination) -> str:  # type: ignore[no-untyped-def]
    where = f"{destination.ae_title}@{destination.host}:{destination.port}"
    if assoc.is_rejected:
        rj = assoc.acceptor.primitive
        detail = f" (result {rj.result}, source {rj.result_source}, reason {rj.diagnostic})" if rj is not None else ""
        return f"association rejected by {where}{detail}"
    try:  # pynetdicom reports a refused connection as an abort: tell the two apart
        socket.create_connection((destination.host, destination.port), timeout=3).close()
    except OSError as exc:
        return f"cannot connect to {where}: {exc.strerror or exc}"
    if assoc.is_aborted:
        return f"association aborted by {where}"
    return f"no association with {where}"


def _pause_reactor(assoc) -> None:  # type: ignore[no-untyped-def]
    """Make sure pynetdicom's reactor thread is really parked before a C-STORE.

    pynetdicom 3.0 pauses its reactor inside ``send_c_store`` by clearing an
    event and waiting for ``_is_paused``; the reactor sets that flag just
    before it waits, so the sender can see it while the reactor is passing
    through, and the reactor then takes the C-STORE-RSP off the queue and
    drops it ("unexpected C-STORE service message"): the sender waits out its
    DIMSE timeout (about one store in a thousand).  Parking it here first,
    and confirming it stays parked for longer than the flag is ever set in
    passing, closes that window; ``send_c_store`` then finds it parked.
    """
    checkpoint = assoc._reactor_checkpoint
    checkpoint.clear()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if assoc._is_paused:
            time.sleep(0.0003)  # the flag is set in passing for microseconds only
            if assoc._is_paused:
                return
        time.sleep(0.0001)


def send_dicom(
    destination: DicomDestination, paths: list[str], calling_ae: str, on_result: Callable[[ItemResult], None]
) -> None:
    """Send ``paths`` over one association, calling ``on_result`` after each response."""
    infos = [file_info(p) for p in paths]
    ae = AE(ae_title=destination.calling_ae_title or calling_ae)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = destination.timeout_seconds
    ae.maximum_pdu_size = destination.max_pdu
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title, contexts=_contexts(infos))
    if not assoc.is_established:
        raise SendError(_association_failure(assoc, destination))
    try:
        accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
        for info in infos:
            if not assoc.is_established:
                raise SendError(f"association to {destination.name} ended mid-batch")
            start = time.perf_counter()
            payload: object
            if (info.sop_class, info.transfer_syntax) in accepted:
                payload = info.path
            elif any((info.sop_class, ts) in accepted for ts in UNCOMPRESSED):
                try:
                    ds = pydicom.dcmread(info.path)  # inflates deflated files
                    if info.transfer_syntax.is_compressed:
                        ds.decompress(generate_instance_uid=False)  # a lossless re-encoding keeps its identity
                    payload = ds  # pynetdicom re-encodes in the accepted uncompressed syntax
                except Exception as exc:  # noqa: BLE001 - codec errors come in many types
                    on_result(ItemResult(info.path, False, None, f"destination does not accept {info.transfer_syntax.name} and decompression failed: {exc}", 0.0))
                    continue
            else:
                on_result(ItemResult(info.path, False, None, f"destination accepted no context for SOP class {info.sop_class.name}", 0.0))
                continue
            _pause_reactor(assoc)
            status = assoc.send_c_store(payload)
            elapsed = (time.perf_counter() - start) * 1000
            if status is None or "Status" not in status:
                raise SendError(f"no C-STORE response from {destination.name} (timeout or abort)")
            code = int(status.Status)
            ok = code == 0x0000 or 0xB000 <= code <= 0xBFFF
            on_result(ItemResult(info.path, ok, code, None if ok else f"C-STORE status 0x{code:04X}", elapsed))
    finally:
        if assoc.is_established:
            assoc.release()


def send_folder(destination: FolderDestination, paths: list[str], on_result: Callable[[ItemResult], None]) -> None:
    """Copy files into ``<folder>/<study>/<series>/<sop>.dcm`` durably (same guarantees as the spool)."""
    spool = Spool(destination.path, fsync=True)
    for path in paths:
        start = time.perf_counter()
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
            target = spool.path_for(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
            tmp = spool.tmp / f"{os.getpid()}-{target.name}.part"
            shutil.copyfile(path, tmp)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
        except Exception as exc:  # noqa: BLE001
            on_result(ItemResult(path, False, None, f"folder copy failed: {exc}", 0.0))
            continue
        on_result(ItemResult(path, True, None, None, (time.perf_counter() - start) * 1000))


def send(destination: Destination, paths: list[str], calling_ae: str, on_result: Callable[[ItemResult], None]) -> None:
    if isinstance(destination, FolderDestination):
        send_folder(destination, paths, on_result)
    else:
        send_dicom(destination, paths, calling_ae, on_result)
