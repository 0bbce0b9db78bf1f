"""A tensor's rows divided by their scales, computed where they are read.

`scale=row` fits a codebook to each row divided by its scale. With one codebook for the
tensor (`q8`), dividing the whole of it made a scaled copy as large as the tensor beside it,
once for the histogram and once for the codes: 392 MiB beside VGG16's first FC layer, the
pack's peak 2.3x that tensor. The histogram and the codes read a flat tensor in slices, so a
view that divides each slice as it is taken gives them the same float32 values, a chunk at a
time, without the copy.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np


class ScaledRows:
    """`rows / divisor[:, None]` (float32 rows, a float32 divisor per row) as a flat,
    read-only sequence of float32: `.reshape(-1)` is itself, and a slice (any step) is the
    array of those values, each the float32 quotient the whole division would give."""

    dtype = np.dtype(np.float32)
    ndim = 2
    flags = SimpleNamespace(c_contiguous=True)  # (its slices are made as arrays of their own)

    def __init__(self, rows: np.ndarray, divisor: np.ndarray):
        if rows.dtype != np.float32 or divisor.dtype != np.float32 or rows.ndim != 2:
            raise TypeError("ScaledRows takes float32 rows and a float32 divisor per row")
        self._flat = np.ascontiguousarray(rows).reshape(-1)
        self._divisor = divisor
        self.shape = rows.shape
        self.size = rows.size

    def reshape(self, *shape) -> "ScaledRows":
        if shape not in ((-1,), ((-1,),)):
            raise ValueError("ScaledRows is read flat: reshape(-1) only")
        return self

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError("ScaledRows takes slices")
        start, stop, step = key.indices(self.size)
        if step < 1:
            raise ValueError("ScaledRows takes forward slices")
        cols = self.shape[1]
        if step == 1:  # whole rows divided at once, then the slice of them
            if stop <= start:
                return np.empty(0, dtype=np.float32)
            r0, r1 = start // cols, -(-stop // cols)
            rows = self._flat[r0 * cols : r1 * cols].reshape(r1 - r0, cols) / self._divisor[r0:r1, None]
            return rows.reshape(-1)[start - r0 * cols : stop - r0 * cols]
        picked = self._flat[start:stop:step]  # a sample: only its values are divided
        return picked / self._divisor[np.arange(start, stop, step) // cols]
