"""What every process of the node does first: log the same way, and die with its parent.

The node's parent spawns the receiver and the model workers; each child
calls :func:`die_with_parent` so that a SIGKILL of the node never leaves an
orphan holding the DICOM port or a GPU.  A leaf module (no node imports), so
that worker and service entry points can share it without importing each other.
"""
from __future__ import annotations

import ctypes
import logging
import signal
import sys

log = logging.getLogger("dicom_node")

NOISY_LIBRARIES = ("pynetdicom", "apscheduler", "alembic", "highdicom")


def setup_logging(level: str) -> None:
    """One log format for every process: time, level, process name, logger, message (never PHI)."""
    logging.basicConfig(
        level=getattr(logging, level), stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(processName)s %(name)s: %(message)s",
    )
    for noisy in NOISY_LIBRARIES:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        log.warning("cannot set parent-death signal; stop the node's child processes by hand if the node is killed")
