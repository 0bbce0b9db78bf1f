"""k-means codebooks: each code stands for one entry of a per-tensor, per-row or per-group
codebook (fp16 by default), fitted by the 1-D k-means of kformat.methods.kmeans_fit.

    value = float32(codebook[group(row), code])
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import QuantizationError
from . import kmeans_codes, kmeans_fit
from .base import FP16_MAX, FP16_NORMAL, Method, TableSpec, group_rows_for, row_groups
from .chunks import map_chunks
from .compact import QuantizedTensor
from .metrics import PNG_OVERHEAD, TILE_OVERHEAD, entropy_bits, entropy_bytes, sqnr_db, tile_count
from .prune import prune_mask

ALLOCATION_BITS = (1, 2, 3, 4, 5, 6, 8)
ALLOCATION_GROUP_BITS = (2, 3, 4)
ALLOCATION_GROUP_ROWS = 64
# Entropy-constrained candidates: at equal stored bytes they keep more SQNR than a plain fit
# of fewer levels (the planes are entropy coded), which is what lets allocation reach a
# transformer's 0.98 mean cosine at 3.5 bits/weight.
ALLOCATION_ECQ_BITS = (3, 4, 5, 6)
ALLOCATION_ECQ_DB = 0.5
SAMPLE_GROUPS = 16  # per-group candidates are estimated on this many groups, evenly spaced


def _stored(centroids: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The distinct centroids the codebook dtype can hold, sorted, as float64 (inf where they
    overflow it; encode refuses those with a clear error)."""
    with np.errstate(over="ignore"):
        return np.unique(centroids.astype(dtype)).astype(np.float64)


