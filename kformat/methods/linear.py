"""Linear (uniform, asymmetric) codes with a float32 scale and an integer zero point.

The range of each group always includes 0 and the zero point is an integer code, so zero
weights (pruned or not) decode to exactly 0.
"""

from __future__ import annotations

import numpy as np

from ..errors import DecodeError
from .base import Method, TableSpec, group_rows_for, row_groups
from .compact import QuantizedTensor
from .metrics import entropy_bits, error_powers, sqnr_db
from . import kernels
from .chunks import map_chunks, row_step
from .histogram import value_range
from .prune import prune_mask

CHUNK_ELEMENTS = 1 << 22


# With importance, each group's range is shrunk by the factor of this grid that minimises the
# importance-weighted error (clipping a few large, unimportant weights buys resolution for the
# important ones; AWQ and HQQ search their clipping the same way). 1.0 is the min/max range.
CLIP_FACTORS = tuple(1.0 - 0.03 * i for i in range(16))  # 1.0 down to 0.55
CLIP_FACTORS_WIDE = CLIP_FACTORS[:6]  # 6 bits and more: clipping rarely pays beyond 0.85


def _scale_zero(lo: np.ndarray, hi: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    scale = ((hi - lo) / levels).astype(np.float32)
    scale[scale == 0] = 1.0
    zero_point = np.clip(np.round(-lo / scale.astype(np.float64)), 0, levels).astype(np.uint8)
    return scale, zero_point


def _linear_codes(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, levels: int) -> np.ndarray:
    """float32 codes of rows `x` under per-row `scale` and `zero_point` (both (rows, 1))."""
    q = np.divide(x, scale, dtype=np.float32)
    np.round(q, out=q)
    q += zero_point.astype(np.float32)
    return np.clip(q, 0, levels, out=q)


def _clip_search(w, weights, lo, hi, levels: int, group_rows: int, factors) -> np.ndarray:
    """Per group, the factor of `factors` whose range (lo, hi) x factor has the least
    importance-weighted squared error; errors summed in float64 chunk by chunk, in order."""
    rows, cols = w.shape
    full = np.broadcast_to(weights, w.shape)
    groups = lo.size
    tables = [_scale_zero(lo * f, hi * f, levels) for f in factors]

    def errors(r0: int, r1: int) -> np.ndarray:
        g = np.arange(r0, r1) // group_rows
        x, wt = w[r0:r1], full[r0:r1]
        out = np.zeros((len(factors), groups))
        for i, (scale, zero) in enumerate(tables):
            s, z = scale[g][:, None], zero[g][:, None]
            back = (_linear_codes(x, s, z, levels) - z.astype(np.float32)) * s
            per_row = np.einsum("ij,ij->i", wt, np.square(x - back, dtype=np.float64))
            out[i] = np.bincount(g, weights=per_row, minlength=groups)
        return out

    total = np.zeros((len(factors), groups))
    for part in map_chunks(errors, rows, row_step(cols, CHUNK_ELEMENTS // 4)):
        total += part
    return np.asarray(factors)[np.argmin(total, axis=0)]  # ties keep the wider range


def _ranges(w: np.ndarray, group_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Each group's (min, max), widened to include 0; per row in vectorised row chunks."""
    rows, cols = w.shape
    if group_rows == 1:
        step = row_step(cols, CHUNK_ELEMENTS)
        parts = map_chunks(lambda r0, r1: (w[r0:r1].min(axis=1), w[r0:r1].max(axis=1)), rows, step)
        lo = np.concatenate([p[0] for p in parts]).astype(np.float64)
        hi = np.concatenate([p[1] for p in parts]).astype(np.float64)
    else:
        spans = [value_range(w[r : r + group_rows].reshape(-1)) for r in range(0, rows, group_rows)]
        lo, hi = np.array([a for a, _ in spans]), np.array([b for _, b in spans])
    return np.minimum(lo, 0.0), np.maximum(hi, 0.0)


def quantize_linear(w: np.ndarray, bits: int, group_rows: int, weights: np.ndarray | None = None):
    """codes (uint8, rows x cols), scale (float32, groups), zero_point (uint8, groups), code
    counts, and (sum w^2, sum (w - dequantized)^2) measured while the codes are made.

    `weights` (importance, broadcastable to w): each group's range is clipped where that
    lowers the weighted error (CLIP_FACTORS)."""
    rows, cols = w.shape
    levels = (1 << bits) - 1
    lo, hi = _ranges(w, group_rows)
    if weights is not None:
        factors = CLIP_FACTORS if bits < 6 else CLIP_FACTORS_WIDE
        best = _clip_search(w, weights, lo, hi, levels, group_rows, factors)
        lo, hi = lo * best, hi * best
    scale, zero_point = _scale_zero(lo, hi, levels)
    codes = np.empty((rows, cols), dtype=np.uint8)
    in_c = kernels.c_loops() if w.dtype == np.float32 and w.flags.c_contiguous else None
    zeros = zero_point.astype(np.float32)

    def rows_in_c(r0: int, r1: int):
        """rows_of in one pass of the C loops: the same codes, back and counts."""
        back = np.empty((r1 - r0, cols), dtype=np.float32)
        counts = np.zeros(levels + 1, dtype=np.int64)
        in_c.linear_rows(w[r0:r1], cols, group_rows, r0, scale, zeros, levels, codes[r0:r1], back, counts)
        return counts, error_powers(w[r0:r1], back)

    def rows_of(r0: int, r1: int):
        g = np.arange(r0, r1) // group_rows
        s, z = scale[g][:, None], zero_point[g][:, None].astype(np.float32)
        q = _linear_codes(w[r0:r1], s, z, levels)
        codes[r0:r1] = q
        back = np.subtract(q, z, out=q)  # what dequantize gives, in float32
        back *= s
        return np.bincount(codes[r0:r1].reshape(-1), minlength=levels + 1), error_powers(w[r0:r1], back)

    parts = map_chunks(rows_of if in_c is None else rows_in_c, rows, row_step(cols))  # chunks in cache
    counts = sum(c for c, _ in parts)
    powers = (sum(p[0] for _, p in parts), sum(p[1] for _, p in parts))
    return codes, scale, zero_point, counts, powers


class Linear(Method):
    """Uniform codes per tensor, row or group: value = scale * (code - zero_point), in float32
    (a code equal to the zero point is exactly 0)."""

    name = "linear"
    weighted = True  # with importance, each group's range is clipped to the least weighted error

    def encode(self, name: str, w: np.ndarray, rule, weights: np.ndarray | None = None) -> QuantizedTensor:
        w = w.astype(np.float32, copy=False)
        rows, cols = w.shape
        bits = int(rule.bits)
        group_rows = group_rows_for(rule, rows)
        mask = prune_mask(w, rule.prune, rule.prune_threshold)
        if mask is not None:
            w = np.where(mask, np.float32(0), w)
        codes, scale, zero_point, counts, (signal, noise) = quantize_linear(w, bits, group_rows, weights)
        stats = {"entropy_bits": entropy_bits(counts)}
        if mask is None:
            stats["sqnr_db"] = sqnr_db(signal, noise)
        else:  # measured later, against the unpruned weights
            stats["pruned"] = int(mask.sum())
        return QuantizedTensor(
            name=name,
            method=self.name,
            shape=w.shape,
            view=(rows, cols),
            bits=bits,
            group_rows=group_rows,
            codes=codes,
            tables={"scale": scale, "zero_point": zero_point},
            stats=stats,
        )

    def table_specs(self, quant, rows: int) -> list[TableSpec]:
        groups = -(-rows // quant.group_rows)
        return [TableSpec("scale", (groups,), ("float32",)), TableSpec("zero_point", (groups,), ("uint8",))]

    def check_table(self, name: str, table: np.ndarray) -> None:
        super().check_table(name, table)
        if name.endswith("scale") and table.size:
            largest = np.abs(table.astype(np.float32)).max()
            with np.errstate(over="ignore"):  # codes times scale must stay finite, in float32
                worst = largest * np.float32(255)
            if not np.isfinite(worst):
                raise DecodeError(f"{name} {float(largest):g} overflows float32")

    def code_values(self, tables, group, entries):
        # the same float32 operations as dequantize, on every code at once
        codes = np.arange(entries, dtype=np.uint8)
        values = np.subtract(codes, np.float32(tables["zero_point"][group]), dtype=np.float32)
        return np.multiply(values, tables["scale"].astype(np.float32, copy=False)[group])

    def dequantize(self, plane, row0, group_rows, tables, out=None):
        groups = row_groups(row0, plane.shape[0], group_rows)
        s = tables["scale"].astype(np.float32, copy=False)[groups][:, None]
        z = tables["zero_point"].astype(np.float32)[groups][:, None]
        if out is None:
            out = np.empty(plane.shape, dtype=np.float32)
        np.subtract(plane, z, out=out, dtype=np.float32)
        np.multiply(out, s, out=out)
        return out
