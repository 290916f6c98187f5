"""The C-STORE SCP: accepts associations, stores durably, records, then answers.

Runs in its own process (``dicom-node serve`` starts it) so that nothing else
competes for its GIL.  Each association runs in a pynetdicom thread; the
order inside a C-STORE is fixed by the durability promise: decode the
identifiers, write + flush + rename the file (:mod:`dicom_node.receive.spool`),
commit the row, and only then return 0x0000.
"""
from __future__ import annotations

import logging
import os
import threading
from io import BytesIO
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import EventHandlerType
from pynetdicom.pdu_primitives import A_ABORT, A_P_ABORT
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import time via globals()

from dicom_node.clock import utcnow
from dicom_node.config import NodeConfig
from dicom_node.db import Association, Database
from dicom_node.db.states import AssociationEnd
from dicom_node.defaults import HEADER_INFLATE_BYTES, IDENTIFIER_INFLATE_BYTES
from dicom_node.receive import pynetdicom_patches
from dicom_node.receive.deflate import DeflateLimits, inflate_prefix
from dicom_node.receive.file_meta import received_file_meta
from dicom_node.receive.identifiers import Identifiers, read_identifiers
from dicom_node.receive.ingest import InstanceHeader, fast_recorder, record_instance
from dicom_node.receive.server import ConnectionLimits, NodeServer
from dicom_node.receive.spool import Spool, SpoolError, disk_state
from dicom_node.receive.structure import refusal

log = logging.getLogger("dicom_node.receive.scp")

ACCEPTED_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
    JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless,
    JPEG2000Lossless, JPEG2000, RLELossless, HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K,
]

# A-ASSOCIATE-RJ (result, source, reason) triples, PS3.8 9.3.4
REJECT_CALLING_AET = (0x01, 0x01, 0x03)
REJECT_CALLED_AET = (0x01, 0x01, 0x07)
REJECT_NO_REASON = (0x01, 0x01, 0x01)
REJECT_CONGESTION = (0x02, 0x03, 0x01)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES_DISK = 0xA700
STATUS_OUT_OF_RESOURCES_DB = 0xA701
STATUS_CANNOT_UNDERSTAND = 0xC210
STATUS_MISSING_IDENTIFIERS = 0xC211
STATUS_SOP_CLASS_REFUSED = 0x0122


_LAST_HEADER_TAG = 0x0020000E  # Series Instance UID: every attribute the database keeps comes before it


# _identifying_header, _identifiers and Receiver._store run only for EVT_C_STORE.
# pynetdicom types ``Event.request`` as the union of every DIMSE request and
# ``C_STORE.DataSet`` as optional; there the request is always a C-STORE whose
# DataSet holds the received bytes, so casts say so without a per-instance check.


def _identifying_header(event: evt.Event) -> Dataset:
    """Decode only the attributes up to Series Instance UID, not the pixel data.

    Parsing the whole dataset (``event.dataset``) costs more CPU than every
    other step of a C-STORE together for large images; the bytes are written
    as received anyway.  A deflated dataset is inflated only as far as
    :data:`~dicom_node.defaults.HEADER_INFLATE_BYTES` (its header), never whole.
    """
    from pydicom.filereader import read_dataset

    syntax = event.context.transfer_syntax
    stream = cast(BytesIO, cast(C_STORE, event.request).DataSet)
    if syntax.is_deflated:
        with stream.getbuffer() as data:
            stream = BytesIO(inflate_prefix(data, HEADER_INFLATE_BYTES))
    stream.seek(0)
    try:
        return read_dataset(
            stream, syntax.is_implicit_VR, syntax.is_little_endian,
            stop_when=lambda tag, vr, length: tag > _LAST_HEADER_TAG,
        )
    finally:
        stream.seek(0)


def _identifiers(event: evt.Event) -> Identifiers:
    """The identifying attributes: read from the bytes where :mod:`dicom_node.receive.identifiers` can, else by pydicom."""
    syntax = event.context.transfer_syntax
    data = cast(BytesIO, cast(C_STORE, event.request).DataSet)
    if syntax.is_deflated:
        with data.getbuffer() as compressed:
            head = inflate_prefix(compressed, IDENTIFIER_INFLATE_BYTES)
        fast = read_identifiers(head, implicit_vr=False, little_endian=True)
    else:
        fast = read_identifiers(data.getbuffer(), implicit_vr=syntax.is_implicit_VR, little_endian=syntax.is_little_endian)
    if fast is not None:
        return fast
    ds = _identifying_header(event)

    def text(keyword: str) -> str | None:
        return str(ds.get(keyword, "") or "") or None

    return Identifiers(text("StudyInstanceUID"), text("SeriesInstanceUID"), text("SOPInstanceUID"), text("Modality"), text("SeriesDescription"))




