"""The compact form of a tensor, shared by both journeys: codes or values plus tables.

The writer gets one from a method's `encode` and cuts it into tiles; the loader builds one
from a file without ever making float32 (`LazyTensor.quantized()`), and `kformat.torch` keeps
Linear layers in it. Dequantizing always goes through the tensor's method.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..codecs.bitpack import unpack_rows
from ..errors import InputError
from .base import Take, take_rows
from .registry import get_method

BAND_BYTES = 4 << 20


def rows_per_band(cols: int, budget: int = BAND_BYTES) -> int:
    """Rows per band so that one float32 band takes about `budget` bytes."""
    return max(1, budget // max(1, 4 * cols))


def as_columns(x, cols: int, name: str) -> tuple[np.ndarray, bool]:
    """x as a 2-D (cols, n) array, and whether it was a vector."""
    x = np.asarray(x)
    if x.ndim not in (1, 2):
        raise InputError(f"tensor {name!r}: matmul takes a 1-D or 2-D array, got {x.ndim}-D {x.shape}")
    if x.shape[0] != cols:
        raise InputError(
            f"tensor {name!r}: matmul needs x with {cols} rows (the weight's 2-D view has {cols} columns),"
            f" got shape {x.shape}"
        )
    return (x[:, None] if x.ndim == 1 else x), x.ndim == 1


@dataclass(frozen=True)
class QuantizedTensor:
    """A tensor in its compact stored form: codes plus tables, or values.

    `codes` is the 2-D view of uint8 codes, or with `packed` the rows bit-packed at `depth`
    bits (most significant first, each row starting on a byte). Nothing here is float32 until
    `dequantize()` or `matmul()` asks for it, and those work one band of rows at a time.
    """

    name: str
    method: str
    shape: tuple[int, ...]
    view: tuple[int, int]
    bits: int | None = None
    depth: int | None = None
    group_rows: int = 0
    packed: bool = False
    # From the packer's encodes, codes and values may be array-likes whose slices are made
    # as they are read (base.MadeAsRead: a per-tensor codebook's codes, fp16's values).
    codes: np.ndarray | None = None
    values: np.ndarray | None = None  # (rows, cols) in the method's storage dtype
    tables: dict[str, np.ndarray] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    # From encode, never stored: each row group's cell edges (groups, 2**bits - 1), in the
    # units of the codebook, where codes were not rounded to the nearest entry (entropy-
    # constrained fits; NaN rows: nearest), so that codes chosen again follow the same cells.
    edges: np.ndarray | None = None

    @property
    def codebook(self) -> np.ndarray | None:
        return self.tables.get("codebook")

    @property
    def scale(self) -> np.ndarray | None:
        return self.tables.get("scale")

    @property
    def zero_point(self) -> np.ndarray | None:
        return self.tables.get("zero_point")

    @property
    def plane(self) -> np.ndarray:
        """What tiles are cut from: the codes or the values."""
        return self.values if self.codes is None else self.codes

    @property
    def nbytes(self) -> int:
        arrays = (self.codes, self.values, *self.tables.values())
        return sum(a.nbytes for a in arrays if a is not None)

    @property
    def dtype(self) -> np.dtype:
        """What dequantize() returns: float32, or the source dtype for lossless methods."""
        return self.values.dtype if get_method(self.method).lossless else np.dtype(np.float32)

    def rows(
        self, start: int, stop: int, out: np.ndarray | None = None, take: Take = take_rows
    ) -> np.ndarray:
        """Dequantized rows [start, stop) of the 2-D view (`take`: the gather of whole-byte
        lookups, see Method.dequantize_packed)."""
        method = get_method(self.method)
        if method.lossless:
            return self.values[start:stop]
        plane = self.plane[start:stop]
        if self.packed and self.bits == self.depth:  # every code valid: whole bytes through a table
            cols, tables = self.view[1], self.tables
            return method.dequantize_packed(
                plane, self.depth, cols, start, self.group_rows, tables, out, take
            )
        if self.packed:
            plane = unpack_rows(plane, self.view[1], self.depth)
        return method.dequantize(plane, start, self.group_rows, self.tables, out=out)

    def dequantize(self) -> np.ndarray:
        rows, cols = self.view
        out = np.empty((rows, cols), dtype=self.dtype)
        step = rows_per_band(cols)
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            out[r0:r1] = self.rows(r0, r1)
        return out.reshape(self.shape)

    def matmul(self, x, band_rows: int | None = None, take: Take = take_rows) -> np.ndarray:
        """W @ x over the 2-D view, one band of rows dequantized into a reused buffer."""
        rows, cols = self.view
        x2, vector = as_columns(x, cols, self.name)
        out = np.empty((rows, x2.shape[1]), dtype=np.result_type(self.dtype, x2.dtype))
        step = band_rows or rows_per_band(cols)
        lossless = get_method(self.method).lossless
        buffer = None if lossless else np.empty((min(step, rows), cols), dtype=np.float32)
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            w = self.rows(r0, r1, None if buffer is None else buffer[: r1 - r0], take)
            np.matmul(w, x2, out=out[r0:r1])
        return out[:, 0] if vector else out
