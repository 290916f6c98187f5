"""pynetdicom's reactor sleeps end early when there is work, and never starve a waiting consumer.

The behaviour under real traffic is covered by every storescu/Orthanc test
(the receiver and the sender install the proxy); these tests pin the
waiting rules themselves with stand-in threads of the same classes.
"""
from __future__ import annotations

import queue
import socket
import threading
import time

import pytest
from pynetdicom import association, dul

from dicom_node.receive import pynetdicom_patches
from dicom_node.receive.pynetdicom_patches import _association_sleep, _dul_sleep, _ReactorTime, _wait_for_queue
from tests.peers import wait_for


class _Dimse:
    def __init__(self) -> None:
        self.msg_queue: queue.Queue = queue.Queue()


class _Assoc:
    def __init__(self) -> None:
        self.dimse = _Dimse()


def _timed(fn, *args) -> float:
    start = time.monotonic()
    fn(*args)
    return time.monotonic() - start


def test_association_sleep_wakes_when_a_message_is_queued():
    assoc = _Assoc()
    threading.Timer(0.05, assoc.dimse.msg_queue.put, args=((1, "msg"),)).start()
    assert _timed(_association_sleep, assoc, 2.0) < 1.0
    assert assoc.dimse.msg_queue.qsize() == 1  # the sleeper does not consume


def test_association_sleep_lasts_its_time_without_messages():
    assert 0.09 <= _timed(_association_sleep, _Assoc(), 0.1) < 1.0


def test_a_queue_already_full_does_not_make_a_spinning_caller():
    assoc = _Assoc()
    assoc.dimse.msg_queue.put((1, "left there by someone else"))
    assert _timed(_association_sleep, assoc, 0.05) >= 0.045  # a plain sleep, not an immediate return


def test_a_blocked_consumer_still_gets_the_item():
    """The SCU blocks in Queue.get while a reactor may be sleeping on the same queue."""
    q: queue.Queue = queue.Queue()
    got: list = []
    consumer = threading.Thread(target=lambda: got.append(q.get(timeout=5)))
    sleeper = threading.Thread(target=_wait_for_queue, args=(q, 5))
    sleeper.start()
    consumer.start()
    wait_for(lambda: len(q.not_empty._waiters) == 2, timeout=5, interval=0.01, what="both threads waiting on q.not_empty")
    start = time.monotonic()
    q.put("response")
    consumer.join(5)
    sleeper.join(5)
    assert got == ["response"] and time.monotonic() - start < 1.0


class _FakeDul:
    def __init__(self, raw: socket.socket) -> None:
        self.to_provider_queue: queue.Queue = queue.Queue()
        self.socket = type("AssociationSocket", (), {"socket": raw})()


@pytest.fixture
def socket_pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_idle_dul_wakes_on_incoming_data(socket_pair):
    ours, peer = socket_pair
    fake = _FakeDul(ours)
    threading.Timer(0.05, peer.send, args=(b"PDU",)).start()
    assert _timed(_dul_sleep, fake, 2.0) < 1.0
    assert fake._node_busy_until > time.monotonic()  # traffic makes it busy


def test_busy_dul_wakes_on_a_queued_send_and_on_data(socket_pair):
    ours, peer = socket_pair
    fake = _FakeDul(ours)
    fake._node_busy_until = time.monotonic() + 60
    threading.Timer(0.05, fake.to_provider_queue.put, args=("P-DATA",)).start()
    assert _timed(_dul_sleep, fake, 2.0) < 1.0
    fake.to_provider_queue.get()
    threading.Timer(0.05, peer.send, args=(b"PDU",)).start()
    assert _timed(_dul_sleep, fake, 2.0) < 1.0


def test_dul_without_a_socket_sleeps_plainly():
    fake = _FakeDul(None)  # type: ignore[arg-type]
    fake.socket = None
    assert 0.045 <= _timed(_dul_sleep, fake, 0.05) < 1.0


def test_proxy_dispatches_on_the_calling_thread_and_passes_the_rest_through():
    proxy = _ReactorTime(association.Association, dul.DULServiceProvider)
    assert proxy.monotonic is time.monotonic
    assert 0.045 <= _timed(proxy.sleep, 0.05) < 1.0  # not a reactor thread: a plain sleep


def test_install_swaps_the_time_module_of_both_reactors():
    pynetdicom_patches.install()
    assert isinstance(association.time, _ReactorTime) and isinstance(dul.time, _ReactorTime)
    pynetdicom_patches.install()  # idempotent
    assert association.time.sleep.__self__ is dul.time.sleep.__self__
