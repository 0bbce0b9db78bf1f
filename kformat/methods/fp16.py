"""fp16: values rounded to IEEE half precision (planes hold float16 values, no tables)."""

from __future__ import annotations

import numpy as np

from ..errors import QuantizationError
from .base import FP16_MAX, Method
from .compact import QuantizedTensor
from .metrics import TILE_OVERHEAD, tile_count


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

    def candidates(self, rows: int) -> list[str]:
        return ["fp16"]

    def estimate(self, w, rules, tile, weights=None):
        full = np.ones(1) if weights is None else np.broadcast_to(weights, w.shape)
        signal = float(np.sum(full * np.square(w, dtype=np.float64))) or 1.0
        d = (w - w.astype(np.float16).astype(np.float32)).astype(np.float64)
        size = 2.0 * w.size + tile_count(w.shape, tile) * TILE_OVERHEAD
        return [(size, float(np.sum(full * d * d)) / signal) for _ in rules]
