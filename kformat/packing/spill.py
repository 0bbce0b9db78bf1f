"""A worker process's tile blobs handed back through a file, not through the result pipe.

A forked worker returns its Encoded through ProcessPoolExecutor's pipe: pickled, then read
by the parent 64 KiB at a time and unpickled, every byte copied twice into fresh memory under
the parent's GIL. On VGG16 that is 40 MB for the tensors beside the long pole, and the pole's
passes, which take the GIL between numpy calls, waited for it: timed apart, a 40 MB-per-
message pipe drained by a thread of the parent made the first FC layer's fit 2-3.5x slower.
So the child writes the blobs to a file of a directory the parent made for the pack (writes
release the GIL) and returns the rest, and the parent maps the file read-only: the blobs are
views of it, written to the output from the page cache. The file is unlinked once mapped; the
directory goes with the pack (a child that dies leaves nothing behind it). Where the
directory or a file cannot be made (a full or read-only temporary directory), the blobs go
through the pipe as before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import mmap
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import StorageError
from .atomic import sweep_stale, temp_prefix
from .encoded import Encoded


SPILL = "kformat-blobs"  # what the pack's directory is a temporary of (atomic.temp_prefix)


class Spill:
    """The pack's directory of blob files, one per tensor a worker process encodes."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        self._count = 0

    @classmethod
    def made(cls) -> "Spill | None":
        """A new directory under the system's temporary one, or None where none can be made.
        It is named as the pack's other temporaries are, with this process's id: directories
        left by packs whose process is gone (killed before it could remove them) are removed
        first (kformat.packing.atomic.sweep_stale)."""
        base = Path(tempfile.gettempdir())
        try:
            sweep_stale(base, SPILL)
            return cls(tempfile.mkdtemp(dir=base, prefix=temp_prefix(base / SPILL)))
        except OSError:
            return None

    def next_path(self) -> str:
        self._count += 1
        return os.path.join(self.dir, f"{self._count}.blobs")

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def spilled(e: Encoded, path: str | None) -> tuple[Encoded, list[int] | None]:
    """In the child: write e's blobs to `path`, one after another; e without them, and their
    lengths. Without a path, or where the file cannot be written (a full disk), e whole and
    None: the pipe."""
    if path is None:
        return e, None
    try:
        with open(path, "wb", buffering=0) as out:
            for blob in e.blobs:
                view = memoryview(blob)
                while view:
                    view = view[out.write(view) :]
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)  # a part written before the disk filled holds no space meanwhile
        return e, None
    return dataclasses.replace(e, blobs=[]), [len(blob) for blob in e.blobs]


def restored(e: Encoded, lengths: list[int] | None, path: str | None) -> Encoded:
    """In the parent: e with its blobs, views of `path` mapped read-only (then unlinked)."""
    if lengths is None:
        return e
    total = sum(lengths)
    try:
        if total == 0:
            return dataclasses.replace(e, blobs=[b"" for _ in lengths])
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if size != total:
                raise ValueError(f"{size} bytes, expected {total}")
            whole = memoryview(mmap.mmap(fd, total, access=mmap.ACCESS_READ))
        finally:
            os.close(fd)
    except (OSError, ValueError) as exc:
        raise StorageError(f"{path}: tensor {e.name!r}: the blobs a worker process wrote: {exc}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
    blobs, start = [], 0
    for length in lengths:
        blobs.append(whole[start : start + length])
        start += length
    return dataclasses.replace(e, blobs=blobs)
