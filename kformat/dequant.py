"""Codes + tables -> float32 values. The one definition both the writer's statistics and
every reader use, so they can never disagree.

k-means: value = float32(codebook[group(row), code]).
linear:  value = float32(scale[group(row)]) * (float32(code) - float32(zero_point[group(row)])),
         computed in float32 (a code equal to the zero point is exactly 0).
"""

from __future__ import annotations

import numpy as np


def row_groups(row0: int, rows: int, group_rows: int) -> np.ndarray:
    return (np.arange(row0, row0 + rows, dtype=np.int64) // group_rows)


def dequantize_kmeans(
    codes: np.ndarray, row0: int, codebook: np.ndarray, group_rows: int, out: np.ndarray | None = None
) -> np.ndarray:
    table = codebook.astype(np.float32, copy=False)
    rows = codes.shape[0]
    first, last = row0 // group_rows, (row0 + rows - 1) // group_rows
    if first == last:
        return np.take(table[first], codes, out=out)
    k = table.shape[1]
    index = row_groups(row0, rows, group_rows)[:, None] * k + codes
    return np.take(table.reshape(-1), index, out=out)


def dequantize_linear(
    codes: np.ndarray,
    row0: int,
    scale: np.ndarray,
    zero_point: np.ndarray,
    group_rows: int,
    out: np.ndarray | None = None,
) -> np.ndarray:
    groups = row_groups(row0, codes.shape[0], group_rows)
    s = scale.astype(np.float32, copy=False)[groups][:, None]
    z = zero_point.astype(np.float32)[groups][:, None]
    if out is None:
        out = np.empty(codes.shape, dtype=np.float32)
    np.subtract(codes, z, out=out, dtype=np.float32)
    np.multiply(out, s, out=out)
    return out
