"""Freed memory handed back to the system after a large tensor is read (glibc only).

A load frees thousands of tile-sized buffers (fetched blobs, inflated planes) from several
decode threads, and glibc keeps much of that in its per-thread arenas: 40-75 MiB above the
output on VGG16 `mobile`, varying from run to run, which is a tenth of the load's peak.
`malloc_trim` once every TRIM_BYTES of tensors read gives most of it back (overhead
39-46 MiB) in about the same time; after every tensor it was 15% slower for no less memory.
The bytes are counted across tensors: counted per tensor, a run of small ones (VGG16's conv
layers, read last) was never trimmed, and the load's peak came there, 42-53 MiB above the
output. Elsewhere (musl, macOS, Windows) nothing is done.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from typing import Callable

from ..clib import function as c_function

TRIM_BYTES = 16 << 20


_TRIM: Callable[[int], int] | None = (
    c_function("malloc_trim", (ctypes.c_size_t,)) if sys.platform.startswith("linux") else None
)
_lock = threading.Lock()
_since = 0  # bytes of tensors read since the last trim, in this process


def after_tensor(nbytes: int) -> None:
    """Count a tensor of `nbytes` read; give freed memory back every TRIM_BYTES of them."""
    global _since
    if _TRIM is None:
        return
    with _lock:
        _since += nbytes
        due = _since >= TRIM_BYTES
        if due:
            _since = 0
    if due:
        _TRIM(0)
