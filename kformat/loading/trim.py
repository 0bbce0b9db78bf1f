"""Freed memory handed back to the system after a large tensor is read (glibc only).

A load frees thousands of tile-sized buffers (fetched blobs, inflated planes) from several
decode threads, and glibc keeps much of that in its per-thread arenas: 40-75 MiB above the
output on VGG16 `mobile`, varying from run to run, which is a tenth of the load's peak.
`malloc_trim` after each tensor of at least TRIM_BYTES gives most of it back (overhead
39-46 MiB) in about the same time; after every tensor it was 15% slower for no less memory.
Elsewhere (musl, macOS, Windows) nothing is done.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Callable

TRIM_BYTES = 16 << 20


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own C library; glibc has it
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def after_tensor(nbytes: int) -> None:
    """Give freed memory back once a tensor of `nbytes` is read, when it is large."""
    if _TRIM is not None and nbytes >= TRIM_BYTES:
        _TRIM(0)
