"""k-means codebooks: each code stands for one entry of a per-tensor, per-row or per-group
codebook (fp16 by default), fitted by the 1-D k-means of kformat.methods.kmeans_fit.

    value = float32(codebook[group(row), code])
"""

from __future__ import annotations

import numpy as np

from . import kmeans_allocation, kmeans_fit
from .base import Method, TableSpec, group_rows_for, row_groups, take_rows
from .compact import QuantizedTensor
from .kmeans_groups import GroupEncoder


class KMeans(Method):
    name = "kmeans"
    options = ("bits", "group_size", "prune", "prune_threshold", "ecq", "scale")

    weighted = True  # encode takes importance weights (kformat.packing.importance)

    def fit_work(self, view: tuple[int, int], rule) -> float:
        """Row groups times codebook entries, one and a half times over for an entropy-
        constrained fit (its search runs Lloyd a dozen times, on few cells): BERT-base's
        kmeans8, 19,200 units, spent 1.0 s in the numpy loops, its q4 1.7 s for 28,512 (52-60
        us a unit); VGG16's kmeans8, 4,096, 0.27 s. `mobile`'s ecq fits ran 24-27 us per unit
        counted three times over (BERT-shaped 1.5 s, MiniLM-shaped 0.64 s)."""
        groups = -(-view[0] // group_rows_for(rule, view[0]))
        return groups * (1 << int(rule.bits)) * (1.5 if rule.ecq is not None else 1)

    def encode(self, name: str, w: np.ndarray, rule, weights: np.ndarray | None = None) -> QuantizedTensor:
        """`weights` (importance, broadcastable to w) make the fit minimise the weighted error."""
        return GroupEncoder(name, w, rule, weights).whole()

    def group_encoder(self, name: str, w: np.ndarray, rule, weights=None, codes=None) -> GroupEncoder | None:
        """The encode as work over row groups that may run apart (kformat.methods.kmeans_groups),
        its codes written into `codes`; None where they may not (pruning)."""
        encoder = GroupEncoder(name, w, rule, weights, codes)
        return encoder if encoder.divisible else None

    def table_specs(self, quant, rows: int) -> list[TableSpec]:
        groups = -(-rows // quant.group_rows)
        specs = [TableSpec("codebook", (groups, 1 << quant.bits), ("float16", "float32"))]
        if quant.table("scale") is not None:  # scale=row: value = codebook entry x the row's scale
            specs.append(TableSpec("scale", (rows,), ("float16", "float32")))
        return specs

    def dequantize(self, plane, row0, group_rows, tables, out=None):
        table = tables["codebook"].astype(np.float32, copy=False)
        rows = plane.shape[0]
        if out is None:
            out = np.empty(plane.shape, np.float32)
        first, last = row0 // group_rows, (row0 + rows - 1) // group_rows
        if first == last:  # codes are below 2**bits, the codebook's width: every index is valid
            take_rows(table[first], plane, out)
        else:
            index = row_groups(row0, rows, group_rows)[:, None] * table.shape[1] + plane
            take_rows(table.reshape(-1), index, out)
        return _scaled(out, row0, tables)

    def finish_lookup(self, values, row0, tables):
        return _scaled(values, row0, tables)

    def code_values(self, tables, group, entries):
        return tables["codebook"][group].astype(np.float32)

    # -- bit allocation ------------------------------------------------------------------
    def warm(self, problems) -> None:
        kmeans_allocation.warm(problems)

    def candidates(self, rows: int) -> list[str]:
        return kmeans_allocation.candidates(rows)

    def estimate(self, w, rules, tile, weights=None):
        return kmeans_allocation.estimate(w, rules, tile, weights)

    def summarize(self, w, rules, tile, weights=None, name=None):
        return kmeans_allocation.summarize(w, rules, tile, weights, name)

    def estimate_from(self, items):
        with kmeans_fit.remembered_seeds():  # handed back: the chosen rule's encode finds its seed
            kmeans_allocation.warm_summaries(items)
            estimates = [kmeans_allocation.estimate_summary(summary, rules) for summary, rules in items]
            return estimates, kmeans_fit.seeds_kept()

    def reuse(self, shared) -> None:
        kmeans_fit.keep_seeds(shared)


def _scaled(values: np.ndarray, row0: int, tables) -> np.ndarray:
    """Rows multiplied by their scale, in place, when the tensor has one (scale=row)."""
    scale = tables.get("scale")
    if scale is not None:
        rows = values.shape[0]
        values *= scale[row0 : row0 + rows].astype(np.float32)[:, None]
    return values
