#!/usr/bin/env python
"""A normal storescu send while attackers hold the DICOM port (issue 15, "Done when").

Starts a node with its default limits, sends the same CT series with dcmtk
``storescu`` once without and once with attackers, and prints both times:

- an idle attacker keeps ``--idle`` connections open (each sends one valid
  first byte, or nothing, then waits), reopening each one the node closes;
- a malformed-PDU attacker loops: garbage, an A-ASSOCIATE-RQ announcing
  4 GB, a truncated request, as fast as the node answers.

Run from the repository root::

    .venv/bin/python tests/bench/bench_hostile.py            # 300 CT slices, 200 idle connections

This is a script, not a test: pytest does not collect ``bench_*.py``.
"""
from __future__ import annotations

import argparse
import socket
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dicom_node.ops.synthetic import chest_ct_series, write_datasets  # noqa: E402
from tests.peers import NodeProcess, node_db_rows, storescu  # noqa: E402


def idle_attacker(port: int, count: int, stop: threading.Event, opened: list[int]) -> None:
    """Keep ``count`` idle connections open, reopening what the node closes."""
    held: list[socket.socket] = []
    while not stop.is_set():
        for sock in list(held):
            sock.setblocking(False)
            try:
                if sock.recv(1) == b"":
                    raise ConnectionResetError
            except BlockingIOError:
                continue
            except OSError:
                pass
            held.remove(sock)
            sock.close()
        while len(held) < count and not stop.is_set():
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                break
            if len(held) % 2:
                sock.sendall(b"\x01")
            held.append(sock)
            opened[0] += 1
        stop.wait(0.2)
    for sock in held:
        sock.close()


def malformed_attacker(port: int, stop: threading.Event, sent: list[int]) -> None:
    payloads = [
        b"\xff" + bytes(range(256)) * 8,
        struct.pack(">BBI", 0x01, 0, 0xFFFFFFF0) + b"\0" * 65536,
        struct.pack(">BBI", 0x01, 0, 200) + b"\0" * 50,  # then closed: a truncated request
        struct.pack(">BBI", 0x04, 0, 1 << 20) + b"\0" * 4096,  # P-DATA before any association
    ]
    while not stop.is_set():
        for payload in payloads:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                    sock.sendall(payload)
            except OSError:
                pass
            sent[0] += 1


def timed_send(node: NodeProcess, files: list[Path]) -> float:
    before = node_db_rows(node, "select count(*) from instances")[0][0]
    start = time.monotonic()
    result = storescu(node.port, files, timeout=600)
    elapsed = time.monotonic() - start
    if result.returncode != 0:
        raise SystemExit(f"storescu failed: {result.stderr[-2000:]}")
    stored = node_db_rows(node, "select count(*) from instances")[0][0] - before
    if stored != len(files):
        raise SystemExit(f"{stored} of {len(files)} objects stored")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--idle", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as scratch:
        root = Path(scratch)
        node = NodeProcess(root / "node")
        node.start()
        try:
            clean = write_datasets(chest_ct_series(args.slices, 512), root / "clean")
            attacked = write_datasets(chest_ct_series(args.slices, 512), root / "attacked")
            quiet = timed_send(node, clean)
            stop = threading.Event()
            opened, sent = [0], [0]
            attackers = [
                threading.Thread(target=idle_attacker, args=(node.port, args.idle, stop, opened)),
                threading.Thread(target=malformed_attacker, args=(node.port, stop, sent)),
            ]
            for thread in attackers:
                thread.start()
            time.sleep(2)  # let the attackers reach full strength before the send (a benchmark, not a test)
            try:
                under_attack = timed_send(node, attacked)
            finally:
                stop.set()
                for thread in attackers:
                    thread.join()
        finally:
            node.stop()
    print(f"{args.slices} CT objects (512x512) with storescu: {quiet:.2f} s without attackers, {under_attack:.2f} s with "
          f"{args.idle} idle connections held ({opened[0]} opened in all) and {sent[0]} malformed connections "
          f"({under_attack / quiet:.2f}x)")


if __name__ == "__main__":
    main()
