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

import queue
import select
import threading
import time
from typing import Any

from dicom_node.defaults import REACTOR_BUSY_SLICE_SECONDS, REACTOR_BUSY_WINDOW_SECONDS

REACTOR_SLEEP_MIN = 0.0005
"""Only sleeps at least this long are reactor idle sleeps (the 0.1 ms waits for a pause are left alone)."""

_installed = False


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