def end_reason(event: evt.Event) -> str:
    """The association's ``end_reason`` as far as is known at this event (at most 16 characters)."""
    assoc = event.assoc
    if event.event.name == "EVT_RELEASED" or assoc.is_released:
        return AssociationEnd.RELEASED
    noted = getattr(assoc, "node_end_reason", None)
    if noted:
        return str(noted)
    if event.event.name == "EVT_CONN_CLOSE":
        return AssociationEnd.CONNECTION_LOST
    if assoc.dul.idle_timer_expired():
        return AssociationEnd.IDLE_TIMEOUT
    return AssociationEnd.ABORTED


class Receiver:
    """Owns the pynetdicom AE and the handlers bound to it."""

    def __init__(self, config: NodeConfig, db: Database, spool: Spool) -> None:
        self.config = config
        self.db = db
        self.spool = spool
        self.pid = os.getpid()
        self.ae = self._build_ae()
        self._server: Any = None
        self._lock = threading.Lock()
        self._fast_recorder = fast_recorder(db)
        self._deflate_limits = DeflateLimits(max_bytes=config.node.max_inflated_mb << 20, max_ratio=config.node.max_deflate_ratio)

    def _build_ae(self) -> AE:
        ae = AE(ae_title=self.config.ae_title)
        ae.maximum_pdu_size = self.config.max_pdu
        ae.maximum_associations = self.config.node.max_associations
        ae.network_timeout = self.config.node.network_timeout_seconds
        ae.dimse_timeout = self.config.node.dimse_timeout_seconds
        ae.acse_timeout = self.config.node.artim_seconds  # pynetdicom's ARTIM: its waits for A-ASSOCIATE and for the close
        ae.require_called_aet = False  # checked per listener in _on_requested
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None  # pynetdicom builds each of these from a SOP class UID
            ae.add_supported_context(context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        return ae

    # --- association lifecycle ------------------------------------------------------------------

    def _reject(self, event: evt.Event, triple: tuple[int, int, int], why: str) -> None:
        log.warning("association from %s rejected: %s", event.assoc.requestor.address, why)
        event.assoc.acse.send_reject(*triple)
        # as pynetdicom does for its own rejections: let the DUL send the
        # A-ASSOCIATE-RJ before the server closes the socket
        event.assoc.kill()

    def _on_requested(self, event: evt.Event) -> None:
        primitive = event.assoc.requestor.primitive
        assert primitive is not None  # pynetdicom stores the A-ASSOCIATE-RQ before it triggers EVT_REQUESTED
        calling = primitive.calling_ae_title.strip()
        called = primitive.called_ae_title.strip()
        host = event.assoc.requestor.address
        listener = self.config.listener(called)
        if listener is None:
            return self._reject(event, REJECT_CALLED_AET, f"called AE title {called!r} is not one of ours")
        if not listener.allows_calling(calling):
            return self._reject(event, REJECT_CALLING_AET, f"calling AE title {calling!r} not allowed for {called}")
        if not listener.allows_host(host):
            return self._reject(event, REJECT_NO_REASON, f"host {host} not allowed for {called}")
        state = disk_state(self.spool.root)
        storage = self.config.storage
        if state.used_percent > storage.max_used_percent or state.free_mb < storage.min_free_mb:
            return self._reject(
                event, REJECT_CONGESTION,
                f"spool disk above high-water mark ({state.used_percent:.1f}% used, {state.free_mb:.0f} MB free; "
                f"limits {storage.max_used_percent}% / {storage.min_free_mb} MB)",
            )
        event.assoc.node_listener = listener  # type: ignore[attr-defined]

    def _on_established(self, event: evt.Event) -> None:
        rq = event.assoc.requestor
        listener = getattr(event.assoc, "node_listener", None)
        row = Association(
            calling_ae=rq.ae_title.strip(), called_ae=listener.ae_title if listener else "",
            peer_host=rq.address, peer_port=rq.port, started_at=utcnow(), receiver_pid=self.pid,
            instances_received=0, failures=0,
        )
        with self.db.write() as session:
            session.add(row)
        event.assoc.node_association_id = row.id  # type: ignore[attr-defined]
        event.assoc.node_counts = [0, 0]  # type: ignore[attr-defined]
        # series UID -> (series id, study id) seen on this association, for the fast database path
        event.assoc.node_series = {}  # type: ignore[attr-defined]
        log.info("association %d from %s@%s:%d", row.id, row.calling_ae, rq.address, rq.port)

    def _on_acse_recv(self, event: evt.Event) -> None:
        """Note how an association is ending when the abort reaches the association thread (before EVT_ABORTED)."""
        primitive = getattr(event, "primitive", None)
        if isinstance(primitive, A_P_ABORT):
            event.assoc.node_end_reason = getattr(event.assoc, "node_end_reason", None) or AssociationEnd.CONNECTION_LOST  # type: ignore[attr-defined]
        elif isinstance(primitive, A_ABORT):
            event.assoc.node_end_reason = getattr(event.assoc, "node_end_reason", None) or AssociationEnd.PEER_ABORT  # type: ignore[attr-defined]

    def _on_ended(self, event: evt.Event) -> None:
        """Record the end: at most once finally (EVT_RELEASED / EVT_ABORTED), once before that at EVT_CONN_CLOSE.

        pynetdicom fires EVT_CONN_CLOSE from the DUL as soon as a peer's
        A-ABORT or a lost connection is seen, before the association thread
        fires EVT_ABORTED; so a close is recorded provisionally and the final
        event corrects its reason.
        """
        assoc_id = getattr(event.assoc, "node_association_id", None)
        if assoc_id is None:
            return
        final = event.event.name != "EVT_CONN_CLOSE"
        with self._lock:
            recorded = getattr(event.assoc, "node_closed", None)
            if recorded == "final" or (recorded and not final):
                return
            event.assoc.node_closed = "final" if final else "provisional"  # type: ignore[attr-defined]
        reason = end_reason(event)
        received, failures = event.assoc.node_counts  # type: ignore[attr-defined]
        with self.db.write() as session:
            row = session.get(Association, assoc_id)
            if row is not None:
                row.ended_at = utcnow()
                row.end_reason = reason
                row.instances_received = received
                row.failures = failures
        if final or recorded is None:
            log.info("association %d ended (%s): %d stored, %d failed", assoc_id, reason, received, failures)

    # --- DIMSE ------------------------------------------------------------------------------------

    def _on_echo(self, event: evt.Event) -> int:
        return STATUS_SUCCESS

    def _on_store(self, event: evt.Event) -> int:
        counts = getattr(event.assoc, "node_counts", [0, 0])
        status = self._store(event)
        counts[0 if status == STATUS_SUCCESS else 1] += 1
        return status

    def _store(self, event: evt.Event) -> int:
        request = cast(C_STORE, event.request)
        sop_uid = str(request.AffectedSOPInstanceUID or "")
        listener = getattr(event.assoc, "node_listener", None)
        sop_class = str(request.AffectedSOPClassUID)
        if listener is not None and listener.sop_classes and sop_class not in listener.sop_classes:
            log.warning("C-STORE %s refused: SOP class %s not accepted by %s", sop_uid, sop_class, listener.ae_title)
            return STATUS_SOP_CLASS_REFUSED
        with cast(BytesIO, request.DataSet).getbuffer() as data:  # released at once: pydicom may read the stream next
            refused = refusal(data, transfer_syntax=event.context.transfer_syntax, sop_class_uid=sop_class,
                              deflate_limits=self._deflate_limits)
        if refused is not None:
            log.error("C-STORE %s refused: %s", sop_uid, refused.reason)
            return refused.status
        try:
            ids = _identifiers(event)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types on bad input
            log.error("C-STORE %s refused: dataset cannot be decoded (%s: %s)", sop_uid, type(exc).__name__, exc)
            return STATUS_CANNOT_UNDERSTAND
        if not ids.study_uid or not ids.series_uid or not ids.sop_uid:
            log.error("C-STORE %s refused: missing or empty Study/Series/SOP Instance UID", sop_uid)
            return STATUS_MISSING_IDENTIFIERS
        header = InstanceHeader(
            study_uid=ids.study_uid, series_uid=ids.series_uid, sop_uid=ids.sop_uid, sop_class_uid=sop_class,
            transfer_syntax_uid=str(event.context.transfer_syntax), modality=ids.modality,
            series_description=ids.series_description,
        )
        if header.sop_uid != sop_uid:
            log.error("C-STORE refused: dataset SOP Instance UID %s differs from the request's %s", header.sop_uid, sop_uid)
            return STATUS_CANNOT_UNDERSTAND
        try:
            meta = received_file_meta(
                sop_class, sop_uid, header.transfer_syntax_uid, event.assoc.requestor.ae_title.strip() or "UNKNOWN"
            )
        except ValueError as exc:
            log.error("C-STORE %s refused: %s", sop_uid, exc)
            return STATUS_CANNOT_UNDERSTAND
        path = self.spool.path_for(header.study_uid, header.series_uid, header.sop_uid)
        try:
            stored = self.spool.write(path, meta, cast(BytesIO, request.DataSet).getbuffer())
        except SpoolError as exc:
            log.error("C-STORE %s failed: %s", sop_uid, exc)
            return STATUS_OUT_OF_RESOURCES_DISK
        called = listener.ae_title if listener else self.config.ae_title
        known: dict[str, tuple[int, int]] = getattr(event.assoc, "node_series", {})
        assoc_id = getattr(event.assoc, "node_association_id", None)
        try:
            now = utcnow()
            outcome = None
            if header.series_uid in known and not stored.replaced:
                series_id, study_id = known[header.series_uid]
                outcome = self._fast_recorder.record(
                    header, series_id=series_id, study_id=study_id, path=str(path), size=stored.size,
                    association_id=assoc_id, now=now, digest=stored.digest,
                )
            if outcome is None:  # the fast path changed nothing; the general path decides
                with self.db.write() as session:
                    outcome = record_instance(
                        session, header, path=str(path), size=stored.size, association_id=assoc_id,
                        called_ae=called, calling_ae=event.assoc.requestor.ae_title.strip(),
                        late_policy=self.config.completion_for(called).late_instances, now=now, digest=stored.digest,
                    )
            if not outcome.late:
                known[header.series_uid] = (outcome.series_id, outcome.study_id)
        except Exception as exc:  # noqa: BLE001 - any DB failure is "out of resources" to the sender
            log.error("C-STORE %s failed: database error (%s: %s)", sop_uid, type(exc).__name__, exc)
            return STATUS_OUT_OF_RESOURCES_DB
        if outcome.duplicate:
            log.info("C-STORE %s: duplicate SOP Instance UID, newest copy kept", sop_uid)
        if outcome.late:
            log.info("C-STORE %s: late instance for an already dispatched series", sop_uid)
        return STATUS_SUCCESS

    # --- running ----------------------------------------------------------------------------------

    def handlers(self) -> list[EventHandlerType]:
        return [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_RELEASED, self._on_ended),
            (evt.EVT_ABORTED, self._on_ended),
            (evt.EVT_CONN_CLOSE, self._on_ended),
            (evt.EVT_ACSE_RECV, self._on_acse_recv),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]

    def start(self, block: bool = True) -> Any:
        pynetdicom_patches.install()
        pynetdicom_patches.install_pdu_limits()
        node = self.config.node
        limits = ConnectionLimits(
            artim_seconds=node.artim_seconds, read_timeout_seconds=node.network_timeout_seconds,
            max_pending=node.max_pending_connections, max_pending_per_host=node.max_pending_per_host,
        )
        log.info("listening on %s:%d as %s", self.config.bind, self.config.port, ", ".join(listener.ae_title for listener in self.config.listeners))
        server = self.ae.make_server(
            (self.config.bind, self.config.port), evt_handlers=self.handlers(), server_class=NodeServer, limits=limits,
        )
        self.ae._servers.append(server)  # as AE.start_server does: the server's shutdown() takes it out again
        self._server = server
        if block:
            server.serve_forever()
        else:
            threading.Thread(target=server.serve_forever, name="AcceptorServer", daemon=True).start()
        return server

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
        self._fast_recorder.close()
