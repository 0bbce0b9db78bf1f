"""Apply a Rule to one tensor: codes plus tables (kmeans, linear), or values (fp16, raw).

Every tensor is handled through its 2-D view (rows = first axis, cols = the rest; vectors and
scalars are one row), the shape its tiles and groups are cut from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..dequant import dequantize_plane
from ..errors import QuantizationError
from ..recipe import Rule
from . import kmeans
from .linear import quantize_linear
from .metrics import entropy_bits, error_powers, sqnr_db
from .prune import prune_mask

FP16_MAX = float(np.finfo(np.float16).max)
CHUNK_ELEMENTS = 1 << 22


def view_2d(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 0:
        return (1, 1)
    if len(shape) == 1:
        return (1, int(shape[0]))
    rows = int(shape[0])
    cols = int(np.prod(shape[1:], dtype=np.int64))
    return (rows, cols)


@dataclass
class Encoded:
    """A tensor ready to tile: either `codes` with their tables, or `values`."""

    rule: Rule
    view: tuple[int, int]
    group_rows: int = 0
    codes: np.ndarray | None = None  # uint8 (rows, cols)
    values: np.ndarray | None = None  # storage dtype (rows, cols)
    codebook: np.ndarray | None = None  # (groups, 2**bits), codebook dtype
    scale: np.ndarray | None = None  # float32 (groups,)
    zero_point: np.ndarray | None = None  # uint8 (groups,)
    stats: dict = field(default_factory=dict)

    def dequantize_rows(self, row0: int, row1: int) -> np.ndarray:
        """float32 values of rows [row0, row1) of the 2-D view."""
        plane = (self.values if self.codes is None else self.codes)[row0:row1]
        return dequantize_plane(self.rule.method, plane, row0, self.group_rows, codebook=self.codebook,
                                scale=self.scale, zero_point=self.zero_point)


def _check_finite(name: str, values: np.ndarray) -> None:
    flat = values.reshape(-1)
    for start in range(0, flat.size, CHUNK_ELEMENTS):
        chunk = flat[start : start + CHUNK_ELEMENTS]
        finite = np.isfinite(chunk)
        if not finite.all():
            bad = start + int(np.argmin(finite))
            raise QuantizationError(
                f"tensor {name!r}: value {flat[bad]} at flat index {bad} is not finite;"
                " NaN/Inf weights cannot be quantized (store the tensor raw, or fix the model)"
            )


def _group_rows(rule: Rule, rows: int) -> int:
    if rule.granularity == "row":
        return 1
    if rule.granularity == "group":
        return min(int(rule.group_size), rows)
    return rows


def _stored(centroids: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The distinct centroids the codebook dtype can hold, sorted, as float64."""
    return np.unique(centroids.astype(dtype)).astype(np.float64)


