"""The DICOM port's limits against hostile or broken peers, as plain functions of bytes and sockets.

Anyone who can reach the port can open connections, so nothing a peer
sends is buffered, and no slot is held, before it is bounded:

* :func:`read_associate_rq` reads a connection's first PDU under a deadline
  (ARTIM) and a size cap, and refuses at once what is not an A-ASSOCIATE-RQ
  (a port scanner's garbage, a TLS hello, an HTTP request);
* :class:`PendingConnections` bounds the connections that have not yet
  sent their A-ASSOCIATE-RQ, in all and per host, separately from the
  association limit that allowed senders need: a newcomer closes the oldest
  pending connection of its host (or of all) instead of being turned away,
  so a flood of idle sockets cannot keep a sender out;
* :func:`pdu_refusal` judges each later PDU header before its body is read.

They know nothing of pynetdicom: the receiver (:mod:`dicom_node.receive.scp`)
and its pynetdicom patch call them, and a lean SCP can call them the same way.
"""
from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections import OrderedDict

from dicom_node.defaults import MAX_CONTROL_PDU_BYTES

log = logging.getLogger("dicom_node.receive.limits")

ASSOCIATE_RQ, P_DATA_TF = 0x01, 0x04
PDU_NAMES = {
    0x01: "A-ASSOCIATE-RQ", 0x02: "A-ASSOCIATE-AC", 0x03: "A-ASSOCIATE-RJ", 0x04: "P-DATA-TF",
    0x05: "A-RELEASE-RQ", 0x06: "A-RELEASE-RP", 0x07: "A-ABORT",
}


class Refused(Exception):
    """A connection closed before it became an association; the message is the log line's reason."""


class Closed(Refused):
    """The connection was closed (by the peer, or by an eviction) before the request was complete."""


class NothingSent(Closed):
    """Closed before a single byte arrived: usually a port check (monitoring, a load balancer), not an attack."""


def pdu_refusal(pdu_type: int, length: int, *, established: bool, max_pdu: int) -> str | None:
    """Why a PDU with this header must not be read, or None.

    Only P-DATA-TF on an established association may be large, up to the
    maximum length we advertised (``max_pdu``; 0 advertises no limit).  Every
    other PDU is a few hundred bytes to a few KiB.
    """
    name = PDU_NAMES.get(pdu_type)
    if name is None:
        return f"unknown PDU type 0x{pdu_type:02X}"
    if pdu_type == P_DATA_TF and established:
        if max_pdu and length > max_pdu:
            return f"P-DATA-TF of {length} bytes is larger than the maximum PDU length we advertised ({max_pdu})"
        return None
    if length > MAX_CONTROL_PDU_BYTES:
        return f"{name} of {length} bytes is larger than {MAX_CONTROL_PDU_BYTES}"
    return None


def _recv_exact(sock: socket.socket, size: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    missing = size
    while missing:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Refused("no complete A-ASSOCIATE-RQ before the ARTIM deadline")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(min(missing, 65536))
        except TimeoutError:
            raise Refused("no complete A-ASSOCIATE-RQ before the ARTIM deadline") from None
        except OSError as exc:
            raise Refused(f"connection failed ({exc})") from None
        if not chunk:
            raise Closed("connection closed before a complete A-ASSOCIATE-RQ")
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def read_associate_rq(sock: socket.socket, *, timeout: float, max_length: int = MAX_CONTROL_PDU_BYTES) -> bytes:
    """The connection's first PDU, whole; :class:`Refused` unless it is an A-ASSOCIATE-RQ of at most ``max_length`` bytes.

    The first byte is judged alone, so garbage is dropped as soon as it
    arrives; the length is judged before any of the body is read.
    """
    deadline = time.monotonic() + timeout
    try:
        first = _recv_exact(sock, 1, deadline)
    except Closed:
        raise NothingSent("closed without sending anything") from None
    if first[0] != ASSOCIATE_RQ:
        raise Refused(f"first byte 0x{first[0]:02X} is not an A-ASSOCIATE-RQ")
    header = first + _recv_exact(sock, 5, deadline)
    (length,) = struct.unpack_from(">I", header, 2)
    if length > max_length:
        raise Refused(f"A-ASSOCIATE-RQ of {length} bytes is larger than {max_length}")
    return header + _recv_exact(sock, length, deadline)


def bound_reads(sock: socket.socket, seconds: float) -> None:
    """Make every later read (and write) of ``sock`` fail after ``seconds`` without progress.

    Kernel timeouts (SO_RCVTIMEO / SO_SNDTIMEO) on a blocking socket, not
    Python's timeout mode: that one polls before every ``recv``, and
    pynetdicom reads in 4 KiB pieces, so it cost about 10 ms of CPU per
    10 MB object.  A read that times out raises ``BlockingIOError`` (an
    ``OSError``), which pynetdicom's reader takes as a lost connection.
    """
    sock.settimeout(None)
    whole = int(seconds)
    timeval = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


class PendingConnections:
    """Connections that have not yet sent their A-ASSOCIATE-RQ: at most ``total``, and ``per_host`` from one address.

    Admitting one beyond a cap closes the oldest pending connection under
    that cap (its reader wakes with "connection closed"), never the newcomer.
    """

    def __init__(self, *, total: int, per_host: int) -> None:
        self.total = total
        self.per_host = per_host
        self._lock = threading.Lock()
        self._pending: OrderedDict[socket.socket, str] = OrderedDict()  # oldest first

    def admit(self, sock: socket.socket, host: str) -> None:
        """Count ``sock`` as pending; close the oldest pending one a cap no longer has room for."""
        with self._lock:
            self._pending[sock] = host
            same_host = [pending for pending, owner in self._pending.items() if owner == host]
            if len(same_host) > self.per_host:
                oldest, why = same_host[0], f"more than {self.per_host} connections from {host}"
            elif len(self._pending) > self.total:
                oldest, why = next(iter(self._pending)), f"more than {self.total} connections"
            else:
                return
            del self._pending[oldest]
        log.warning("closing the oldest connection that has sent no A-ASSOCIATE-RQ: %s waiting for one", why)
        try:
            oldest.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already gone

    def release(self, sock: socket.socket) -> None:
        with self._lock:
            self._pending.pop(sock, None)

    def close_all(self) -> None:
        """Close every pending connection (the receiver is stopping): their readers return at once."""
        with self._lock:
            pending, self._pending = list(self._pending), OrderedDict()
        for sock in pending:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)
