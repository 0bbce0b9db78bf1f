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
are populated 2 MiB at a time (MADV_POPULATE_WRITE; the loader hands that to a decode thread,
beside the tiles being decoded), each timed in the thread's CPU time, and at the second one
slower than SLOW_HUGE_PAGE the rest of the array falls back to small pages, faulted in as tiles
are decoded, and huge pages are not tried again until an output advised huge pages has been
freed (the huge pages it held are the system's to hand out again, cheaply). Where the
system cannot populate (Linux before 5.14), or its first population in the process got small
pages (huge pages switched off, or none free), huge pages are only advised, as numpy does.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import math
import mmap
import sys
import time
import weakref
from typing import Callable

import numpy as np

from ..clib import function as c_function

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
POPULATE_WRITE: int | None = getattr(
    mmap, "MADV_POPULATE_WRITE", 23 if sys.platform.startswith("linux") else None
)
_POPULATE_WRITE = POPULATE_WRITE  # None once this process has found it does not pay


_MADVISE = (  # madvise(2) through ctypes, which lets go of the GIL while it runs
    c_function("madvise", (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int))
    if _POPULATE_WRITE is not None
    else None
)
_huge_paused = False  # after a fallback, until one of these outputs is freed
_huge_seen = False  # a population has been seen to get a huge page in this process


def empty(
    shape: tuple[int, ...], dtype, defer: Callable[[Callable[[], None]], object] | None = None
) -> np.ndarray:
    """np.empty(shape, dtype), in a mapping of its own when it is large. Its huge pages are
    populated now, or by `defer(populate)` (a decode thread, beside the tiles being written)."""
    dtype = np.dtype(dtype)
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if _FLAGS is None or nbytes < MAPPED_ABOVE:
        return np.empty(shape, dtype=dtype)
    try:
        pages = mmap.mmap(-1, nbytes, flags=_FLAGS)
    except OSError:
        raise MemoryError(f"cannot map {nbytes} bytes") from None
    flat = np.frombuffer(pages, dtype=dtype, count=count)  # (every view of it keeps it)
    array = flat.reshape(shape)
    if _HUGE is not None and not _huge_paused:
        pages.madvise(_HUGE)
        weakref.finalize(pages, _resume_huge_pages)  # (huge pages to hand out again)
        if _POPULATE_WRITE is not None and _SMALL is not None:
            populate = functools.partial(_populate_huge, pages, nbytes, array.ctypes.data, weakref.ref(flat))
            if defer is None:
                populate()
            else:
                defer(populate)
    return array


def _resume_huge_pages() -> None:
    global _huge_paused
    _huge_paused = False


def _populate_huge(pages: mmap.mmap, nbytes: int, address: int, array: weakref.ref) -> None:
    """The huge pages of the mapping at `address`, populated 2 MiB at a time while each comes
    cheap; the rest on small pages from the second slow one (see the module's docstring).
    Stops once no view of the array is left (a load that failed at its first tile touches no
    more)."""
    global _huge_paused
    if _huge_paused:  # (another output fell back since this one was advised)
        _advise_small(pages, 0, nbytes)
        return
    slow = 0
    start = 0
    for end in [*range((-address) % HUGE_PAGE or HUGE_PAGE, nbytes, HUGE_PAGE), nbytes]:
        if array() is None:
            return
        whole = end - start == HUGE_PAGE
        began = time.thread_time()  # (not the wall clock: waits for a core or the GIL are not the page's)
        populated = (
            _populate_checked(address, start) if whole and not _huge_seen else _populate(address, start, end)
        )
        if not populated:
            return
        if whole and time.thread_time() - began > SLOW_HUGE_PAGE:
            slow += 1
            if slow > SLOW_PAGES_ALLOWED:
                _huge_paused = True
                _advise_small(pages, end, nbytes - end)
                return
        start = end


def _advise_small(pages: mmap.mmap, start: int, length: int) -> None:
    if length > 0:
        try:
            pages.madvise(_SMALL, start, length)
        except (OSError, ValueError):  # (closed meanwhile: nothing left to advise)
            pass


def _populate(address: int, start: int, end: int) -> bool:
    """Fault in [start, end) of the mapping now, without the GIL (mmap.madvise holds it, and
    the decode threads waited on it); False when the kernel would not (advised only, then)."""
    global _POPULATE_WRITE
    advice = _POPULATE_WRITE  # (another decode thread may have given up on it meanwhile)
    if advice is None or _MADVISE is None:
        return False
    if _MADVISE(address + start, end - start, advice) == 0:
        return True
    error = ctypes.get_errno()
    if error == errno.EINVAL:  # a kernel without it (before 5.14): for good
        _POPULATE_WRITE = None
    return False  # (ENOMEM: written pages fault in, or fail, as they would without it)


def _populate_checked(address: int, start: int) -> bool:
    """_populate of the process's first whole huge page, and whether the system gave a huge
    page for it. Where it gives small pages (huge pages switched off, or none free), populating
    would only fault them in on one thread, where the decode threads would share the faults
    (and nothing would ever fall back): never again in this process, then."""
    global _POPULATE_WRITE, _huge_seen
    if not _populate(address, start, start + HUGE_PAGE):
        return False
    if not _on_huge_pages(address + start):
        _POPULATE_WRITE = None
        return False
    _huge_seen = True
    return True


def _on_huge_pages(address: int) -> bool:
    """Whether the kernel's area holding `address` has huge pages (its AnonHugePages in
    /proc/self/smaps; the process's total would move with other threads' frees); False where
    the system does not say."""
    try:
        with open("/proc/self/smaps", "rb") as smaps:
            inside = False
            for line in smaps:
                head = line.split(b" ", 1)[0]
                if b"-" in head and not head.endswith(b":"):
                    low, _, high = head.partition(b"-")
                    inside = int(low, 16) <= address < int(high, 16)
                elif inside and line.startswith(b"AnonHugePages:"):
                    return int(line.split()[1]) > 0
    except (OSError, ValueError, IndexError):
        pass
    return False
