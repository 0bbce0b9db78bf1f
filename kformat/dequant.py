"""Codes + tables -> float32 values. The one definition both the writer's statistics and
every reader use, so they can never disagree.

k-means: value = float32(codebook[group(row), code]).
linear:  value = float32(scale[group(row)]) * (float32(code) - float32(zero_point[group(row)])),
         computed in float32 (a code equal to the zero point is exactly 0).
"""

from __future__ import annotations

import numpy as np


TABLES_OF: dict[str, tuple[str, ...]] = {"kmeans": ("codebook",), "linear": ("scale", "zero_point")}
"""The tables each method's codes need (fp16 and raw planes hold values and need none)."""


def dequantize_plane(
    method: str,
    plane: np.ndarray,
    row0: int,
    group_rows: int = 0,
    *,
    codebook: np.ndarray | None = None,
    scale: np.ndarray | None = None,
    zero_point: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """float32 values of a plane whose first row is row `row0` of the tensor's 2-D view:
    codes through their tables (kmeans, linear), or stored values cast (fp16, raw)."""
    if method == "kmeans":
        return dequantize_kmeans(plane, row0, codebook, group_rows, out=out)
    if method == "linear":
        return dequantize_linear(plane, row0, scale, zero_point, group_rows, out=out)
    if out is None:
        return plane.astype(np.float32)
    out[...] = plane
    return out


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
