"""The process's own C library, for the calls Python's standard library does not make: madvise
without the GIL (kformat.loading.mapped), malloc_trim (kformat.loading.trim), mallopt
(kformat.heap) and prctl (kformat.packing.processes). One handle, looked up once, before any
fork: a child that called dlopen while another of the parent's threads held the loader's lock at
the fork would wait for ever."""

from __future__ import annotations

import ctypes
import functools
import sys
from typing import Callable


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The C library this process runs on (glibc, musl, macOS's), or None (Windows)."""
    if sys.platform == "win32":
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def function(name: str, argtypes: tuple, restype=ctypes.c_int) -> Callable | None:
    """The C library's `name` taking `argtypes`, or None where it has none (musl has no
    malloc_trim, macOS no prctl). Called through ctypes, it runs without the GIL."""
    try:
        found = getattr(libc(), name)
    except AttributeError:  # (no such function, or no C library)
        return None
    found.argtypes, found.restype = argtypes, restype
    return found