def _fit_kmeans_group(block: np.ndarray, mask: np.ndarray | None, rule: Rule, dtype: np.dtype):
    """Sorted centroids (rounded to the storage dtype, at most 2**bits) and cell edges, or
    None for nearest-centroid edges."""
    k = 1 << int(rule.bits)
    source = block if mask is None else block[~mask]
    fixed_zero = mask is not None and mask.any()
    if fixed_zero:
        k -= 1
    edges = None
    if source.size == 0:
        centroids = np.zeros(1)
    else:
        bins = min(kmeans.FINE_BINS, max(1024, source.size // 8))
        thorough = source.size >= kmeans.DP_MAX_POINTS_PER_GROUP
        hist = kmeans.histogram(source, bins)
        centroids = kmeans.fit_centroids(hist, k, thorough)
        if rule.ecq is not None and not fixed_zero:
            centroids, edges = kmeans.fit_entropy_constrained(hist, k, rule.ecq, _stored(centroids, dtype))
    if fixed_zero:
        centroids = np.concatenate([centroids, [0.0]])
    rounded = _stored(centroids, dtype)
    if edges is not None and rounded.size != centroids.size:
        edges = None  # rounding merged centroids: fall back to nearest-centroid cells
    return rounded, edges


def _encode_kmeans(name: str, w: np.ndarray, rule: Rule, mask: np.ndarray | None) -> Encoded:
    rows, cols = w.shape
    bits = int(rule.bits)
    k = 1 << bits
    dtype = np.dtype(rule.codebook_dtype)
    group_rows = _group_rows(rule, rows)
    groups = (rows + group_rows - 1) // group_rows
    codes = np.empty((rows, cols), dtype=np.uint8)
    codebook = np.zeros((groups, k), dtype=dtype)
    counts = np.zeros(k, dtype=np.float64)
    signal = noise = 0.0
    for g in range(groups):
        r0, r1 = g * group_rows, min(rows, (g + 1) * group_rows)
        block = w[r0:r1]
        block_mask = None if mask is None else mask[r0:r1]
        if block_mask is not None:
            block = np.where(block_mask, np.float32(0), block)
        centroids, edges = _fit_kmeans_group(block, block_mask, rule, dtype)
        if dtype == np.float16 and np.abs(centroids).max(initial=0) > FP16_MAX:
            raise QuantizationError(
                f"tensor {name!r}: weights exceed the float16 range; use codebook=float32"
            )
        found = kmeans.assign(block, centroids, edges)
        # Lloyd update on the real values: each code's centroid becomes its cell's exact
        # mean. Pruned zeros keep their centroid at exactly 0.
        used = found.counts > 0
        means = centroids.copy()
        means[used] = found.sums[used] / found.counts[used]
        if block_mask is not None and block_mask.any():
            means[centroids == 0.0] = 0.0
        table = np.sort(means.astype(dtype))
        codebook[g, : table.size] = table
        codebook[g, table.size :] = table[-1]
        codes[r0:r1] = found.codes
        counts[: found.counts.size] += found.counts
        signal += found.sum_squares
        noise += found.squared_error(codebook[g])
    enc = Encoded(rule=rule, view=(rows, cols), group_rows=group_rows, codes=codes, codebook=codebook)
    enc.stats["entropy_bits"] = entropy_bits(counts)
    if mask is None:  # with pruning, the error against the unpruned weights is measured later
        enc.stats["sqnr_db"] = sqnr_db(signal, noise)
    return enc


def _encode_linear(w: np.ndarray, rule: Rule, mask: np.ndarray | None) -> Encoded:
    rows, cols = w.shape
    group_rows = _group_rows(rule, rows)
    if mask is not None:
        w = np.where(mask, np.float32(0), w)
    codes, scale, zero_point = quantize_linear(w, int(rule.bits), group_rows)
    enc = Encoded(
        rule=rule, view=(rows, cols), group_rows=group_rows, codes=codes, scale=scale, zero_point=zero_point
    )
    enc.stats["entropy_bits"] = entropy_bits(np.bincount(codes.reshape(-1), minlength=1 << int(rule.bits)))
    return enc


def encode_tensor(name: str, array: np.ndarray, rule: Rule) -> Encoded:
    """Quantize or convert one tensor by `rule` (the planner has already checked it applies)."""
    view = view_2d(array.shape)
    if rule.method == "raw":
        values = np.ascontiguousarray(array).reshape(view)
        return Encoded(rule=rule, view=view, values=values, stats={"sqnr_db": float("inf")})
    _check_finite(name, array)
    w = np.ascontiguousarray(array, dtype=np.float32 if array.dtype != np.float64 else np.float64).reshape(view)
    if rule.method == "fp16":
        if np.abs(w).max(initial=0) > FP16_MAX:
            raise QuantizationError(f"tensor {name!r}: values exceed the float16 range (±65504); use raw")
        enc = Encoded(rule=rule, view=view, values=w.astype(np.float16))
    else:
        w = w.astype(np.float32, copy=False)
        mask = prune_mask(w, rule.prune, rule.prune_threshold)
        if rule.method == "kmeans":
            enc = _encode_kmeans(name, w, rule, mask)
        else:
            enc = _encode_linear(w, rule, mask)
        if mask is not None:
            enc.stats["pruned"] = int(mask.sum())
    if "sqnr_db" in enc.stats:
        return enc
    signal = noise = 0.0
    step = max(1, CHUNK_ELEMENTS // max(1, view[1]))
    for r0 in range(0, view[0], step):
        s, n = error_powers(w[r0 : r0 + step], enc.dequantize_rows(r0, min(view[0], r0 + step)))
        signal += s
        noise += n
    enc.stats["sqnr_db"] = sqnr_db(signal, noise)
    return enc
