"""glibc's malloc thresholds, set for work on large buffers (glibc only; elsewhere nothing).

glibc maps each block above its mmap threshold afresh, and hands freed memory above its trim
threshold back to the system. Both start low (128 KiB) and rise only as mapped blocks are
freed, up to 32 MiB and 64 MiB. So a fresh process's first load had its tile buffers (read
blobs, inflated planes) mapped, faulted in and given back, one tile after another. A VGG16
`mobile` load in a fresh process took 0.33 s and 222K page faults, while the next load in the
same process took 0.26 s. Only the two thresholds together help; either one alone changed
nothing.

Two settings:

- `glibc_steady`: the top of glibc's own range (mmap 32 MiB, trim 64 MiB), the ceiling glibc
  raises them to itself as mapped blocks of up to 32 MiB are freed. It is set before the
  tiles of a process's first load of whole tensors of LARGE_LOAD (64 MiB) or more are read
  (kformat.loading.overlap). That first load then took 0.22-0.27 s, its peak 20-30 MiB
  higher. Smaller loads pay little of glibc's warm-up. A product streamed tile by tile keeps
  glibc's defaults: VGG16 streamed over HTTP peaked at 0.24x a float32 load with them set,
  0.22x without. Skipped where the process chose for itself: KFORMAT_KEEP_FREED=0, or glibc's
  own variables (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, glibc.malloc tunables).
- `keep_freed_memory`: more (64 MiB, 128 MiB), for kformat's own processes. That is the
  command line (KFORMAT_KEEP_FREED=1), the pack's worker processes and Dask tasks.

Neither setting is ever lowered by the other. Loads still give freed memory back every
16 MiB of tensors read (kformat.loading.trim).
"""

from __future__ import annotations

import ctypes
import os
import threading

from .clib import function as c_function

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
STEADY = (32 << 20, 64 << 20)  # glibc's own ceiling: DEFAULT_MMAP_THRESHOLD_MAX and twice it
KEPT = (64 << 20, 128 << 20)  # what kformat's own processes keep
LARGE_LOAD = 64 << 20  # output bytes from which a load sets glibc_steady (smaller ones pay little warm-up)
OWN_CHOICE = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")

# looked up at import, before any fork: a child looking a symbol up (dlsym) while another of
# the parent's threads held the loader's lock at the fork would wait for ever
_MALLOPT = c_function("mallopt", (ctypes.c_int, ctypes.c_int))
_lock = threading.Lock()
_set: tuple[int, int] = (0, 0)  # (mmap, trim) thresholds this process has set


def _fresh_lock() -> None:
    """A forked child's own lock: another of the parent's threads may have held it at the fork."""
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_lock)


def _apply(mmap_threshold: int, trim_threshold: int) -> None:
    global _set
    if _MALLOPT is None:  # (not glibc)
        return
    with _lock:
        if _set[0] >= mmap_threshold and _set[1] >= trim_threshold:
            return  # as high already
        _MALLOPT(M_MMAP_THRESHOLD, mmap_threshold)
        _MALLOPT(M_TRIM_THRESHOLD, trim_threshold)
        _set = (mmap_threshold, trim_threshold)


def keep_freed_memory() -> None:
    """Map only blocks over 64 MiB, and keep up to 128 MiB of freed memory, so that
    temporaries reuse pages already faulted in. Dask's nanny starts workers with
    MALLOC_TRIM_THRESHOLD_=65536, which also switches off glibc's adaptive mmap threshold:
    every temporary array over 128 KiB was then mapped, faulted in and unmapped afresh, and
    encoding ran 2.5x slower."""
    _apply(*KEPT)


def keep_freed_memory_if_asked() -> None:
    """keep_freed_memory in this process too, where its owner asked for it with
    KFORMAT_KEEP_FREED=1 (the command line does, for its own process). With glibc's
    defaults, each thread arena's freed temporaries went back at once (madvise, hundreds of
    4 MB calls) and were faulted in again: a VGG16 `q8` command at --jobs 2 spent 1.03 s in
    the kernel, not 0.2 s, and took 1.44x the time."""
    if os.environ.get("KFORMAT_KEEP_FREED") == "1":
        keep_freed_memory()


def _own_choice() -> bool:
    """Whether the process chose its malloc's thresholds itself (or asked kformat not to)."""
    if os.environ.get("KFORMAT_KEEP_FREED") == "0" or any(name in os.environ for name in OWN_CHOICE):
        return True
    return "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")


def for_loading(nbytes: int) -> None:
    """Before a load of `nbytes` of outputs reads its tiles: kformat's own thresholds where the
    process asked for them, else glibc_steady for a load of LARGE_LOAD or more (which never
    lowers kformat's own)."""
    keep_freed_memory_if_asked()
    if nbytes >= LARGE_LOAD and not _own_choice():
        glibc_steady()


def glibc_steady() -> None:
    """glibc's thresholds at the top of its own adaptive range from the start."""
    _apply(*STEADY)
