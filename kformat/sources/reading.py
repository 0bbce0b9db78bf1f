"""A byte range of an input file read into a new array, on the packer's threads when it is large.

A model's largest tensor is read before any worker can start on it (VGG16's first FC layer:
411 MB), so one thread reading it leaves the others idle; most of that read is the kernel
finding fresh pages for the new array, which scales over threads. Large ranges are split
into READ_STEP pieces read with `os.preadv` (no shared file position, no GIL) on the pool of
kformat.methods.chunks, which the packer sizes by `--jobs`; outside a pack, or at one job,
the caller's thread reads them all. The bytes are the same either way.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..methods import chunks

READ_STEP = 32 << 20  # bytes per piece: few tasks, and a piece per thread for a 64 MB tensor


def read_range(path: str | Path, start: int, length: int, name: str) -> np.ndarray:
    """`length` bytes of `path` from `start`, as a new uint8 array; a short file is an
    InputError naming the tensor, the offset and the bytes expected and got."""
    out = np.empty(length, dtype=np.uint8)
    try:
        if hasattr(os, "preadv"):
            fd = os.open(path, os.O_RDONLY)
            try:
                pieces = chunks.map_chunks(lambda a, b: _read_piece(fd, out, a, b, start), length, READ_STEP)
            finally:
                os.close(fd)
            got = sum(pieces)
        else:
            got = _read_serially(path, out, start)
    except OSError as exc:
        raise InputError(f"{path}: tensor {name!r}: {exc.strerror or exc}") from None
    if got != length:
        raise InputError(f"{path}: tensor {name!r}: expected {length} bytes at {start}, got {got}")
    return out


def _read_piece(fd: int, out: np.ndarray, begin: int, end: int, start: int) -> int:
    """Bytes read into out[begin:end] from file offset start + begin (fewer only at end of file)."""
    view, got = memoryview(out)[begin:end], 0
    while got < end - begin:
        step = os.preadv(fd, [view[got:]], start + begin + got)
        if not step:
            break
        got += step
    return got


def _read_serially(path: str | Path, out: np.ndarray, start: int) -> int:
    """Where os.preadv is missing (Windows): one handle, one thread."""
    with open(path, "rb", buffering=0) as handle:
        handle.seek(start)
        view, got = memoryview(out), 0
        while got < out.size:
            step = handle.readinto(view[got:])
            if not step:
                break
            got += step
    return got