def _group_source(block: np.ndarray, mask: np.ndarray | None, k: int, weights: np.ndarray | None = None):
    """The (importance-weighted) histogram of the values a group's codebook is fitted to,
    the entries left for them (one is reserved for exact zero when pruning), and whether
    one is."""
    source = block if mask is None else block[~mask]
    if weights is not None:
        weights = np.broadcast_to(weights, block.shape)
        weights = weights if mask is None else weights[~mask]
    fixed_zero = mask is not None and mask.any()
    if fixed_zero:
        k -= 1
    if source.size == 0:
        return None, k, fixed_zero
    bins = min(kmeans_fit.FINE_BINS, max(1024, source.size // 8))
    return kmeans_fit.histogram(source, bins, weights), k, fixed_zero


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
                hist, k, rule.ecq, _stored(centroids, dtype)
            )
    if fixed_zero:
        centroids = np.concatenate([centroids, [0.0]])
    rounded = _stored(centroids, dtype)
    if edges is not None and rounded.size != centroids.size:
        edges = None  # rounding merged centroids: fall back to nearest-centroid cells
    return rounded, edges


def _estimate(
    hist: kmeans_fit.Histogram,
    k: int,
    thorough: bool,
    plain: kmeans_fit.Histogram | None = None,
    ecq: float | None = None,
    dtype: np.dtype = np.dtype(np.float16),
) -> tuple[float, np.ndarray]:
    """(noise energy, code counts) of a k-entry codebook fitted to `hist` (entropy-constrained
    within `ecq` dB of the plain fit, when given); when `hist` is importance-weighted, `plain`
    (the unweighted histogram) gives the code counts."""
    centroids = np.unique(np.asarray(kmeans_fit.fit_centroids(hist, k, thorough), dtype=np.float64))
    edges = None
    if ecq is not None and centroids.size > 1:
        # started, as encode starts it, from the centroids rounded to the codebook's dtype
        fitted, edges = kmeans_fit.fit_entropy_constrained(hist, k, ecq, _stored(centroids, dtype))
        centroids = np.asarray(fitted, dtype=np.float64)
        edges = np.asarray(edges, dtype=np.float64)

    def cells_of(points: np.ndarray) -> np.ndarray:  # what assign gives: nearest, or by the edges
        return np.searchsorted(kmeans_codes.boundaries(centroids) if edges is None else edges, points)

    cells = cells_of(hist.points)
    # the bins' own width adds w^2/12 per value (values spread uniformly within a bin)
    width = hist.width
    noise = (
        float(np.sum(hist.counts * (hist.points - centroids[cells]) ** 2)) + hist.counts.sum() * width**2 / 12
    )
    if plain is not None:
        return noise, np.bincount(cells_of(plain.points), weights=plain.counts, minlength=k)
    return noise, np.bincount(cells, weights=hist.counts, minlength=k)


def _tile_overhead(bits: int) -> int:
    from ..codecs import plane_depth

    return TILE_OVERHEAD + 3 * (1 << plane_depth(bits))  # + the PNG palette


class KMeans(Method):
    name = "kmeans"
    options = ("bits", "group_size", "prune", "prune_threshold", "ecq", "scale")

    weighted = True  # encode takes importance weights (kformat.packing.importance)

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
        spans = [(g * group_rows, min(rows, (g + 1) * group_rows)) for g in range(groups)]

        def group_weights(r0, r1):
            if weights is None:
                return None
            return weights[r0:r1] if weights.shape[0] == rows else weights

        def source(r0, r1):
            return w[r0:r1] if divisor is None else w[r0:r1] / divisor[r0:r1, None]

        def each_group(fn):
            """[fn(g) for every group], groups spread over the chunk pool's threads (a group's
            own passes then run inline; one group keeps them on the pool)."""
            runs = map_chunks(lambda first, stop: [fn(g) for g in range(first, stop)], groups, 1)
            return [result for run in runs for result in run]

        def fit_source(g):
            r0, r1 = spans[g]
            block_mask = None if mask is None else mask[r0:r1]
            return _group_source(source(r0, r1), block_mask, k, group_weights(r0, r1))

        fits = each_group(fit_source)
        # Every group's codebook is seeded by the exact optimum of 1-D k-means (one batched
        # dynamic programme for all groups), then polished by Lloyd: within 0.1 dB of the
        # optimum at every width; Lloyd alone ends 1-11 dB short at 8 bits or on outliers.
        seeded = {}
        for entries in {e for _, e, _ in fits}:  # k, or k - 1 where pruning keeps a zero entry
            batch = [
                g for g, (h, e, _) in enumerate(fits) if e == entries and h is not None and h.points.size > e
            ]
            seeded.update(zip(batch, kmeans_fit.seeds([fits[g][0] for g in batch], entries)))

        def code_group(g):
            """Fit group g's codebook, write its codes and table; (counts, power, noise)."""
            r0, r1 = spans[g]
            block = source(r0, r1)
            block_mask = None if mask is None else mask[r0:r1]
            if block_mask is not None:
                block = np.where(block_mask, np.float32(0), block)
            hist, entries, fixed_zero = fits[g]
            centroids, edges = _fit_group(hist, entries, fixed_zero, seeded.get(g), rule, dtype)
            if dtype == np.float16 and np.abs(centroids).max(initial=0) > FP16_MAX:
                raise QuantizationError(
                    f"tensor {name!r}: weights exceed the float16 range; use codebook=float32"
                )
            if weights is None and block_mask is None and hist is not None and hist.width > 0:
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

        counts = np.zeros(k, dtype=np.float64)
        signal = noise = 0.0
        for group_counts, group_signal, group_noise in each_group(code_group):  # summed in group order
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
        first, last = row0 // group_rows, (row0 + rows - 1) // group_rows
        if first == last:
            out = np.take(table[first], plane, out=out)
        else:
            index = row_groups(row0, rows, group_rows)[:, None] * table.shape[1] + plane
            out = np.take(table.reshape(-1), index, out=out)
        return _scaled(out, row0, tables)

    def finish_lookup(self, values, row0, tables):
        return _scaled(values, row0, tables)

    def code_values(self, tables, group, entries):
        return tables["codebook"][group].astype(np.float32)

    # -- bit allocation ------------------------------------------------------------------
    def candidates(self, rows: int) -> list[str]:
        rules = [f"kmeans:{b}" for b in ALLOCATION_BITS]
        rules += [f"kmeans:{b},ecq={ALLOCATION_ECQ_DB}" for b in ALLOCATION_ECQ_BITS]
        if rows >= 2 * ALLOCATION_GROUP_ROWS:
            rules += [f"kmeans:{b},group={ALLOCATION_GROUP_ROWS}" for b in ALLOCATION_GROUP_BITS]
        return rules

    def estimate(self, w, rules, tile, weights=None):
        """Per-tensor rules from one histogram of the tensor; per-group rules from a sample
        of its groups (_sampled_groups). Size is the code entropy plus codebooks and tile overhead.
        With importance `weights` the error is the weighted one, from weighted histograms."""
        tiles = tile_count(w.shape, tile)
        full = None if weights is None else np.broadcast_to(weights, w.shape)
        if full is None:
            signal = float(np.einsum("ij,ij->", w, w, dtype=np.float64)) or 1.0
        else:
            signal = float(np.sum(full * np.square(w, dtype=np.float64))) or 1.0
        row_mass = None if full is None else full.sum(axis=1, dtype=np.float64)  # for every group rule
        hist = None
        out = []
        for rule in rules:
            bits = int(rule.bits)
            if rule.granularity == "tensor":
                if hist is None:
                    hist = kmeans_fit.histogram(w, weights=full)
                    plain = None if full is None else kmeans_fit.histogram(w)
                dtype = np.dtype(rule.codebook_dtype)
                noise, counts = _estimate(hist, 1 << bits, True, plain, rule.ecq, dtype)
                size = entropy_bytes(counts) * PNG_OVERHEAD + (1 << bits) * 2 + tiles * _tile_overhead(bits)
                out.append((size, noise / signal))
                continue
            out.append(_estimate_groups(w, full, row_mass, rule, tiles, signal))
        return out


def _sampled_groups(row_mass: np.ndarray | None, group: int, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """The row groups a per-group estimate fits, and how many groups each stands for.

    Evenly spaced groups; with importance, half of them are instead the groups that carry
    the most importance, each standing for itself (an embedding's importance sits in its
    frequent tokens' rows, which evenly spaced groups would miss)."""
    count = min(groups, SAMPLE_GROUPS)
    if row_mass is None or count == groups:
        picks = np.unique(np.linspace(0, groups - 1, count).astype(int))
        return picks, np.full(picks.size, groups / picks.size)
    mass = np.add.reduceat(row_mass, np.arange(0, row_mass.size, group))
    top = np.sort(np.argsort(-mass, kind="stable")[: count // 2])
    rest = np.setdiff1d(np.arange(groups), top)
    spread = rest[np.unique(np.linspace(0, rest.size - 1, count - top.size).astype(int))]
    picks = np.concatenate([top, spread])
    stands = np.concatenate([np.ones(top.size), np.full(spread.size, rest.size / spread.size)])
    return picks, stands


def _estimate_groups(w: np.ndarray, full, row_mass, rule, tiles: int, signal: float) -> tuple[float, float]:
    """(bytes, relative error) of a per-group rule from a sample of its row groups."""
    rows = w.shape[0]
    bits = int(rule.bits)
    group = group_rows_for(rule, rows)
    groups = math.ceil(rows / group)
    picks, stands = _sampled_groups(row_mass, group, groups)
    noise = entropy = 0.0
    for g, weight in zip(picks, stands):
        block = w[g * group : (g + 1) * group]
        part_weights = None if full is None else full[g * group : (g + 1) * group]
        hist, _, _ = _group_source(block, None, 1 << bits, part_weights)  # as encode fits it
        plain = None if full is None else _group_source(block, None, 1 << bits)[0]
        part, counts = _estimate(hist, 1 << bits, full is not None, plain)
        noise += part * weight
        entropy += entropy_bytes(counts) * weight
    size = entropy * PNG_OVERHEAD + groups * (1 << bits) * 2 + tiles * _tile_overhead(bits)
    return size, noise / signal


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
