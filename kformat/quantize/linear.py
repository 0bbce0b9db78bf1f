"""Linear (uniform, asymmetric) codes with a float32 scale and an integer zero point.

The range of each group always includes 0 and the zero point is an integer code, so zero
weights (pruned or not) decode to exactly 0.
"""

from __future__ import annotations

import numpy as np

CHUNK_ELEMENTS = 1 << 22


def quantize_linear(w: np.ndarray, bits: int, group_rows: int):
    """codes (uint8, rows x cols), scale (float32, groups), zero_point (uint8, groups)."""
    rows, cols = w.shape
    levels = (1 << bits) - 1
    groups = (rows + group_rows - 1) // group_rows
    lo = np.empty(groups, dtype=np.float64)
    hi = np.empty(groups, dtype=np.float64)
    for g in range(groups):
        block = w[g * group_rows : (g + 1) * group_rows]
        lo[g] = min(float(block.min()), 0.0)
        hi[g] = max(float(block.max()), 0.0)
    scale = ((hi - lo) / levels).astype(np.float32)
    scale[scale == 0] = 1.0
    zero_point = np.clip(np.round(-lo / scale.astype(np.float64)), 0, levels).astype(np.uint8)
    codes = np.empty((rows, cols), dtype=np.uint8)
    step = max(1, CHUNK_ELEMENTS // max(1, cols))
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        g = np.arange(r0, r1) // group_rows
        q = np.round(w[r0:r1] / scale[g][:, None]) + zero_point[g][:, None].astype(np.float32)
        np.clip(q, 0, levels, out=q)
        codes[r0:r1] = q
    return codes, scale, zero_point
