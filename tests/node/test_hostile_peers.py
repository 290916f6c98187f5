"""The DICOM port against hostile peers (issue 15, items 1, 2 and 12), against a running node.

Raw sockets play the attacker: idle and garbage connections, length fields
that announce gigabytes, PDUs larger than we advertised, a sender that stalls
in the middle of a PDU, peers that abort or drop the connection.  Every wait
is for a condition with a deadline.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import socket
import struct
import time
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import build_context
from pynetdicom.sop_class import CTImageStorage

from dicom_node.delivery.store_scu import StoreAssociation
from dicom_node.ops.synthetic import chest_ct_series, write_datasets
from dicom_node.receive.pynetdicom_patches import PATCHED_SOURCES
from tests.peers import NodeProcess, node_db_rows, storescu, wait_for

pytestmark = pytest.mark.peers

ARTIM = 4.0
NETWORK_TIMEOUT = 4.0
MAX_PDU = 16384


def test_pynetdicom_still_has_the_code_the_patches_replace() -> None:
    """A pynetdicom release that changes what pynetdicom_patches stands in for must fail here, not bypass the limits."""
    for dotted, digest in PATCHED_SOURCES.items():
        module_name, cls_name, attr = dotted.rsplit(".", 2)
        source = inspect.getsource(getattr(getattr(importlib.import_module(module_name), cls_name), attr))
        assert hashlib.sha256(source.encode()).hexdigest() == digest, f"{dotted} changed in this pynetdicom: review the patch"


@pytest.fixture(scope="module")
def node(tmp_path_factory):  # type: ignore[no-untyped-def]
    proc = NodeProcess(tmp_path_factory.mktemp("hostile") / "node")
    proc.write_config()
    text = proc.config_path.read_text()
    limits = f"max_pdu = {MAX_PDU}\nartim_seconds = {ARTIM}\nnetwork_timeout_seconds = {NETWORK_TIMEOUT}\n"
    proc.config_path.write_text(text.replace(f"port = {proc.port}\n", f"port = {proc.port}\n{limits}", 1))
    proc.start()
    yield proc
    proc.stop()


def connect(node: NodeProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def closed_by_peer(sock: socket.socket, timeout: float) -> float:
    """Seconds until the node closed ``sock`` (reading and dropping whatever it sent first); fails after ``timeout``."""
    start = time.monotonic()
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"connection still open after {timeout} s")
    return time.monotonic() - start


def associate(node: NodeProcess) -> StoreAssociation:
    return StoreAssociation.open(
        "127.0.0.1", node.port, calling_ae="DICOM_NODE_SCU", called_ae="DICOM_NODE",
        contexts=[build_context(CTImageStorage, ExplicitVRLittleEndian)], timeout=30,
    )


def receiver_pid(node: NodeProcess) -> int:
    with associate(node):
        pass
    return int(wait_for(lambda: node_db_rows(node, "select max(receiver_pid) from associations")[0][0], 30, what="an association row"))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def last_association_end(node: NodeProcess) -> str | None:
    rows = node_db_rows(node, "select end_reason from associations order by id desc limit 1")
    return rows[0][0] if rows else None


# --- item 2: memory before any check -------------------------------------------------------------


def test_associate_rq_announcing_4_gb_is_refused_before_it_is_buffered(node) -> None:
    pid = receiver_pid(node)
    before = rss_kib(pid)
    sock = connect(node)
    sent = 0
    try:
        sock.sendall(struct.pack(">BBI", 0x01, 0, 0xFFFFFFF0))
        chunk = b"\0" * (1 << 20)
        for _ in range(64):  # 64 MiB, if the node keeps reading
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass  # closed on us: what should happen
    assert closed_by_peer(sock, 10) < 10
    assert sent < 32 << 20, "the node went on reading the body of a 4 GB A-ASSOCIATE-RQ"
    assert rss_kib(pid) - before < 16 << 10  # KiB: nothing near the bytes sent was kept
    assert "A-ASSOCIATE-RQ of 4294967280 bytes is larger than 65536" in node.log_text()


def test_pdata_larger_than_our_max_pdu_aborts_the_association(node) -> None:
    assoc = associate(node)
    sock = assoc._sock
    sock.sendall(struct.pack(">BBI", 0x04, 0, MAX_PDU * 64) + b"\0" * 1024)
    assert closed_by_peer(sock, 10) < 10
    assert wait_for(lambda: "larger than the maximum PDU length we advertised (16384)" in node.log_text(), 10)
    assert wait_for(lambda: last_association_end(node) == "protocol-error", 10, what="end reason protocol-error")


# --- item 1: association slots held forever -------------------------------------------------------


def test_garbage_is_dropped_at_once(node) -> None:
    sock = connect(node)
    sock.sendall(b"\xff" + bytes(range(256)) * 4)
    assert closed_by_peer(sock, ARTIM) < ARTIM / 2
    assert "first byte 0xFF is not an A-ASSOCIATE-RQ" in node.log_text()


def test_idle_connections_do_not_keep_a_sender_out_and_are_closed_after_artim(node, tmp_path) -> None:
    idle = [connect(node) for _ in range(70)]
    for number, sock in enumerate(idle):
        if number % 2:
            sock.sendall(b"\x01")  # a valid first byte, then nothing
    files = write_datasets(chest_ct_series(2, 32), tmp_path / "ct")
    stored_before = node_db_rows(node, "select count(*) from instances")[0][0]
    start = time.monotonic()
    result = storescu(node.port, files, timeout=30)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - start < 10
    assert node_db_rows(node, "select count(*) from instances")[0][0] == stored_before + 2
    deadline = time.monotonic() + ARTIM + 10
    for sock in idle:
        closed_by_peer(sock, max(deadline - time.monotonic(), 0.1))
        sock.close()


def test_a_sender_stalled_inside_a_pdu_is_cut_after_the_network_timeout(node) -> None:
    assoc = associate(node)
    sock = assoc._sock
    sock.sendall(struct.pack(">BBI", 0x04, 0, 1000) + b"\0" * 10)  # 10 of the 1000 bytes announced
    waited = closed_by_peer(sock, NETWORK_TIMEOUT + 10)
    assert waited >= NETWORK_TIMEOUT - 1
    # the read timeout and pynetdicom's idle timer are both network_timeout_seconds: either may fire first
    assert wait_for(lambda: last_association_end(node) in ("connection-lost", "idle-timeout"), 10, what="end reason")


# --- item 12: how associations ended ---------------------------------------------------------------


def test_end_reasons_are_recorded(node) -> None:
    with associate(node):
        pass
    assert wait_for(lambda: last_association_end(node) == "released", 10, what="released")
    associate(node).abort()
    assert wait_for(lambda: last_association_end(node) == "peer-abort", 10, what="peer-abort")
    dropped = associate(node)
    dropped._sock.close()  # the TCP connection goes, no A-ABORT
    assert wait_for(lambda: last_association_end(node) == "connection-lost", 10, what="connection-lost")
