"""Linear (uniform, asymmetric) codes with a float32 scale and an integer zero point.

The range of each group always includes 0 and the zero point is an integer code, so zero
weights (pruned or not) decode to exactly 0.
"""

from __future__ import annotations

import numpy as np

from ..errors import DecodeError
from .base import Method, TableSpec, group_rows_for, row_groups
from .compact import QuantizedTensor
from .metrics import entropy_bits
from .chunks import code_counts, map_chunks
from .histogram import value_range
from .prune import prune_mask

CHUNK_ELEMENTS = 1 << 22


def quantize_linear(w: np.ndarray, bits: int, group_rows: int):
    """codes (uint8, rows x cols), scale (float32, groups), zero_point (uint8, groups)."""
    rows, cols = w.shape
    levels = (1 << bits) - 1
    groups = (rows + group_rows - 1) // group_rows
    lo = np.empty(groups, dtype=np.float64)
    hi = np.empty(groups, dtype=np.float64)
    for g in range(groups):
        block_lo, block_hi = value_range(w[g * group_rows : (g + 1) * group_rows].reshape(-1))
        lo[g] = min(block_lo, 0.0)
        hi[g] = max(block_hi, 0.0)
    scale = ((hi - lo) / levels).astype(np.float32)
    scale[scale == 0] = 1.0
    zero_point = np.clip(np.round(-lo / scale.astype(np.float64)), 0, levels).astype(np.uint8)
    codes = np.empty((rows, cols), dtype=np.uint8)

    def rows_of(r0: int, r1: int) -> None:
        g = np.arange(r0, r1) // group_rows
        q = np.round(w[r0:r1] / scale[g][:, None]) + zero_point[g][:, None].astype(np.float32)
        np.clip(q, 0, levels, out=q)
        codes[r0:r1] = q

    map_chunks(rows_of, rows, max(1, CHUNK_ELEMENTS // max(1, cols)))
    return codes, scale, zero_point


class Linear(Method):
    """Uniform codes per tensor, row or group: value = scale * (code - zero_point), in float32
    (a code equal to the zero point is exactly 0)."""

    name = "linear"

    def encode(self, name: str, w: np.ndarray, rule) -> QuantizedTensor:
        w = w.astype(np.float32, copy=False)
        rows, cols = w.shape
        bits = int(rule.bits)
        group_rows = group_rows_for(rule, rows)
        mask = prune_mask(w, rule.prune, rule.prune_threshold)
        if mask is not None:
            w = np.where(mask, np.float32(0), w)
        codes, scale, zero_point = quantize_linear(w, bits, group_rows)
        stats = {"entropy_bits": entropy_bits(code_counts(codes, 1 << bits))}
        if mask is not None:
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
