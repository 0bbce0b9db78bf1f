"""A byte range of an input file as an array: mapped from the page cache, or read into a new array.

Mapping is what safetensors does too: the kernel points the array at the file's cached pages,
so a 411 MB tensor (VGG16's first FC layer) is ready in a few milliseconds, where reading it
first has the kernel find, zero and fill 411 MB of fresh pages. In a fresh process on this
VM those pages cost 0.05-1.1 s (host faults), all of it before any worker can start: the
serial head of every pack. The mapping is read-only, and a range past the file's end is an
InputError before anything is mapped (touching a mapped page past the end would kill the
process with SIGBUS; a file truncated by another process while it is packed can still do
that, as with safetensors' own loader). Where mapping fails (a filesystem without it), the
range is read.

A read (read_range) fills fresh pages, which scales over threads: large ranges are split
into READ_STEP pieces read with `os.preadv` (no shared file position, no GIL) on the pool of
kformat.methods.chunks, which the packer sizes by `--jobs`; outside a pack, or at one job,
the caller's thread reads them all. The bytes are the same either way.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..methods import chunks

# Read-only, and not populated: the pages come in at the tensor's first pass (a fault per
# 64 KiB, on whichever threads make it). Populated at once (MAP_POPULATE), a tensor waiting for
# a free worker held all its pages from its read on, and whole packs took the same time
# (paired medians 0.99-1.00x, VGG16 kmeans4 and mobile, BERT-shaped q4, one and two jobs), but
# a one-job pack of six 32 MiB tensors peaked 32 MiB higher (101 MiB above its imports, not
# 69), and populating held the process's memory map, which other threads' allocations wait on.
_READ_ONLY: dict = {"access": mmap.ACCESS_READ}
READ_STEP = 32 << 20  # bytes per piece: few tasks, and a piece per thread for a 64 MB tensor


def map_range(path: str | Path, start: int, length: int, name: str) -> np.ndarray:
    """`length` bytes of `path` from `start`, as a read-only uint8 array over the file's pages
    (faulted in as they are first read); a short file is an InputError as in read_range."""
    if length == 0:
        return np.empty(0, dtype=np.uint8)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise _unreadable(path, name, exc) from None
    try:
        size = os.fstat(fd).st_size
        if start + length > size:
            raise _cut_short(path, name, start, length, max(0, size - start))
        base = start - start % mmap.ALLOCATIONGRANULARITY
        try:
            mapped = mmap.mmap(fd, start + length - base, offset=base, **_READ_ONLY)
        except (OSError, ValueError):
            return read_range(path, start, length, name)
    finally:
        os.close(fd)
    return np.frombuffer(mapped, dtype=np.uint8, count=length, offset=start - base)


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
        raise _unreadable(path, name, exc) from None
    if got != length:
        raise _cut_short(path, name, start, length, got)
    return out


def _unreadable(path: str | Path, name: str, exc: OSError) -> InputError:
    return InputError(f"{path}: tensor {name!r}: {exc.strerror or exc}")


def _cut_short(path: str | Path, name: str, start: int, length: int, got: int) -> InputError:
    return InputError(f"{path}: tensor {name!r}: expected {length} bytes at {start}, got {got}")


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
