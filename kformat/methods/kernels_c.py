"""kernels_numba's functions over the C loops of _kernels.c (imported by kernels, never directly).

The same names, arguments and results as kernels_numba, so kernels hands either out; this
side checks what the loops take (float64, int64 and int32 arrays, C order), makes the
outputs, and trims the results the loops count. Loading it costs about a millisecond, where
numba's start took 0.26-0.37 s of one core in every process that asked for the loops.
"""

from __future__ import annotations

import numpy as np

from . import _kernels  # noqa: F401 (ImportError where the extension was not built: kernels falls back)


def _f64(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64)


def _i64(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.int64)


def dp_extend(layer, w, s1, s2, base, sizes, chosen, m_from, m_to, floor, has_floor):
    layer, base = _f64(layer), _i64(base)
    count = max(0, m_to - m_from + 1)
    out = np.empty(layer.size)
    splits = np.zeros((count, layer.size), dtype=np.int64)
    errors = np.full((count, base.size), np.inf)
    sums = (_f64(w), _f64(s1), _f64(s2))
    problems = (base, _i64(sizes), _i64(chosen), int(m_from), int(m_to), _i64(floor), bool(has_floor))
    _kernels.dp_extend(layer, *sums, *problems, out, splits, errors)
    return (out if count else layer), splits, errors


def dp_dense(first, w, s1, s2, k):
    first = _f64(first)
    out = np.empty(first.size)
    splits = np.zeros((max(0, k - 1), first.size), dtype=np.int64)
    ends = np.empty(max(0, k - 1))
    _kernels.dp_dense(first, _f64(w), _f64(s1), _f64(s2), int(k), out, splits, ends)
    return out, splits, ends


def lloyd_iterations(points, w_wp, centroids, iters, tol):
    centroids = _f64(centroids)
    out = np.empty(centroids.size)
    kept = _kernels.lloyd(_f64(points), _f64(w_wp), centroids, int(iters), float(tol), out)
    return out[:kept]


def ec_iterations(points, w_wp, centroids, lengths, lam, iters, tol, total):
    centroids = _f64(centroids)
    out, out_lengths = np.empty(centroids.size), np.empty(centroids.size)
    fit = (_f64(lengths), float(lam), int(iters), float(tol), float(total))
    kept, done, finished = _kernels.ec(_f64(points), _f64(w_wp), centroids, *fit, out, out_lengths)
    return out[:kept], out_lengths[:kept], done, finished


def count_bins(index, bins):
    out = np.zeros(bins, np.int64)
    return out, _kernels.bins(np.ascontiguousarray(index, dtype=np.int32), None, out)


def sum_bins(index, weights, bins):
    out = np.zeros(bins, np.float64)
    return out, _kernels.bins(np.ascontiguousarray(index, dtype=np.int32), _f64(weights), out)


def prefix_sums(points, weights, out):
    if out.dtype != np.float64 or not out.flags.c_contiguous or out.shape != (points.size + 1, 2):
        raise ValueError("prefix_sums: out must be float64, C order, (points + 1, 2)")
    _kernels.prefix_sums(_f64(points), _f64(weights), out)


def top_codes(values, below, inside, out) -> None:
    """kmeans_codes' top-half lookup of float32 values (contiguous) into `out` (uint8)."""
    _kernels.top_codes(values, below, inside, out)


def count_codes(values, edges, out) -> bool:
    """kmeans_codes._count_below of float32 values by float32 edges into `out` (uint8): up to
    16 edges in any order, or 17-255 sorted ones; False (nothing written) for others."""
    return _kernels.count_codes(values, edges, out)


def matvec(bits: int, codes, cols: int, group_rows: int, codebooks, x, y, first: int, stop: int) -> bool:
    """y[first:stop] = W[first:stop] @ x for k-means codes of 4 bits packed two a byte (rows
    starting on a byte) or of 8 bits, a byte each, and a float32 codebook of 2**bits entries
    per group of `group_rows` rows; False (nothing written) where the processor lacks AVX2
    and FMA, or for 8-bit codes AVX-512 (there the bands are faster than gathers)."""
    return _kernels.matvec(
        int(bits), codes, int(cols), int(group_rows), codebooks, x, y, int(first), int(stop)
    )


def lookup(table, indices, out) -> None:
    """out[i] = table[indices[i]]: uint8 indices into 256 entries of 4, 8, 16 or 32 bytes, all
    three C-contiguous, out of the table's dtype and the indices' shape (base.take_rows)."""
    _kernels.lookup(table, indices, out)


def linear_rows(x, cols: int, group_rows: int, first_row: int, scale, zero_point, levels: int, *out) -> None:
    """linear.quantize_linear's rows in one pass, into `out` = (codes, back, counts): codes
    (uint8), back (their float32 values) and counts (int64, added to) of float32 rows x, row r
    in group (first_row + r) // group_rows."""
    codes, back, counts = out
    _kernels.linear_rows(
        x, int(cols), int(group_rows), int(first_row), scale, zero_point, int(levels), codes, back, counts
    )


def bin_floats(values, lo: float, scale: float, out) -> bool:
    """Count float32 values into `out` (int64 bins) by histogram._bin_index's float32 steps:
    (v - lo) * scale, capped at the last bin, truncated; False where one falls outside."""
    return _kernels.bin_floats(values, float(lo), float(scale), out)


def unique_floats(values) -> tuple[np.ndarray, np.ndarray] | None:
    """histogram._unique_counts of float32 values (contiguous): the distinct values ascending
    (float64) and how many of each (int64); None where one is NaN."""
    points, counts = np.empty(values.size), np.empty(values.size, dtype=np.int64)
    found = _kernels.unique_floats(values, points, counts)
    if found < 0:
        return None
    if found == values.size:
        return points, counts
    return points[:found].copy(), counts[:found].copy()  # (the spare room freed, as numpy's are)


def half_values(values, half=None, error=None) -> bool:
    """float32 values (contiguous) rounded to float16 as numpy's astype rounds them: their bits
    into `half` (float16 or uint16) and value - float16 value into `error` (float32), either
    None; False (outputs undefined) without F16C or where a value is NaN."""
    return _kernels.half_values(values, half, error)


def widen_half(half, out) -> bool:
    """float16 values (or their uint16 bits, contiguous) widened into `out` (float32, as many,
    contiguous) with numpy's bits for every pattern, NaNs' included; False (nothing written)
    without F16C."""
    return _kernels.widen_half(half, out)


def set_vectors(level: int) -> int:
    """The widest vectors the C loops may use from now on: 0 none, 1 AVX2, 2 AVX-512 (at most
    what the processor has, which is the level at import); the level now in force. For tests:
    every level gives the same results."""
    return _kernels.set_vectors(int(level))


def warm() -> None:
    """Nothing to load (kernels_numba.warm's twin)."""
