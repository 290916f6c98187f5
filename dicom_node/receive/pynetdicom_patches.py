"""Let pynetdicom's polling reactors wake up when there is work, instead of after a fixed sleep.

pynetdicom runs two polling loops per association.  The association thread
sleeps 1 ms before each look at its DIMSE message queue, and the DUL thread
(socket and state machine) sleeps 1 ms whenever a pass found nothing to do.
A C-STORE round trip crosses both loops up to three times: the request
arrives on the socket, the complete message reaches the association thread,
and the response goes back through the DUL.  Each crossing can wait up to a
millisecond.  On this project's VM that was 1-3 ms of a 6-7 ms round trip,
which a dcmtk peer (one object per round trip) turns straight into
throughput.  The same loops slow the node's own C-STORE SCU when it
forwards.

:func:`install` swaps the ``time`` module that ``pynetdicom.association``
and ``pynetdicom.dul`` see for a proxy whose ``sleep`` returns early once
there is something for that loop to do:

* an association thread wakes when a DIMSE message is queued for it;
* a DUL thread wakes when the socket becomes readable or a PDU is queued
  to send.  Waiting on both at once needs a file descriptor for the queue,
  so while the association is busy the DUL waits on the queue in 0.2 ms
  slices and checks the socket between them.  After half a second without
  traffic it goes back to waiting on the socket alone, for the full sleep.

Every other sleep and every other ``time`` function is passed through
unchanged.  Early wake-ups are safe because both loops re-check their state
after every sleep: a shorter sleep only changes when they look, not what
they do.  The wait never returns early for a queue that was already
non-empty on entry, so a caller that sleeps without consuming cannot spin.
A thread woken from a queue's condition hands the notification on, so a
consumer blocked in ``Queue.get`` on the same queue (the SCU waiting for a
response) is never starved.
"""
from __future__ import annotations

import logging
import queue
import select
import struct
import threading
import time
from typing import Any

from dicom_node.db.states import AssociationEnd
from dicom_node.defaults import REACTOR_BUSY_SLICE_SECONDS, REACTOR_BUSY_WINDOW_SECONDS

REACTOR_SLEEP_MIN = 0.0005
"""Only sleeps at least this long are reactor idle sleeps (the 0.1 ms waits for a pause are left alone)."""

_installed = False
log = logging.getLogger("dicom_node.receive.pynetdicom_patches")


