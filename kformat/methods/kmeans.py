"""k-means codebooks: each code stands for one entry of a per-tensor, per-row or per-group
codebook (fp16 by default), fitted by the 1-D k-means of kformat.methods.kmeans_fit.

    value = float32(codebook[group(row), code])
"""

from __future__ import annotations

import numpy as np

from ..errors import QuantizationError
from . import kmeans_allocation, kmeans_codes, kmeans_fit
from .base import FP16_MAX, FP16_NORMAL, Method, TableSpec, group_rows_for, row_groups, take_rows
from .chunks import map_chunks, spans as chunk_spans
from .compact import QuantizedTensor
from .histogram import EXACT_POINTS, FINE_BINS
from .metrics import entropy_bits, sqnr_db
from .prune import prune_mask
from .scaled_rows import ScaledRows


def _fit_group(hist, k: int, fixed_zero: bool, seed, rule, dtype: np.dtype):
    """Sorted centroids (rounded to the storage dtype, at most 2**bits) and cell edges, or
    None for nearest-centroid edges."""
    edges = None
    if hist is None:
        centroids = np.zeros(1)
    else:
        centroids = kmeans_fit.fit_centroids(hist, k, thorough=False, seed=seed)
        if rule.ecq is not None and not fixed_zero:
            centroids, edges = kmeans_fit.fit_entropy_constrained(
                hist, k, rule.ecq, kmeans_fit.stored_centroids(centroids, dtype)
            )
    if fixed_zero:
        centroids = np.concatenate([centroids, [0.0]])
    rounded = kmeans_fit.stored_centroids(centroids, dtype)
    if edges is not None and rounded.size != centroids.size:
        edges = None  # rounding merged centroids: fall back to nearest-centroid cells
    return rounded, edges


HISTOGRAMS_AT_ONCE = 32 << 20  # bytes of group histograms held at a time (group_batches)
SCALED_IN_PLACE = 1 << 22  # values of a scale=row group from which it is divided as read (ScaledRows)


