"""A lean, synchronous C-STORE SCU: one association, stored bytes straight onto the socket.

Why the node does not send through pynetdicom's ``Association``: its SCU
runs every message through two reactor threads, queues, primitives and a
pydicom-encoded command set.  On the project's 2-core VM that moved a 300
slice CT series (158 MB) to dcmtk ``storescp`` at about 60 MB/s, where
dcmtk's own ``storescu`` moves 400 MB/s; forwarding a series took three
times the completion quiet period.  A C-STORE SCU needs little of that
machinery: after the association is negotiated it is a loop of "command
set, dataset fragments, wait for the response", all on one socket.

What is kept from pynetdicom: the association PDUs (A-ASSOCIATE-RQ/AC/RJ,
A-ABORT), which carry nested items and negotiation rules that are not
worth writing again, are encoded and decoded by ``pynetdicom.pdu``.  What
is done here, following PS3.8 section 9.3 and PS3.7 section 9.3.1: the
P-DATA-TF framing, the C-STORE-RQ command set (seven fixed elements in
Implicit VR Little Endian) and reading the C-STORE-RSP status.

Datasets are sent from a memory map of the file, in fragments no larger
than the peer's maximum PDU, each with a single ``sendmsg`` (PDU header
and data together): no decode, no copy into Python objects.
"""
from __future__ import annotations

import mmap
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

from pydicom.uid import UID
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext

from dicom_node.defaults import SCU_RECEIVE_MAX_PDU, SCU_UNLIMITED_FRAGMENT
from dicom_node.receive.file_meta import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, padded_uid

APPLICATION_CONTEXT = UID("1.2.840.10008.3.1.1.1")

# PDU types (PS3.8 section 9.3.1)
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA, RELEASE_RQ, RELEASE_RP, ABORT = 1, 2, 3, 4, 5, 6, 7

# Message control header of a PDV (PS3.8 annex E.2): bit 0 command, bit 1 last fragment.
_COMMAND, _LAST = 0x01, 0x02


class AssociationError(Exception):
    """The association could not be set up, or ended before a response arrived."""


@dataclass(frozen=True)
class StoreStatus:
    """A C-STORE-RSP: the status code and, when the peer sent one, its error comment."""

    status: int
    comment: str | None = None

    @property
    def ok(self) -> bool:
        """Success, or a warning (0xB000-0xBFFF: stored, with coercion or elements discarded)."""
        return self.status == 0x0000 or 0xB000 <= self.status <= 0xBFFF


def _element(element: int, value: bytes) -> bytes:
    """One group-0000 element in Implicit VR Little Endian: tag, 32-bit length, value."""
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def store_request_command(message_id: int, sop_class_uid: str, sop_instance_uid: str) -> bytes:
    """The encoded C-STORE-RQ command set (PS3.7 table 9.3-1), group length first."""
    body = b"".join((
        _element(0x0002, padded_uid(sop_class_uid)),               # Affected SOP Class UID
        _element(0x0100, struct.pack("<H", 0x0001)),             # Command Field: C-STORE-RQ
        _element(0x0110, struct.pack("<H", message_id)),         # Message ID
        _element(0x0700, struct.pack("<H", 0x0000)),             # Priority: medium
        _element(0x0800, struct.pack("<H", 0x0000)),             # Command Data Set Type: a dataset follows
        _element(0x1000, padded_uid(sop_instance_uid)),           # Affected SOP Instance UID
    ))
    return _element(0x0000, struct.pack("<I", len(body))) + body


def parse_command(data: bytes) -> dict[int, bytes]:
    """The elements of an Implicit VR Little Endian command set, by element number (group 0000)."""
    elements: dict[int, bytes] = {}
    offset = 0
    while offset + 8 <= len(data):
        group, element, length = struct.unpack_from("<HHI", data, offset)
        offset += 8
        if group != 0x0000 or offset + length > len(data):
            raise AssociationError(f"malformed command set from the peer at byte {offset - 8}")
        elements[element] = data[offset:offset + length]
        offset += length
    return elements


def _store_status(command: dict[int, bytes], message_id: int) -> StoreStatus:
    field = command.get(0x0100)
    if field is None or struct.unpack("<H", field[:2])[0] != 0x8001:
        raise AssociationError("the peer answered a C-STORE-RQ with something other than a C-STORE-RSP")
    answered = command.get(0x0120)
    if answered is not None and struct.unpack("<H", answered[:2])[0] != message_id:
        raise AssociationError(f"C-STORE-RSP for message {struct.unpack('<H', answered[:2])[0]}, expected {message_id}")
    status = command.get(0x0900)
    if status is None:
        raise AssociationError("C-STORE-RSP without a status")
    comment = command.get(0x0902)
    text = comment.rstrip(b"\x00 ").decode("ascii", "replace") if comment else None
    return StoreStatus(struct.unpack("<H", status[:2])[0], text or None)


