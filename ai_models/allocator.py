"""Keep freed tensor memory in the process between inference calls (glibc malloc tuning).

PyTorch's CPU tensors come from ``malloc``.  glibc serves every request
above its mmap threshold (128 KiB, rising dynamically to at most 32 MiB)
with a fresh ``mmap`` and gives it back with ``munmap`` when the tensor is
freed, and it trims the heap as soon as 128 KiB at its top are free.  A
forward pass allocates and frees the same large activations every time,
so every call pays page faults and zeroing for memory it had a moment ago:
on this project's 2-core VM that was a quarter of the L/R-marker network's
time.  TensorFlow does not pay it (its own BFC allocator keeps memory),
which is part of why the ports lagged the tf-keras references.

:func:`retain_freed_memory` fixes the thresholds: blocks up to 32 MiB
come from the heap, and up to 256 MiB of free heap is kept.  The cost is
resident memory that stays at the peak of recent calls, which is what a
model worker wants anyway.  It is process-wide, so :func:`load_model
<ai_models.registry.load_model>` applies it once; set
``AI_MODELS_MALLOC_TUNING=0`` to leave the allocator alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h> parameter numbers
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's own upper limit for this parameter on 64-bit
TRIM_THRESHOLD = 256 << 20

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Apply the thresholds once per process; True when glibc accepted them.

    Returns False, and changes nothing, on a C library without ``mallopt``
    (musl, macOS) or when ``AI_MODELS_MALLOC_TUNING=0``.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("AI_MODELS_MALLOC_TUNING", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        log.debug("no mallopt in the C library (%s); allocator left as it is", name)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
