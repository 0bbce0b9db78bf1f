"""fp16: values rounded to IEEE half precision (planes hold float16 values, no tables)."""

from __future__ import annotations

import functools

import numpy as np

from ..errors import QuantizationError
from .base import BAND_BYTES, FP16_MAX, Method
from .compact import QuantizedTensor
from .metrics import TILE_OVERHEAD, tile_count


@functools.cache
def _widened() -> np.ndarray:
    """float32 value of every float16 bit pattern."""
    return np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)


class Fp16(Method):
    name = "fp16"
    codes = False
    options = ()
    granular = False

    def storage(self, dtype: str) -> str:
        return "float16"

    def encode(self, name: str, w: np.ndarray, rule) -> QuantizedTensor:
        if np.abs(w).max(initial=0) > FP16_MAX:
            raise QuantizationError(f"tensor {name!r}: values exceed the float16 range (±65504); use raw")
        return QuantizedTensor(
            name=name, method=self.name, shape=w.shape, view=w.shape, values=w.astype(np.float16)
        )

    def dequantize(self, plane, row0, group_rows, tables, out=None):
        """Widened through a 65536-entry table (256 KiB, cache-resident): 1.4x numpy's cast."""
        if out is None:
            out = np.empty(plane.shape, np.float32)
        bits = np.ascontiguousarray(plane).view(np.uint16)
        if out.flags.c_contiguous:
            np.take(_widened(), bits, out=out, mode="clip")
            return out
        band_rows = max(1, BAND_BYTES // (4 * max(1, bits.shape[1])))  # a tile of a wider tensor
        band = np.empty((min(band_rows, bits.shape[0]), bits.shape[1]), np.float32)
        for lo in range(0, bits.shape[0], band_rows):
            hi = min(bits.shape[0], lo + band_rows)
            np.take(_widened(), bits[lo:hi], out=band[: hi - lo], mode="clip")
            out[lo:hi] = band[: hi - lo]
        return out

    def candidates(self, rows: int) -> list[str]:
        return ["fp16"]

    def estimate(self, w, rules, tile, weights=None):
        full = np.ones(1) if weights is None else np.broadcast_to(weights, w.shape)
        signal = float(np.sum(full * np.square(w, dtype=np.float64))) or 1.0
        d = (w - w.astype(np.float16).astype(np.float32)).astype(np.float64)
        size = 2.0 * w.size + tile_count(w.shape, tile) * TILE_OVERHEAD
        return [(size, float(np.sum(full * d * d)) / signal) for _ in rules]
