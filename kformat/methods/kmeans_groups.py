"""A k-means tensor's row groups as work that divides: GroupEncoder.run(first, stop) fits
groups [first, stop) and writes their codes, finish() puts the parts together in group order.

A group's codebook depends on its own values alone (its histogram, seed and fit; pruning,
whose threshold ranks the whole tensor, is the exception: no GroupEncoder then), and the
stats are sums over the groups taken in group order, so parts run anywhere give the tensor
one run gives, byte for byte. A long pole's groups are so divided between two processes
(kformat.packing.split), the codes written straight into memory both share.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import QuantizationError
from . import kmeans_allocation, kmeans_codes, kmeans_fit
from .base import FP16_MAX, FP16_NORMAL, group_rows_for
from .chunks import map_chunks, spans as chunk_spans
from .compact import QuantizedTensor
from .histogram import EXACT_POINTS, FINE_BINS
from .metrics import entropy_bits, sqnr_db
from .prune import prune_mask
from .scaled_rows import ScaledRows

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


def row_scales(w: np.ndarray) -> np.ndarray:
    """Each row's RMS as float16 (1 for all-zero rows), what scale=row divides rows by so that
    rows of very different ranges share one codebook."""
    rms = np.sqrt(np.einsum("ij,ij->i", w, w, dtype=np.float64) / max(1, w.shape[1]))
    tiny = float(np.finfo(np.float16).tiny)
    rms = np.where(rms > tiny, np.minimum(rms, FP16_MAX), 1.0)
    return rms.astype(np.float16)


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


@dataclass
class GroupsPart:
    """What run(first, stop) made besides the codes: the groups' codebook rows, cell edges
    (ecq) and (code counts, signal power, noise power) each."""

    first: int
    stop: int
    codebook: np.ndarray
    edges: np.ndarray | None
    results: list[tuple[np.ndarray, float, float]]


class GroupEncoder:
    """One tensor's k-means encode by `rule` (its codes into `codes` when given: uint8, the
    2-D view's shape), run over any division of its row groups. With scale=row each row is
    divided by its float16 RMS (kept as the "scale" table) as it is read; with importance
    `weights` a scaled row's error counts scale^2 times in the weights' units."""

    def __init__(self, name: str, w: np.ndarray, rule, weights=None, codes: np.ndarray | None = None):
        self.name, self.w, self.rule = name, w.astype(np.float32, copy=False), rule
        self.scale = self.divisor = None
        if rule.scale == "row":
            self.scale = row_scales(self.w)
            self.divisor = self.scale.astype(np.float32)
            self.rule = rule = rule.model_copy(update={"scale": None})
            if weights is not None:
                weights = weights * np.square(self.divisor)[:, None]
            if rule.prune is not None or rule.prune_threshold is not None:  # it ranks every scaled value
                self.w, self.divisor = self.w / self.divisor[:, None], None
        self.weights = weights
        rows, cols = self.w.shape
        self.k = 1 << int(rule.bits)
        self.dtype = np.dtype(rule.codebook_dtype)
        self.mask = prune_mask(self.w, rule.prune, rule.prune_threshold)
        self.group_rows = group_rows_for(rule, rows)
        self.groups = -(-rows // self.group_rows)
        self.spans = chunk_spans(rows, self.group_rows)  # each group's (first row, stop)
        self.codes = np.empty((rows, cols), dtype=np.uint8) if codes is None else codes
        # one codebook for the tensor, codes nobody asked to have in hand: made as tiles read
        # them (kmeans_codes.CodesLater), where they come from the histogram's pass alone and
        # from the weights as they are (scaled rows would be held at 4 bytes a value, not 1)
        alone = self.mask is None and weights is None and self.divisor is None
        self.codes_later = codes is None and self.groups == 1 and alone
        self.batches = group_batches(self.groups, self.group_rows * cols)

    @property
    def divisible(self) -> bool:
        """Whether groups may run apart: not under pruning, whose threshold ranks every value."""
        return self.mask is None

    def whole(self) -> QuantizedTensor:
        return self.finish([self.run(0, self.groups)])

    def _weights_of(self, r0: int, r1: int):
        return kmeans_fit.rows_of(self.weights, r0, r1, self.w.shape[0])

    def _source(self, r0: int, r1: int):
        w, divisor = self.w, self.divisor
        if divisor is None:
            return w[r0:r1]
        if self.weights is None and self.mask is None and (r1 - r0) * w.shape[1] >= SCALED_IN_PLACE:
            return ScaledRows(w[r0:r1], divisor[r0:r1])  # (read in slices)
        return w[r0:r1] / divisor[r0:r1, None]

    def _fit_source(self, g: int):
        r0, r1 = self.spans[g]
        block_mask = None if self.mask is None else self.mask[r0:r1]
        if self.groups == 1 and self.mask is None and self.divisor is None:  # weighed already?
            key = kmeans_allocation.whole_key(self.name, self.weights is not None, self.w.shape)
            hist = kmeans_fit.remembered_histogram(key)
            if hist is not None and hist.points.size:
                return hist, self.k, False
        return kmeans_fit.group_source(self._source(r0, r1), block_mask, self.k, self._weights_of(r0, r1))

    def _seeds(self, fits: dict) -> dict:
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

    def run(self, first: int, stop: int) -> GroupsPart:
        """Fit groups [first, stop) (whole batches of group_batches, or parts of them: a
        group's fit is its own) and write their codes."""
        k = self.k
        codebook = np.zeros((stop - first, k), dtype=self.dtype)
        edges = np.full((stop - first, k - 1), np.nan) if self.rule.ecq is not None else None

        def each_group(fn, a: int, b: int):
            """[fn(g) for g in a..b], groups spread over the chunk pool's threads (a group's
            own passes then run inline; one group keeps them on the pool)."""
            runs = map_chunks(lambda i, j: [fn(g) for g in range(a + i, a + j)], b - a, 1)
            return [result for run in runs for result in run]

        def code_group(g: int, fit, seed):
            """Fit group g's codebook, write its codes and table; (counts, power, noise)."""
            r0, r1 = self.spans[g]
            block = self._source(r0, r1)
            block_mask = None if self.mask is None else self.mask[r0:r1]
            if block_mask is not None:
                block = np.where(block_mask, np.float32(0), block)
            hist, entries, fixed_zero = fit
            centroids, cells = _fit_group(hist, entries, fixed_zero, seed, self.rule, self.dtype)
            if cells is not None and edges is not None and cells.size == k - 1:
                edges[g - first] = cells
            if self.dtype == np.float16 and np.abs(centroids).max(initial=0) > FP16_MAX:
                raise QuantizationError(
                    f"tensor {self.name!r}: weights exceed the float16 range; use codebook=float32"
                )
            out = self.codes[r0:r1]
            if self.weights is None and block_mask is None and hist is not None:
                later = self.codes_later and isinstance(block, np.ndarray) and block.dtype == np.float32
                found = kmeans_codes.assign_binned(block, hist, centroids, cells, out=out, later=later)
                if later:
                    self.codes = found.codes
            else:
                span = None if hist is None or block_mask is not None else (hist.lo, hist.hi)
                found = kmeans_codes.assign(block, centroids, cells, span, out=out)
            # Lloyd update: each code's centroid becomes its cell's mean (exact, or from the
            # fine histogram for large unweighted blocks). Pruned zeros keep their centroid at 0.
            used = found.counts > 0
            means = centroids.copy()
            if self.weights is None:
                means[used] = found.sums[used] / found.counts[used]
            else:  # the importance-weighted mean of each cell
                gw = np.broadcast_to(self._weights_of(r0, r1), block.shape).reshape(-1)
                codes_flat = found.codes.reshape(-1)
                total = np.bincount(codes_flat, gw, minlength=centroids.size)
                moment = np.bincount(codes_flat, gw * block.reshape(-1), minlength=centroids.size)
                used = total > 0
                means[used] = moment[used] / total[used]
            if block_mask is not None and block_mask.any():
                means[centroids == 0.0] = 0.0
            table = np.sort(means.astype(self.dtype))
            row = codebook[g - first]
            row[: table.size] = table
            row[table.size :] = table[-1]
            return found.counts, found.sum_squares, found.squared_error(row)

        results = []
        for b0, b1 in self.batches:  # histograms of a batch at a time
            a, b = max(b0, first), min(b1, stop)
            if a >= b:
                continue
            fits = dict(zip(range(a, b), each_group(self._fit_source, a, b)))
            seeded = self._seeds(fits)
            results += each_group(lambda g: code_group(g, fits[g], seeded.get(g)), a, b)
        return GroupsPart(first, stop, codebook, edges, results)

    def finish(self, parts: list[GroupsPart]) -> QuantizedTensor:
        """The tensor from parts covering every group once (in any order)."""
        parts = sorted(parts, key=lambda p: p.first)
        bounds = [0] + [p.stop for p in parts]  # each part starts where the one before stops
        if [p.first for p in parts] != bounds[:-1] or bounds[-1] != self.groups:
            raise ValueError(f"parts {[(p.first, p.stop) for p in parts]} do not cover {self.groups} groups")
        codebook = np.concatenate([p.codebook for p in parts])
        edges = None if self.rule.ecq is None else np.concatenate([p.edges for p in parts])
        counts = np.zeros(self.k, dtype=np.float64)
        signal = noise = 0.0
        for group_counts, group_signal, group_noise in (r for p in parts for r in p.results):
            counts[: group_counts.size] += group_counts  # summed in group order
            signal += group_signal
            noise += group_noise
        if self.dtype == np.float16 and signal > 0 and np.abs(codebook).max() < FP16_NORMAL:
            raise QuantizationError(
                f"tensor {self.name!r}: weights below float16's normal range (largest codebook entry "
                f"{float(np.abs(codebook).max()):.3g}, smallest normal {FP16_NORMAL:.3g}) lose their "
                "precision or vanish in a float16 codebook; use codebook=float32"
            )
        stats = {"entropy_bits": entropy_bits(counts)}
        if self.mask is not None:  # with pruning, the error against the unpruned weights is measured later
            stats["pruned"] = int(self.mask.sum())
        elif self.scale is None:  # (scaled: that of the scaled rows; the caller measures it on w)
            stats["sqnr_db"] = sqnr_db(signal, noise)
        tables = {"codebook": codebook}
        if self.scale is not None:
            tables["scale"] = self.scale
        rows, cols = self.w.shape
        return QuantizedTensor(
            name=self.name,
            method="kmeans",
            shape=self.w.shape,
            view=(rows, cols),
            bits=int(self.rule.bits),
            group_rows=self.group_rows,
            codes=self.codes,
            tables=tables,
            stats=stats,
            edges=edges,
        )
