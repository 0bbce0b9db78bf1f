"""Output arrays with pages of their own, outside the C heap, on huge pages while they come cheap.

glibc raises its mmap threshold each time a mapped block is freed (up to 32 MiB), so after a
first load has freed its outputs, a second load's outputs under 32 MiB (VGG16's conv layers,
2-9 MB each) come from the heap, between the tile buffers, and the heap fragments: a VGG16
`mobile` load's overhead above its output was 22-27 MiB the first time and 46-56 MiB the
times after, in one process. Tensors of MAPPED_ABOVE bytes or more are therefore given an
anonymous private mapping of their own, unmapped when the array goes; they never touch the
heap or its thresholds. Where mmap has no MAP_ANONYMOUS (Windows) numpy allocates them as usual.

Huge pages (2 MiB) make a load faster when the system has them to hand: one fault per 2 MiB
instead of 512, and fewer TLB misses (VGG16 `mobile`: 0.19 s against 0.26 s). A huge page
the system must take from memory it handed back to its host costs far more: in a virtual
machine with free page reporting (a balloon), where idle free memory is returned to the host,
a fresh huge page cost 2.5-4.6 ms to zero against 0.65 ms for 512 small pages, and a first
load in a new process took 0.53-0.70 s instead of 0.27-0.30 s. So a large output's huge pages
are populated 2 MiB at a time (MADV_POPULATE_WRITE), and at the second one slower than
SLOW_HUGE_PAGE the rest of the array falls back to small pages, faulted in as tiles are
decoded, and huge pages are not tried again until one of these outputs has been freed (its
pages are the system's to hand out again: a second load in the process finds them). Where the
system cannot populate (Linux before 5.14) huge pages are only advised, as numpy does.
"""

from __future__ import annotations

import errno
import math
import mmap
import sys
import time
import weakref

import numpy as np

MAPPED_ABOVE = 1 << 20  # bytes
HUGE_PAGE = 2 << 20  # bytes (x86-64 and arm64 with 4 KiB pages)
SLOW_HUGE_PAGE = 1e-3  # seconds to zero a 2 MiB page: more than 512 small pages take (0.65 ms)
SLOW_PAGES_ALLOWED = 1  # slow huge pages an array may take before it falls back

_FLAGS = (
    mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    if hasattr(mmap, "MAP_PRIVATE") and hasattr(mmap, "MAP_ANONYMOUS")
    else None
)
_HUGE = getattr(mmap, "MADV_HUGEPAGE", None)
_SMALL = getattr(mmap, "MADV_NOHUGEPAGE", None)
_POPULATE_WRITE: int | None = getattr(
    mmap, "MADV_POPULATE_WRITE", 23 if sys.platform.startswith("linux") else None
)
_huge_paused = False  # after a fallback, until one of these outputs is freed


def empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """np.empty(shape, dtype), in a mapping of its own when it is large."""
    dtype = np.dtype(dtype)
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if _FLAGS is None or nbytes < MAPPED_ABOVE:
        return np.empty(shape, dtype=dtype)
    try:
        pages = mmap.mmap(-1, nbytes, flags=_FLAGS)
    except OSError:
        raise MemoryError(f"cannot map {nbytes} bytes") from None
    array = np.frombuffer(pages, dtype=dtype, count=count).reshape(shape)
    if _HUGE is not None:
        _back(pages, nbytes, array.ctypes.data)
        weakref.finalize(pages, _resume_huge_pages)
    return array


def _resume_huge_pages() -> None:
    global _huge_paused
    _huge_paused = False


def _back(pages: mmap.mmap, nbytes: int, address: int) -> None:
    """Huge pages for the mapping at `address`, populated now while each comes cheap; the
    rest on small pages from the second slow one (see the module's docstring)."""
    global _huge_paused, _POPULATE_WRITE
    if _huge_paused:
        return
    pages.madvise(_HUGE)
    if _POPULATE_WRITE is None or _SMALL is None:
        return
    slow = 0
    start = 0
    for end in [*range((-address) % HUGE_PAGE or HUGE_PAGE, nbytes, HUGE_PAGE), nbytes]:
        began = time.perf_counter()
        try:
            pages.madvise(_POPULATE_WRITE, start, end - start)
        except OSError as exc:  # advised only: for good on a kernel without it (EINVAL)
            if exc.errno == errno.EINVAL:
                _POPULATE_WRITE = None
            return  # (ENOMEM: written pages fault in, or fail, as they would without it)
        if end - start == HUGE_PAGE and time.perf_counter() - began > SLOW_HUGE_PAGE:
            slow += 1
            if slow > SLOW_PAGES_ALLOWED:
                if end < nbytes:
                    pages.madvise(_SMALL, end, nbytes - end)
                _huge_paused = True
                return
        start = end
