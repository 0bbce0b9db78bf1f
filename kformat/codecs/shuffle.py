"""Byte shuffling of value planes: all first bytes of the elements, then all second bytes...

The sign/exponent bytes of floats then compress well, while the noisy low mantissa bytes no
longer get in their way (the zstd codec shuffles value planes before compressing)."""

from __future__ import annotations

import numpy as np

from .base import little_endian


def shuffle_bytes(values: np.ndarray) -> bytes:
    """Element bytes grouped by position: b0 of every element, then b1, ..."""
    values = little_endian(values)
    size = values.dtype.itemsize
    if size == 1:
        return values.tobytes()
    return values.reshape(-1).view(np.uint8).reshape(-1, size).T.tobytes()


def unshuffle_bytes(raw: bytes, rows: int, cols: int, dtype: np.dtype) -> np.ndarray:
    dtype = np.dtype(dtype).newbyteorder("<")
    size = dtype.itemsize
    planes = np.frombuffer(raw, dtype=np.uint8)
    if size > 1:
        planes = np.ascontiguousarray(planes.reshape(size, -1).T)
    return planes.view(dtype).reshape(rows, cols)
