"""The process's C library, looked up once (kformat.clib)."""

from __future__ import annotations

import ctypes
import sys

import pytest

from kformat import clib


def test_the_c_library_is_one_handle_and_a_missing_function_is_none():
    if sys.platform == "win32":
        assert clib.libc() is None and clib.function("madvise", ()) is None
        return
    assert clib.libc() is clib.libc()
    assert clib.function("kformat_no_such_function", (ctypes.c_int,)) is None
    getpid = clib.function("getpid", ())
    assert getpid is not None and getpid() == __import__("os").getpid()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's calls")
def test_the_calls_kformat_makes_are_found_on_linux():
    for name in ("madvise", "prctl", "mallopt", "malloc_trim"):
        if name in ("mallopt", "malloc_trim") and "glibc" not in " ".join(__import__("platform").libc_ver()):
            continue  # (musl has neither)
        assert hasattr(clib.libc(), name), name  # (function() would set the shared argtypes)