def group_batches(groups: int, group_values: int) -> list[tuple[int, int]]:
    """Runs of consecutive groups whose histograms are made, seeded and used together, then
    dropped. A group's histogram holds a float64 point and count per distinct value (up to
    EXACT_POINTS of them) or per fine bin, and its merged copies about as much again (32
    bytes a point, counted): all of a tensor's at once were 4x the tensor for BERT-base's
    word embedding under q4 (358 MiB for 89), the pack's peak 6.9x its largest tensor. A
    group's seed and fit depend on its own histogram alone: the same codebooks. Batches of
    this size also ran faster than batches of twice it (q4 at two jobs: 0.92-0.96x the time),
    their histograms used while still in cache."""
    held = 32 * max(1, min(group_values, max(EXACT_POINTS, FINE_BINS)))
    per_batch = max(1, HISTOGRAMS_AT_ONCE // held)
    return [(first, min(groups, first + per_batch)) for first in range(0, groups, per_batch)]


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

    def encode(
        self, name: str, w: np.ndarray, rule, weights: np.ndarray | None = None, *, divisor=None
    ) -> QuantizedTensor:
        """`weights` (importance, broadcastable to w) make the fit minimise the weighted error.
        With `divisor` (float32, one per row) the codebooks are fitted to w's rows divided by
        it, a group at a time (scale=row without a scaled copy of the whole tensor)."""
        w = w.astype(np.float32, copy=False)
        if rule.scale == "row":
            return _encode_scaled(self, name, w, rule, weights)
        rows, cols = w.shape
        bits = int(rule.bits)
        k = 1 << bits
        dtype = np.dtype(rule.codebook_dtype)
        mask = prune_mask(w, rule.prune, rule.prune_threshold)
        group_rows = group_rows_for(rule, rows)
        groups = (rows + group_rows - 1) // group_rows
        codes = np.empty((rows, cols), dtype=np.uint8)
        codebook = np.zeros((groups, k), dtype=dtype)
        cell_edges = np.full((groups, k - 1), np.nan) if rule.ecq is not None else None
        spans = chunk_spans(rows, group_rows)  # each group's (first row, stop)

        def group_weights(r0, r1):
            return kmeans_fit.rows_of(weights, r0, r1, rows)

        def source(r0, r1):
            if divisor is None:
                return w[r0:r1]
            if weights is None and mask is None and (r1 - r0) * cols >= SCALED_IN_PLACE:  # (read in slices)
                return ScaledRows(w[r0:r1], divisor[r0:r1])
            return w[r0:r1] / divisor[r0:r1, None]

        def each_group(fn, first: int, stop: int):
            """[fn(g) for g in first..stop], groups spread over the chunk pool's threads (a
            group's own passes then run inline; one group keeps them on the pool)."""
            runs = map_chunks(lambda a, b: [fn(g) for g in range(first + a, first + b)], stop - first, 1)
            return [result for run in runs for result in run]

        def fit_source(g):
            r0, r1 = spans[g]
            block_mask = None if mask is None else mask[r0:r1]
            if groups == 1 and mask is None and divisor is None:  # weighed already (allocation)?
                hist = kmeans_fit.remembered_histogram(
                    kmeans_allocation.whole_key(name, weights is not None, w.shape)
                )
                if hist is not None and hist.points.size:
                    return hist, k, False
            return kmeans_fit.group_source(source(r0, r1), block_mask, k, group_weights(r0, r1))

        def seeds_of(fits: dict) -> dict:
            """Every group's codebook is seeded by the exact optimum of 1-D k-means (one batched
            dynamic programme for the groups given), then polished by Lloyd: within 0.1 dB of
            the optimum at every width; Lloyd alone ends 1-11 dB short at 8 bits or on outliers."""
            seeded = {}
            for entries in {e for _, e, _ in fits.values()}:  # k, or k - 1 where pruning keeps a zero
                batch = [
                    g for g, (h, e, _) in fits.items() if e == entries and h is not None and h.points.size > e
                ]
                seeded.update(zip(batch, kmeans_fit.seeds([fits[g][0] for g in batch], entries)))
            return seeded

        def code_group(g, fit, seed):
            """Fit group g's codebook, write its codes and table; (counts, power, noise)."""
            r0, r1 = spans[g]
            block = source(r0, r1)
            block_mask = None if mask is None else mask[r0:r1]
            if block_mask is not None:
                block = np.where(block_mask, np.float32(0), block)
            hist, entries, fixed_zero = fit
            centroids, edges = _fit_group(hist, entries, fixed_zero, seed, rule, dtype)
            if edges is not None and cell_edges is not None and edges.size == k - 1:
                cell_edges[g] = edges
            if dtype == np.float16 and np.abs(centroids).max(initial=0) > FP16_MAX:
                raise QuantizationError(
                    f"tensor {name!r}: weights exceed the float16 range; use codebook=float32"
                )
            if weights is None and block_mask is None and hist is not None:
                found = kmeans_codes.assign_binned(block, hist, centroids, edges, out=codes[r0:r1])
            else:
                span = None if hist is None or block_mask is not None else (hist.lo, hist.hi)
                found = kmeans_codes.assign(block, centroids, edges, span, out=codes[r0:r1])
            # Lloyd update: each code's centroid becomes its cell's mean (exact, or from the
            # fine histogram for large unweighted blocks). Pruned zeros keep their centroid at 0.
            used = found.counts > 0
            means = centroids.copy()
            if weights is None:
                means[used] = found.sums[used] / found.counts[used]
            else:  # the importance-weighted mean of each cell
                gw = np.broadcast_to(group_weights(r0, r1), block.shape).reshape(-1)
                codes_flat = found.codes.reshape(-1)
                total = np.bincount(codes_flat, gw, minlength=centroids.size)
                moment = np.bincount(codes_flat, gw * block.reshape(-1), minlength=centroids.size)
                used = total > 0
                means[used] = moment[used] / total[used]
            if block_mask is not None and block_mask.any():
                means[centroids == 0.0] = 0.0
            table = np.sort(means.astype(dtype))
            codebook[g, : table.size] = table
            codebook[g, table.size :] = table[-1]
            return found.counts, found.sum_squares, found.squared_error(codebook[g])

        results = []
        for first, stop in group_batches(groups, group_rows * cols):  # histograms of a batch at a time
            fits = dict(zip(range(first, stop), each_group(fit_source, first, stop)))
            seeded = seeds_of(fits)
            results += each_group(lambda g: code_group(g, fits[g], seeded.get(g)), first, stop)
        counts = np.zeros(k, dtype=np.float64)
        signal = noise = 0.0
        for group_counts, group_signal, group_noise in results:  # summed in group order
            counts[: group_counts.size] += group_counts
            signal += group_signal
            noise += group_noise
        if dtype == np.float16 and signal > 0 and np.abs(codebook).max() < FP16_NORMAL:
            raise QuantizationError(
                f"tensor {name!r}: weights below float16's normal range (largest codebook entry "
                f"{float(np.abs(codebook).max()):.3g}, smallest normal {FP16_NORMAL:.3g}) lose their "
                "precision or vanish in a float16 codebook; use codebook=float32"
            )
        stats = {"entropy_bits": entropy_bits(counts)}
        if mask is None:  # with pruning, the error against the unpruned weights is measured later
            stats["sqnr_db"] = sqnr_db(signal, noise)
        else:
            stats["pruned"] = int(mask.sum())
        return QuantizedTensor(
            name=name,
            method=self.name,
            shape=w.shape,
            view=(rows, cols),
            bits=bits,
            group_rows=group_rows,
            codes=codes,
            tables={"codebook": codebook},
            stats=stats,
            edges=cell_edges,
        )

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


def row_scales(w: np.ndarray) -> np.ndarray:
    """Each row's RMS as float16 (1 for all-zero rows), what scale=row divides rows by so that
    rows of very different ranges share one codebook."""
    rms = np.sqrt(np.einsum("ij,ij->i", w, w, dtype=np.float64) / max(1, w.shape[1]))
    tiny = float(np.finfo(np.float16).tiny)
    rms = np.where(rms > tiny, np.minimum(rms, FP16_MAX), 1.0)
    return rms.astype(np.float16)


def _encode_scaled(method: KMeans, name: str, w: np.ndarray, rule, weights=None) -> QuantizedTensor:
    """scale=row: divide each row by its float16 scale, fit the codebooks to the scaled rows,
    and keep the scales as a table; SQNR is measured against the unscaled weights. With
    importance, a scaled row's error counts scale^2 times in the weights' units."""
    scale = row_scales(w)
    unscaled = rule.model_copy(update={"scale": None})
    if weights is not None:
        weights = weights * np.square(scale.astype(np.float32))[:, None]
    divisor = scale.astype(np.float32)
    if rule.prune is not None or rule.prune_threshold is not None:  # pruning ranks every scaled value
        q = method.encode(name, w / divisor[:, None], unscaled, weights)
    else:
        q = method.encode(name, w, unscaled, weights, divisor=divisor)
    q.tables["scale"] = scale
    q.stats.pop("sqnr_db", None)  # that of the scaled rows: the caller measures it on w, in chunks
    return q
