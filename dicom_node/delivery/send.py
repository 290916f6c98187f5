"""Sending objects to destinations: a C-STORE SCU, or a copy into a folder.

One association per batch (:mod:`dicom_node.delivery.store_scu`).  Each file's
dataset is sent as stored (no decode) when the destination accepted its
transfer syntax; otherwise it is decoded and sent uncompressed if pydicom
can decompress it, and fails with a clear reason if not.  The caller gets
one :class:`ItemResult` per file, as soon as it is known, so it can commit
progress object by object.

A spool file can be replaced while a batch waits or runs (a newer copy of
the same SOP Instance UID: newest wins).  So the meta read before the
association only chooses the contexts to propose; each object is then
opened once more, its meta read again from that open file and its bytes
sent from it, in the context of its own transfer syntax: what goes out is
exactly one stored copy, labelled as itself.  The caller's ``verify``
sees that copy (its meta and its preamble digest) first and may skip it,
for example because it is superseded by a newer copy sent on its own.
"""
from __future__ import annotations

import logging
import mmap
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from io import BytesIO
from typing import cast

import pydicom
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context
from pynetdicom.dsutils import encode
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import time via globals()

from dicom_node.config import Destination, DicomDestination, FolderDestination
from dicom_node.delivery.store_scu import AssociationError, StoreAssociation
from dicom_node.receive.file_meta import FileInfo, file_info, read_file_info
from dicom_node.receive.headers import read_header
from dicom_node.receive.spool import PREAMBLE_LENGTH, Spool, parse_spool_preamble, preamble_digest

log = logging.getLogger("dicom_node.delivery.send")

UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