def _abort_reason(body: bytes) -> str:
    pdu = A_ABORT_RQ()
    pdu.decode(bytes([ABORT, 0]) + struct.pack(">I", len(body)) + body)
    sources: dict[int | None, str] = {0: "service user", 2: "service provider"}
    source = sources.get(pdu.source, f"source {pdu.source}")
    return f"aborted by the peer's {source} (reason {pdu.reason_diagnostic})"


class StoreAssociation:
    """An established association for C-STORE, used from one thread.

    Open it with :meth:`open`; :attr:`accepted` maps (SOP class, transfer
    syntax) to the presentation context ID the peer accepted for it.
    """

    def __init__(self, sock: socket.socket, accepted: dict[tuple[str, str], int], peer_max_pdu: int, max_send_pdu: int = 0) -> None:
        self._sock = sock
        self.accepted = accepted
        limits = [size for size in (peer_max_pdu, max_send_pdu) if size]
        self.fragment_size = (min(limits) - 6) if limits else SCU_UNLIMITED_FRAGMENT  # 6: PDV item header
        if self.fragment_size < 1:
            raise AssociationError(f"a maximum PDU length of {min(limits)} is too small to carry data")
        self._message_id = 0
        self._open = True

    # -- set-up ------------------------------------------------------------
    @classmethod
    def open(
        cls, host: str, port: int, *, calling_ae: str, called_ae: str,
        contexts: Iterable[PresentationContext], timeout: float, max_send_pdu: int = 0,
    ) -> StoreAssociation:
        """Connect and negotiate; raises :class:`AssociationError` (rejection, abort) or ``OSError`` (no connection).

        ``max_send_pdu`` caps the PDUs sent below what the peer accepts (0: no cap).
        """
        requested = list(contexts)
        if not 0 < len(requested) <= 128:
            raise AssociationError(f"{len(requested)} presentation contexts requested; DICOM allows 1 to 128")
        for number, context in enumerate(requested):
            context.context_id = 2 * number + 1
        where = f"{called_ae}@{host}:{port}"
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(_associate_request(calling_ae, called_ae, requested))
            kind, body = _read_pdu(sock)
            if kind == ASSOCIATE_RJ:
                rj = A_ASSOCIATE_RJ()
                rj.decode(bytes([kind, 0]) + struct.pack(">I", len(body)) + body)
                reply = rj.to_primitive()
                raise AssociationError(
                    f"association rejected by {where} ({reply.result_str.lower()}, {reply.source_str.lower()}): "
                    f"{reply.reason_str} (result {rj.result}, source {rj.source}, reason {rj.reason_diagnostic})"
                )
            if kind == ABORT:
                raise AssociationError(f"association with {where} {_abort_reason(body)}")
            if kind != ASSOCIATE_AC:
                raise AssociationError(f"unexpected PDU type 0x{kind:02X} from {where} in answer to A-ASSOCIATE-RQ")
            ac = A_ASSOCIATE_AC()
            ac.decode(bytes([kind, 0]) + struct.pack(">I", len(body)) + body)
            reply = ac.to_primitive()
        except BaseException:
            sock.close()
            raise
        by_id = {context.context_id: context for context in requested}
        accepted: dict[tuple[str, str], int] = {}
        for result in reply.presentation_context_definition_results_list:
            asked = by_id.get(result.context_id)
            if result.result == 0x00 and asked is not None and result.transfer_syntax:
                # an accepted context's ID was decoded from the A-ASSOCIATE-AC: never None
                accepted.setdefault((str(asked.abstract_syntax), str(result.transfer_syntax[0])), cast(int, result.context_id))
        return cls(sock, accepted, reply.maximum_length_received or 0, max_send_pdu)

    # -- C-STORE -----------------------------------------------------------
    def store(self, context_id: int, sop_class_uid: str, sop_instance_uid: str, dataset: bytes | memoryview | mmap.mmap) -> StoreStatus:
        """Send one dataset (its encoded bytes, in the context's transfer syntax) and wait for the status."""
        if not self._open:
            raise AssociationError("the association has ended")
        self._message_id = self._message_id % 0xFFFF + 1
        command = store_request_command(self._message_id, sop_class_uid, sop_instance_uid)
        try:
            self._send_pdv(context_id, _COMMAND | _LAST, command)
            view = memoryview(dataset)
            total = len(view)
            if total == 0:
                self._send_pdv(context_id, _LAST, b"")
            for start in range(0, total, self.fragment_size):
                end = min(total, start + self.fragment_size)
                self._send_pdv(context_id, _LAST if end == total else 0, view[start:end])
            return _store_status(self._read_response(), self._message_id)
        except (OSError, AssociationError):
            self._close_socket()
            raise

    def _send_pdv(self, context_id: int, control: int, data: bytes | memoryview) -> None:
        """One P-DATA-TF PDU holding one PDV item (PS3.8 section 9.3.5), header and data in one ``sendmsg``."""
        header = struct.pack(">BBIIBB", P_DATA, 0, len(data) + 6, len(data) + 2, context_id, control)
        parts = [memoryview(header), memoryview(data)]
        while parts:
            sent = self._sock.sendmsg(parts)
            while parts and sent >= len(parts[0]):  # a large fragment can go out in several calls
                sent -= len(parts[0])
                parts.pop(0)
            if parts:
                parts[0] = parts[0][sent:]

    def _read_response(self) -> dict[int, bytes]:
        """Collect command fragments until the last one; the C-STORE-RSP carries no dataset."""
        command = bytearray()
        while True:
            kind, body = _read_pdu(self._sock)
            if kind == ABORT:
                self._open = False
                raise AssociationError(f"association {_abort_reason(body)} before the C-STORE response")
            if kind == RELEASE_RQ:
                self._sock.sendall(struct.pack(">BBII", RELEASE_RP, 0, 4, 0))
                self._open = False
                raise AssociationError("the peer released the association before answering")
            if kind != P_DATA:
                raise AssociationError(f"unexpected PDU type 0x{kind:02X} while waiting for a C-STORE response")
            offset = 0
            while offset + 6 <= len(body):
                length, _context, control = struct.unpack_from(">IBB", body, offset)
                fragment = body[offset + 6: offset + 4 + length]
                offset += 4 + length
                if not control & _COMMAND:
                    raise AssociationError("the peer sent a dataset with its C-STORE response")
                command += fragment
                if control & _LAST:
                    return parse_command(bytes(command))

    # -- ending ------------------------------------------------------------
    def release(self) -> None:
        """A-RELEASE-RQ, then wait (within the socket timeout) for A-RELEASE-RP; abort if it does not come."""
        if not self._open:
            return
        try:
            self._sock.sendall(struct.pack(">BBII", RELEASE_RQ, 0, 4, 0))
            while True:
                kind, _ = _read_pdu(self._sock)
                if kind in (RELEASE_RP, ABORT):
                    break
                if kind == RELEASE_RQ:  # release collision (PS3.8 section 7.2.2): the requestor answers
                    self._sock.sendall(struct.pack(">BBII", RELEASE_RP, 0, 4, 0))
        except (OSError, AssociationError):
            self.abort()
        finally:
            self._close_socket()

    def abort(self) -> None:
        """A-ABORT (service user, no reason) and close; never raises."""
        if self._open:
            try:
                self._sock.sendall(struct.pack(">BBIBBBB", ABORT, 0, 4, 0, 0, 0, 0))
            except OSError:
                pass
        self._close_socket()

    def _close_socket(self) -> None:
        self._open = False
        self._sock.close()

    def __enter__(self) -> StoreAssociation:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.release()
        else:
            self.abort()


def _associate_request(calling_ae: str, called_ae: str, contexts: list[PresentationContext]) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT
    primitive.calling_ae_title = calling_ae
    primitive.called_ae_title = called_ae
    primitive.presentation_context_definition_list = contexts
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = SCU_RECEIVE_MAX_PDU
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = UID(IMPLEMENTATION_CLASS_UID)
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    primitive.user_information = [max_length, implementation, version]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            raise AssociationError("the peer closed the connection")
        got += n
    return bytes(buffer)


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """One PDU: its type and its body (what follows the 6-byte header)."""
    kind, _, length = struct.unpack(">BBI", _recv_exact(sock, 6))
    if length > SCU_RECEIVE_MAX_PDU + 6 and kind == P_DATA:
        raise AssociationError(f"the peer sent a {length}-byte PDU, over the {SCU_RECEIVE_MAX_PDU} bytes the node accepts")
    return kind, _recv_exact(sock, length)