def _wait_for_queue(q: queue.Queue, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``q`` to become non-empty; True if it did."""
    with q.not_empty:  # holds q.mutex, so only the unlocked _qsize() may be used inside
        if q._qsize():
            return True
        q.not_empty.wait(seconds)
        if q._qsize():
            q.not_empty.notify()  # pass the wake-up on to a blocked consumer, if there is one
            return True
    return False


def _readable(raw: Any, timeout: float) -> bool:
    try:
        ready, _, _ = select.select([raw], [], [], timeout)
    except (OSError, ValueError):
        return True  # closed or broken: let the loop find out now
    return bool(ready)


def _association_sleep(assoc: Any, seconds: float) -> None:
    dimse = getattr(assoc, "dimse", None)
    msgs = getattr(dimse, "msg_queue", None)
    if not isinstance(msgs, queue.Queue) or msgs.qsize():
        time.sleep(seconds)
        return
    _wait_for_queue(msgs, seconds)


def _dul_sleep(dul: Any, seconds: float) -> None:
    outgoing = getattr(dul, "to_provider_queue", None)
    raw = getattr(getattr(dul, "socket", None), "socket", None)
    if raw is None or not isinstance(outgoing, queue.Queue) or outgoing.qsize() or _readable(raw, 0):
        time.sleep(seconds)
        return
    now = time.monotonic()
    if now > getattr(dul, "_node_busy_until", 0.0):
        if _readable(raw, seconds):
            dul._node_busy_until = time.monotonic() + REACTOR_BUSY_WINDOW_SECONDS
        return
    deadline = now + seconds
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        if _wait_for_queue(outgoing, min(REACTOR_BUSY_SLICE_SECONDS, remaining)) or _readable(raw, 0):
            dul._node_busy_until = time.monotonic() + REACTOR_BUSY_WINDOW_SECONDS
            return


class _ReactorTime:
    """Stands in for the ``time`` module inside pynetdicom's association and DUL modules."""

    def __init__(self, association_cls: type, dul_cls: type) -> None:
        self._association_cls = association_cls
        self._dul_cls = dul_cls

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        if seconds < REACTOR_SLEEP_MIN:
            time.sleep(seconds)
            return
        thread = threading.current_thread()
        if isinstance(thread, self._dul_cls):
            _dul_sleep(thread, seconds)
        elif isinstance(thread, self._association_cls):
            _association_sleep(thread, seconds)
        else:
            time.sleep(seconds)


def install() -> None:
    """Install the proxy in this process (idempotent).  Call before any association starts."""
    global _installed
    if _installed:
        return
    from pynetdicom import association, dul

    proxy = _ReactorTime(association.Association, dul.DULServiceProvider)
    association.time = proxy  # type: ignore[assignment]
    dul.time = proxy  # type: ignore[assignment]
    _installed = True


# --- PDU limits ---------------------------------------------------------------------------------------
#
# pynetdicom reads a PDU's whole length field's worth of bytes before anything
# looks at it, and a connection's first PDU before the AE and host checks.  The
# receiver reads the first PDU itself (dicom_node.receive.limits, under ARTIM
# and a size cap) and hands it over with hand_over_associate_rq; every later PDU
# of an acceptor goes through _read_pdu_data_limited, which judges the header
# before the body is read.  Both stand in for DULServiceProvider._read_pdu_data
# (pynetdicom 3.0.4); tests/node/test_hostile_peers.py pins that method's source
# so that a pynetdicom release that changes it fails loudly instead of silently
# bypassing these limits.

PATCHED_SOURCES = {
    "pynetdicom.dul.DULServiceProvider._read_pdu_data": "19f2d4e38c13c83586365d93dd5cd96a0c7c665cb37251054b3e1f246e9f431b",
    "pynetdicom.dul.DULServiceProvider._decode_pdu": "fc71dd1bf853e1ce79d29b11731a26a4f6ee9eb697026ad611f8fc91f8aa69c9",
    "pynetdicom.transport.RequestHandler.handle": "034823fb4df3a87467bd0d45193f0d457fcf59c87fda8e97b2edfb89426f76dd",
}
"""sha256 of the pynetdicom source each patch below replaces or relies on, as tested (pynetdicom 3.0.4)."""

_limits_installed = False
_DATA_STATES = ("Sta6", "Sta7")  # PS3.8 9.2: association established / awaiting A-RELEASE-RP


def hand_over_associate_rq(dul: Any, data: bytes) -> None:
    """Give a DUL the A-ASSOCIATE-RQ already read from its socket, as its own reader would have.

    The same steps as the end of ``_read_pdu_data``: decode (which fires
    EVT_DATA_RECV and EVT_PDU_RECV), queue the state machine event, queue the PDU.
    """
    pdu, event = dul._decode_pdu(bytearray(data))
    dul.event_queue.put(event)
    dul._recv_pdu.put(pdu)


def _abort_and_close(dul: Any, why: str) -> None:
    """Refuse a PDU without reading it: A-ABORT (provider, invalid PDU parameter), then close at once."""
    from pynetdicom.pdu import A_ABORT_RQ

    assoc = dul.assoc
    requestor = assoc.requestor
    log.warning("association from %s:%s aborted: %s", requestor.address, requestor.port, why)
    assoc.node_end_reason = AssociationEnd.PROTOCOL_ERROR
    abort = A_ABORT_RQ()
    abort.source, abort.reason_diagnostic = 0x02, 0x06
    raw = dul.socket.socket
    try:
        if raw is not None:
            raw.send(abort.encode())
    except OSError:
        pass  # the peer is gone already
    dul.socket.close()  # queues Evt17: the state machine ends the association (A-P-ABORT)


def _read_pdu_data_limited(dul: Any) -> None:
    """``DULServiceProvider._read_pdu_data`` with the header judged by :func:`dicom_node.receive.limits.pdu_refusal` first.

    Everything else is pynetdicom's: the same events for a closed
    connection or a short read, the same decoding and queues.
    """
    from pynetdicom.dul import LOGGER

    from dicom_node.receive.limits import pdu_refusal

    sock = dul.socket
    try:
        header = sock.recv(6)
    except (OSError, TimeoutError):
        dul.event_queue.put("Evt17")
        return
    if len(header) < 6:
        dul.event_queue.put("Evt17")
        return
    pdu_type, _, length = struct.unpack(">BBL", header)
    # the DUL's own state, not Association.is_established: the peer may send P-DATA as soon as it has
    # the A-ASSOCIATE-AC, before the association thread has marked itself established
    established = dul.state_machine.current_state in _DATA_STATES
    why = pdu_refusal(pdu_type, length, established=established, max_pdu=dul.assoc.acceptor.maximum_length or 0)
    if why is not None:
        _abort_and_close(dul, why)
        return
    try:
        body = sock.recv(length)
    except (OSError, TimeoutError):
        LOGGER.error("Connection closed before the entire PDU was received")
        dul.event_queue.put("Evt17")
        return
    if len(body) != length:
        LOGGER.error(f"The received PDU is shorter than expected ({6 + len(body)} of {6 + length} bytes received)")
        dul.event_queue.put("Evt17")
        return
    try:
        pdu, event = dul._decode_pdu(header + body)
    except Exception as exc:  # noqa: BLE001 - as pynetdicom: any decoding failure is an invalid PDU
        LOGGER.error("Unable to decode the received PDU data")
        LOGGER.exception(exc)
        dul.event_queue.put("Evt19")
        return
    dul.event_queue.put(event)
    dul._recv_pdu.put(pdu)


def install_pdu_limits() -> None:
    """Judge every PDU header of an acceptor before its body is read (idempotent); requestors keep pynetdicom's reader."""
    global _limits_installed
    if _limits_installed:
        return
    from pynetdicom.dul import DULServiceProvider

    original = DULServiceProvider._read_pdu_data

    def _read_pdu_data(self: Any) -> None:
        if self.assoc.is_acceptor:
            _read_pdu_data_limited(self)
        else:
            original(self)

    DULServiceProvider._read_pdu_data = _read_pdu_data  # type: ignore[method-assign]
    _limits_installed = True