class SendError(Exception):
    """The whole batch could not be sent (no association, rejected, aborted)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class ItemResult:
    """The outcome for ``paths[index]``: accepted (``ok``), refused or failed (``error``), or ``skipped``.

    Skipped: ``verify`` said this copy must not be sent; ``error`` says why.
    """

    path: str
    ok: bool
    status: int | None
    error: str | None
    duration_ms: float
    index: int = -1
    skipped: bool = False


# verify(index, meta of the copy about to be sent, its preamble digest) -> None to send it, or why not.
# Called with (index, None, None) when the file cannot be opened or read.
Verify = Callable[[int, FileInfo | None, str | None], str | None]


def _contexts(infos: Iterable[FileInfo]) -> list[PresentationContext]:
    """Per SOP class: one context per stored syntax (sent as is), plus an uncompressed fallback."""
    wanted: dict[UID, set[UID]] = {}
    for info in infos:
        wanted.setdefault(info.sop_class, set()).add(info.transfer_syntax)
    contexts = []
    for sop_class, syntaxes in wanted.items():
        for ts in sorted(syntaxes):
            contexts.append(build_context(sop_class, [ts]))
        if syntaxes != {ExplicitVRLittleEndian}:
            # build_context only reads the list (it copies the syntaxes into the context)
            contexts.append(build_context(sop_class, cast("list[str | UID]", UNCOMPRESSED)))
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
        return False, _echo_failure(assoc, destination)
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if status and status.Status == 0:
        return True, f"C-ECHO {destination.ae_title}@{destination.host}:{destination.port} OK"
    return False, f"C-ECHO {destination.ae_title}: no or failed response ({status.Status if status else 'none'})"


def _where(destination: DicomDestination) -> str:
    return f"{destination.ae_title}@{destination.host}:{destination.port}"


def _echo_failure(assoc, destination: DicomDestination) -> str:  # type: ignore[no-untyped-def]
    where = _where(destination)
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


def _uncompressed_payload(info: FileInfo, mapped: mmap.mmap, accepted: dict[tuple[str, str], int]) -> tuple[int, bytes]:
    """Decode (and decompress) a copy the destination cannot take as stored, for an uncompressed context."""
    ts = next(ts for ts in UNCOMPRESSED if (info.sop_class, ts) in accepted)
    ds = pydicom.dcmread(BytesIO(mapped))  # the copy opened, not the path; inflates deflated files
    if info.transfer_syntax.is_compressed:
        ds.decompress(generate_instance_uid=False)  # a lossless re-encoding keeps its identity
    data = encode(ds, ts.is_implicit_VR, ts.is_little_endian)
    if data is None:
        raise ValueError(f"the dataset cannot be encoded in {ts.name}")
    return accepted[(info.sop_class, ts)], data


def _open_copy(path: str) -> tuple[FileInfo, str | None, mmap.mmap]:
    """One stored copy, opened once: its meta, its preamble digest and a map of its bytes.

    Mapped, not read: the bytes go from the page cache to the socket.  The
    map stays valid if the file is replaced or removed meanwhile.
    """
    with open(path, "rb") as handle:
        info = read_file_info(handle, path)
        digest = preamble_digest(os.pread(handle.fileno(), PREAMBLE_LENGTH, 0))
        return info, digest, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)


def send_dicom(
    destination: DicomDestination, paths: list[str], calling_ae: str, on_result: Callable[[ItemResult], None],
    verify: Verify | None = None,
) -> None:
    """Send ``paths`` over one association, calling ``on_result`` after each response (see the module docstring)."""
    def unreadable(index: int, error: str) -> None:
        reason = verify(index, None, None) if verify is not None else None
        if reason is not None:
            on_result(ItemResult(paths[index], False, None, reason, 0.0, index, skipped=True))
        else:
            on_result(ItemResult(paths[index], False, None, f"cannot send {os.path.basename(paths[index])}: {error}", 0.0, index))

    infos: list[tuple[int, FileInfo]] = []
    for index, path in enumerate(paths):
        try:
            infos.append((index, file_info(path)))
        except (OSError, ValueError) as exc:
            unreadable(index, str(exc))
    if not infos:
        return
    where = _where(destination)
    try:
        assoc = StoreAssociation.open(
            destination.host, destination.port, calling_ae=destination.calling_ae_title or calling_ae,
            called_ae=destination.ae_title, contexts=_contexts(info for _, info in infos), timeout=destination.timeout_seconds,
            max_send_pdu=destination.max_pdu,
        )
    except AssociationError as exc:
        raise SendError(str(exc)) from None
    except OSError as exc:
        raise SendError(f"cannot connect to {where}: {exc.strerror or exc}") from None
    with assoc:  # released after the batch, aborted on any error
        for index, _ in infos:
            path = paths[index]
            start = time.perf_counter()
            try:
                info, digest, mapped = _open_copy(path)
            except (OSError, ValueError) as exc:
                unreadable(index, str(exc))
                continue
            reason = verify(index, info, digest) if verify is not None else None
            if reason is not None:
                on_result(ItemResult(path, False, None, reason, 0.0, index, skipped=True))
                continue
            context_id = assoc.accepted.get((info.sop_class, info.transfer_syntax))
            try:
                if context_id is not None:
                    # The map is left to the garbage collector: an exception's traceback may still hold views of it.
                    status = assoc.store(context_id, info.sop_class, info.sop_instance, memoryview(mapped)[info.dataset_offset:])
                elif any((info.sop_class, ts) in assoc.accepted for ts in UNCOMPRESSED):
                    try:
                        context_id, data = _uncompressed_payload(info, mapped, assoc.accepted)
                    except Exception as exc:  # noqa: BLE001 - codec errors come in many types
                        on_result(ItemResult(path, False, None, f"destination does not accept {info.transfer_syntax.name} and decompression failed: {exc}", 0.0, index))
                        continue
                    status = assoc.store(context_id, info.sop_class, info.sop_instance, data)
                else:
                    on_result(ItemResult(path, False, None, f"destination accepted no context for SOP class {info.sop_class.name} in {info.transfer_syntax.name}", 0.0, index))
                    continue
            except TimeoutError:
                raise SendError(f"no C-STORE response from {destination.name} within {destination.timeout_seconds:g} s") from None
            except (OSError, AssociationError) as exc:
                raise SendError(f"association with {where} ended mid-batch: {exc}") from None
            elapsed = (time.perf_counter() - start) * 1000
            error = None if status.ok else f"C-STORE status 0x{status.status:04X}" + (f": {status.comment}" if status.comment else "")
            on_result(ItemResult(path, status.ok, status.status, error, elapsed, index))


def send_folder(destination: FolderDestination, paths: list[str], on_result: Callable[[ItemResult], None]) -> None:
    """Copy files into ``<folder>/<study>/<series>/<sop>.dcm`` durably (same guarantees as the spool)."""
    spool = Spool(destination.path, fsync=True)
    for index, path in enumerate(paths):
        start = time.perf_counter()
        try:
            ds = read_header(path, specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
            target = spool.path_for(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
            tmp = spool.tmp / f"{os.getpid()}-{target.name}.part"
            shutil.copyfile(path, tmp)
            with open(tmp, "rb+") as handle:
                if parse_spool_preamble(handle.read(PREAMBLE_LENGTH)) is not None:
                    handle.seek(0)
                    handle.write(bytes(128))  # the spool's own bookkeeping stays in the spool
                    handle.flush()
                os.fsync(handle.fileno())
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
        except Exception as exc:  # noqa: BLE001
            on_result(ItemResult(path, False, None, f"folder copy failed: {exc}", 0.0, index))
            continue
        on_result(ItemResult(path, True, None, None, (time.perf_counter() - start) * 1000, index))


def send(destination: Destination, paths: list[str], calling_ae: str, on_result: Callable[[ItemResult], None],
         verify: Verify | None = None) -> None:
    """Send ``paths`` to a DICOM or folder destination; ``verify`` applies to DICOM destinations."""
    if isinstance(destination, FolderDestination):
        send_folder(destination, paths, on_result)
    else:
        send_dicom(destination, paths, calling_ae, on_result, verify)
