"""Output arrays with pages of their own, outside the C heap.

glibc raises its mmap threshold each time a mapped block is freed (up to 32 MiB), so after a
first load has freed its outputs, a second load's outputs under 32 MiB (VGG16's conv layers,
2-9 MB each) come from the heap, between the tile buffers, and the heap fragments: a VGG16
`mobile` load's overhead above its output was 22-27 MiB the first time and 46-56 MiB the
times after, in one process. Tensors of MAPPED_ABOVE bytes or more are therefore given an
anonymous private mapping of their own (huge pages advised, as numpy does for large arrays),
unmapped when the array goes; they never touch the heap or its thresholds. Where mmap has no
MAP_ANONYMOUS (Windows) numpy allocates them as usual.
"""

from __future__ import annotations

import math
import mmap

import numpy as np

MAPPED_ABOVE = 1 << 20  # bytes

_FLAGS = (
    mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    if hasattr(mmap, "MAP_PRIVATE") and hasattr(mmap, "MAP_ANONYMOUS")
    else None
)


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
    if hasattr(mmap, "MADV_HUGEPAGE"):
        pages.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(pages, dtype=dtype, count=count).reshape(shape)
