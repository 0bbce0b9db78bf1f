"""fp16: values rounded to IEEE half precision (planes hold float16 values, no tables)."""

from __future__ import annotations

import functools
import math

import numpy as np

from ..errors import QuantizationError
from . import kernels
from .base import BAND_BYTES, FP16_MAX, MadeAsRead, Method, take_rows
from .compact import QuantizedTensor
from .chunks import map_chunks, row_step
from .histogram import value_range
from .metrics import TILE_OVERHEAD, tile_count


# Above this many values the estimate reads every stride-th row: a rounding error is a few
# ulps of each value wherever it is, so 1M values measure the relative error within a
# fraction of a percent (VGG16's nine large tensors: 0.38 s at 8M values, 0.07 s at 1M).
SAMPLE_VALUES = 1 << 20


@functools.cache
def _widened() -> np.ndarray:
    """float32 value of every float16 bit pattern."""
    return np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)


def rounded(w: np.ndarray) -> np.ndarray:
    """w.astype(float16), the same bits: by the C loops' F16C pass where built and w is float32
    in one block (13x numpy's cast: VGG16's `fp16` preset spent a third of its pack in it),
    else by numpy (and wherever a value is NaN, whose bits F16C would quiet)."""
    loops = kernels.c_loops()
    if loops is not None and w.dtype == np.float32 and w.flags.c_contiguous:
        out = np.empty(w.shape, np.float16)
        if loops.half_values(w, out, None):
            return out
    return w.astype(np.float16)


def rounding_error(block: np.ndarray) -> np.ndarray:
    """block - block rounded to float16 and back (float32, exact: a float16 rounding drops low
    bits; infinite past float16's range), in one C pass where rounded() has one."""
    loops = kernels.c_loops()
    if loops is not None and block.dtype == np.float32 and block.flags.c_contiguous:
        error = np.empty(block.shape, np.float32)
        if loops.half_values(block, None, error):
            return error
    with np.errstate(over="ignore", invalid="ignore"):
        d = block.astype(np.float16).astype(np.float32)
        np.subtract(block, d, out=d)
    return d


class RoundedLater(MadeAsRead):
    """w rounded to float16 (rounded()) a slice at a time, as it is read: the fp16 values a
    QuantizedTensor holds for the packer. A whole float16 copy was VGG16's largest
    allocation under the `fp16` preset (205 MB for fc1); slices of it are made in cache."""

    dtype = np.dtype(np.float16)

    def __init__(self, w: np.ndarray):
        super().__init__(w)
        self.w = w

    def __getitem__(self, key) -> np.ndarray:
        return rounded(np.ascontiguousarray(self.w[key]))


def _widen(bits: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out (float32, contiguous) = the float16 values of `bits` (uint16, contiguous): by the C
    loops' F16C pass where built, else through the table (every 16-bit pattern has an entry)."""
    loops = kernels.c_loops()
    if loops is None or not loops.widen_half(bits, out):
        take_rows(_widened(), bits, out)
    return out


def _largest(w: np.ndarray) -> float:
    """The largest magnitude of the values: from their range where they are float32 in one
    block (read once already where the packer checked them: histogram.known_range), not from
    a copy of their absolute values."""
    if w.size == 0 or w.dtype != np.float32 or not w.flags.c_contiguous:
        return float(np.abs(w).max(initial=0))
    lo, hi = value_range(w.reshape(-1))
    return max(-lo, hi, 0.0)


class Fp16(Method):
    name = "fp16"
    codes = False
    options = ()
    granular = False

    def storage(self, dtype: str) -> str:
        return "float16"

    def encode(self, name: str, w: np.ndarray, rule) -> QuantizedTensor:
        largest = _largest(w)
        if largest > FP16_MAX:
            raise QuantizationError(f"tensor {name!r}: values exceed the float16 range (±65504); use raw")
        if largest > 0 and np.float16(largest) == 0:  # every value would come back as zero
            raise QuantizationError(
                f"tensor {name!r}: every value is below float16's smallest ({largest:.3g} < 6e-08) "
                "and would be stored as zero; use raw"
            )
        return QuantizedTensor(
            name=name, method=self.name, shape=w.shape, view=w.shape, values=RoundedLater(w)
        )

    def dequantize(self, plane, row0, group_rows, tables, out=None):
        """Widened by the C loops' F16C pass where built (6x the table's speed, numpy's bits
        for every pattern), else through a 65536-entry table (256 KiB, cache-resident): 1.4x
        numpy's cast."""
        if out is None:
            out = np.empty(plane.shape, np.float32)
        bits = np.ascontiguousarray(plane).view(np.uint16)
        if out.flags.c_contiguous:
            return _widen(bits, out)
        band_rows = max(1, BAND_BYTES // (4 * max(1, bits.shape[1])))  # a tile of a wider tensor
        band = np.empty((min(band_rows, bits.shape[0]), bits.shape[1]), np.float32)
        for lo in range(0, bits.shape[0], band_rows):
            hi = min(bits.shape[0], lo + band_rows)
            out[lo:hi] = _widen(bits[lo:hi], band[: hi - lo])
        return out

    def candidates(self, rows: int) -> list[str]:
        return ["fp16"]

    def estimate(self, w, rules, tile, weights=None):
        """(bytes, relative error) of fp16 for the 2-D view `w`: in row chunks on the pool's
        threads (whole-tensor float64 temporaries made VGG16's fc1 take 0.8 GB and seconds),
        on every stride-th row of a tensor above SAMPLE_VALUES (fc1's estimate 0.77 s when
        whole, 0.02 s; the range is checked on every value)."""
        size = 2.0 * w.size + tile_count(w.shape, tile) * TILE_OVERHEAD
        full = None if weights is None else np.broadcast_to(weights, w.shape)
        stride = max(1, w.size // SAMPLE_VALUES)
        lo, hi = value_range(w.reshape(-1))
        largest = max(-lo, hi)
        if largest > FP16_MAX or (largest > 0 and np.float16(largest) == 0):  # encode refuses it
            return [(size, math.inf) for _ in rules]
        if stride > 1:
            w, full = w[::stride], None if full is None else full[::stride]
        rows = w.shape[0]

        def part(r0: int, r1: int) -> tuple[float, float]:
            block = np.ascontiguousarray(w[r0:r1])
            d = rounding_error(block)  # (past fp16's range: an infinite error)
            if full is None:  # summed in float64, cast a buffer at a time (no float64 copies)
                x, d = block.reshape(-1), d.reshape(-1)
                return float(np.einsum("i,i->", x, x, dtype=np.float64)), float(
                    np.einsum("i,i->", d, d, dtype=np.float64)
                )
            x, d = block.astype(np.float64), d.astype(np.float64)
            return float(np.sum(full[r0:r1] * x * x)), float(np.sum(full[r0:r1] * d * d))

        parts = map_chunks(part, rows, row_step(w.shape[1]))
        signal = sum(s for s, _ in parts) or 1.0
        noise = sum(n for _, n in parts)
        return [(size, noise / signal) for _ in rules]
