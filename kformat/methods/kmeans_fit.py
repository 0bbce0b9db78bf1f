"""Fast, deterministic 1-D k-means for codebook quantization.

Weights are scalars, so k-means is one-dimensional and needs none of the machinery of the
general case. The values are first summarised by a fine histogram (2**16 uniform bins),
which costs one streaming pass over the tensor. Clustering then runs on at most a few
ten thousand weighted points:

1. initial centroids by an exact dynamic programme (optimal 1-D k-means, kmeans_dp) over
   the histogram merged into a few thousand bins (or, for the sampled groups of allocation's
   estimates, the better of companding and weighted quantiles);
2. weighted Lloyd iterations on the fine histogram until the centroids stop moving;
3. one assignment pass over the real values (a lookup grid against the cell boundaries);
   a final Lloyd update makes each centroid its cell's mean: exact (per-code sums collected
   in that pass) for small, weighted or pruned blocks, from the fine histogram for the rest
   (assign_binned: within 0.01 dB, without a second GIL-bound pass).

Centroids are kept sorted, so codes are ordered like the values they stand for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .chunks import map_chunks
from .histogram import FINE_BINS, Histogram, _bin_index, _rebin, histogram, value_range  # noqa: F401 (re-exported)
from .kmeans_dp import optimal_centroids, optimal_centroids_batch
from .metrics import squares

DP_POINTS = 4096  # the exact DP runs on the histogram merged into this many bins
RACE_BINS = 8192
LOOKUP_BINS = 1 << 16
MAX_ITERS = 300
TOLERANCE = 1e-7  # stop when no centroid moves more than this fraction of the value range


def _quantile_init(points: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """Centroids at the weighted quantiles of the points (equal-mass cells)."""
    cdf = np.cumsum(weights)
    targets = (np.arange(k) + 0.5) / k * cdf[-1]
    return points[np.minimum(np.searchsorted(cdf, targets), points.size - 1)]


def _companding_init(hist: Histogram, k: int) -> np.ndarray:
    """Quantiles of the density raised to 1/3: the asymptotically optimal cell density for
    large k (Panter-Dite). Uses a uniform-width histogram so counts are densities."""
    bins = min(4096, max(64, 16 * k))
    points, counts = _rebin(hist, bins)
    return _quantile_init(points, np.cbrt(counts), k)


def boundaries(centroids: np.ndarray) -> np.ndarray:
    """Cell edges between sorted centroids: a value v gets code searchsorted(edges, v)."""
    return (centroids[:-1] + centroids[1:]) / 2.0


class CellSums:
    """Prefix sums of sorted weighted points: the weight, sum and sum of squares of any cell
    (a run of points between two edges) in O(log n), so a Lloyd iteration costs O(k log n)
    instead of a pass over every point (what makes entropy-constrained fits affordable)."""

    def __init__(self, points: np.ndarray, weights: np.ndarray):
        self.points = points
        wp = weights * points
        self.w = np.concatenate(([0.0], np.cumsum(weights)))
        self.wp = np.concatenate(([0.0], np.cumsum(wp)))
        self.wpp = np.concatenate(([0.0], np.cumsum(wp * points)))

    def cells(self, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(weights, sums, sums of squares) of the cells split at `edges`; a point equal to
        an edge belongs to the lower cell, as searchsorted(edges, point) says."""
        bounds = np.concatenate(([0], np.searchsorted(self.points, edges, side="right"), [self.points.size]))
        return np.diff(self.w[bounds]), np.diff(self.wp[bounds]), np.diff(self.wpp[bounds])

    def sse(self, centroids: np.ndarray, edges: np.ndarray) -> float:
        """Squared error of the cells at `edges` quantized to `centroids` (one per cell)."""
        w, wp, wpp = self.cells(edges)
        return float(max(0.0, np.sum(wpp - 2.0 * centroids * wp + centroids * centroids * w)))


def lloyd(points: np.ndarray, weights: np.ndarray, centroids: np.ndarray, iters: int = MAX_ITERS, sums=None):
    """Weighted Lloyd iterations on sorted points; empty cells are dropped."""
    centroids = np.unique(centroids)
    tol = TOLERANCE * float(points[-1] - points[0])
    sums = sums or CellSums(points, weights)
    for _ in range(iters):
        if centroids.size < 2:
            break
        counts, moments, _ = sums.cells(boundaries(centroids))
        keep = counts > 0
        updated = moments[keep] / counts[keep]
        converged = updated.size == centroids.size and (np.max(np.abs(updated - centroids)) <= tol)
        centroids = updated
        if converged:
            break
    return centroids


def _sse(points: np.ndarray, weights: np.ndarray, centroids: np.ndarray) -> float:
    cells = np.searchsorted(boundaries(centroids), points)
    err = points - centroids[np.minimum(cells, centroids.size - 1)]
    return float(np.sum(weights * err * err))


def _split_largest(points, weights, centroids, k):
    """Grow a codebook that lost cells by splitting the cell with the largest error."""
    while centroids.size < min(k, points.size):
        cells = np.searchsorted(boundaries(centroids), points)
        err = weights * (points - centroids[cells]) ** 2
        per_cell = np.bincount(cells, weights=err, minlength=centroids.size)
        worst = int(np.argmax(per_cell))
        if per_cell[worst] <= 0:
            break
        members = points[cells == worst]
        kept = np.delete(centroids, worst)
        split = np.array([members.min(), members.max()])
        centroids = lloyd(points, weights, np.concatenate([kept, split]), iters=MAX_ITERS)
    return centroids


def dp_points(hist: Histogram, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The histogram merged to the resolution the exact DP runs at: about 32 bins per
    centroid (4096 at most), enough for the optimum of the merged points to be within a few
    hundredths of a dB of the optimum of the values once Lloyd has polished it."""
    return _rebin(hist, min(DP_POINTS, 32 * k))


def seeds(hists: list[Histogram], k: int) -> list[np.ndarray]:
    """Exact DP seeds of several histograms (the groups of a tensor), in one batch."""
    return optimal_centroids_batch([dp_points(h, k) for h in hists], k)


def fit_centroids(
    hist: Histogram, k: int, thorough: bool = True, seed: np.ndarray | None = None
) -> np.ndarray:
    """Sorted centroids (at most k) that minimise the squared error over the histogram.

    When `thorough` (or given a `seed` from `seeds`), the exact optimum of the histogram merged
    into about 32 bins per centroid (dynamic programming, kformat.methods.kmeans_dp) seeds
    Lloyd on the fine histogram: within 0.02 dB
    of the optimum of the real values at every width, where Lloyd alone gets stuck 1-9 dB
    short at 8 bits on trained weights. Otherwise (small groups) Lloyd runs from a companding
    init and from equal-mass quantiles, and the better one wins.
    """
    points, weights = hist.points, hist.counts
    if points.size <= k:
        return points.copy()
    if thorough or seed is not None:
        if seed is None:
            seed = optimal_centroids(*dp_points(hist, k), k)
        return _split_largest(points, weights, lloyd(points, weights, seed), k)
    candidates = [_companding_init(hist, k), _quantile_init(points, weights, k)]
    # Race the candidates on a coarser histogram, then polish the winner on the fine one.
    race_points, race_weights = _rebin(hist, max(RACE_BINS, 32 * k))
    best, best_err = None, np.inf
    for init in candidates:
        fitted = lloyd(race_points, race_weights, init)
        err = _sse(race_points, race_weights, fitted)
        if err < best_err:
            best, best_err = fitted, err
    return _split_largest(points, weights, lloyd(points, weights, best), k)


@dataclass
class Assignment:
    codes: np.ndarray  # uint8, same shape as the values
    counts: np.ndarray  # values per code
    sums: np.ndarray  # sum of values per code
    sum_squares: float  # sum of all values squared

    def squared_error(self, table: np.ndarray) -> float:
        """sum (x - table[code])^2, from the per-code sums (no second pass)."""
        t = table[: self.counts.size].astype(np.float64)
        cross, power = np.einsum("i,i->", t, self.sums), np.einsum("i,i->", t * t, self.counts)
        return max(0.0, self.sum_squares - 2 * float(cross) + float(power))  # no BLAS: see squares


def _edge_lookup(edges: np.ndarray, lo: float, hi: float, bins: int):
    """Per uniform bin: how many edges lie below it, and the one edge inside it (or +inf);
    `edges` is not empty.

    Each bin is widened by a quarter of its width on both sides so that values that land
    in a neighbouring bin through rounding are still classified exactly. None when two
    edges are too close for one bin to hold at most one."""
    width = (hi - lo) / bins
    if edges.size > 1 and np.min(np.diff(edges)) <= 1.5 * width:
        return None
    starts = lo + np.arange(bins) * width - width / 4
    base = np.searchsorted(edges, starts, side="right")
    nxt = np.minimum(base, edges.size - 1)
    inside = np.full(bins, np.inf, dtype=edges.dtype)
    within = (base < edges.size) & (edges[nxt] < starts + 1.5 * width)
    inside[within] = edges[nxt[within]]
    return base.astype(np.uint8 if edges.size < 256 else np.int16), inside


def _coded(values: np.ndarray, centroids: np.ndarray, edges, span, collect=None, out=None):
    """Codes for every value (nearest centroid, or by explicit cell edges), in chunks, and
    collect(chunk, codes) of every chunk while it is in cache.

    code = number of edges below the value. Computed through a uniform lookup grid
    (two gathers and a compare per value), exact, and several times faster than a binary
    search; falls back to searchsorted when edges are too close for the grid. Codes go to
    `out` (contiguous uint8, the values' shape) when given."""
    flat = values.reshape(-1)
    codes = np.empty(flat.size, dtype=np.uint8) if out is None else out.reshape(-1)
    edges = boundaries(centroids) if edges is None else edges
    edges = edges.astype(np.float32 if values.dtype == np.float32 else np.float64)
    lookup = None
    if flat.size >= LOOKUP_BINS and edges.size:
        lo, hi = value_range(flat) if span is None else span
        if hi > lo:
            lookup = _edge_lookup(edges, lo, hi, LOOKUP_BINS)

    def part(start: int, stop: int):
        chunk = flat[start:stop]
        out = codes[start:stop]
        if lookup is None:
            out[...] = np.searchsorted(edges, chunk)
        else:
            idx = _bin_index(chunk, lo, hi, LOOKUP_BINS)
            np.add(np.take(lookup[0], idx), chunk > np.take(lookup[1], idx), out=out, casting="unsafe")
        return None if collect is None else collect(chunk, out)

    return codes.reshape(values.shape), map_chunks(part, flat.size)  # parts in chunk order


def assign(
    values: np.ndarray, centroids: np.ndarray, edges: np.ndarray | None = None, span=None, out=None
) -> Assignment:
    """Codes for the values, with each code's exact count and sum, and the values' power.
    `span` is the values' (min, max) when the caller knows it (the histogram has it)."""
    k = centroids.size

    def collect(chunk: np.ndarray, out: np.ndarray):
        wide = chunk.astype(np.float64)
        return np.bincount(out, minlength=k), np.bincount(out, weights=wide, minlength=k), squares(wide)

    codes, parts = _coded(values, centroids, edges, span, collect, out)
    counts = np.zeros(k, dtype=np.float64)
    sums = np.zeros(k, dtype=np.float64)
    sum_squares = 0.0
    for part_counts, part_sums, part_squares in parts:
        counts += part_counts
        sums += part_sums
        sum_squares += part_squares
    return Assignment(codes, counts, sums, sum_squares)


def assign_binned(
    values: np.ndarray, hist: Histogram, centroids: np.ndarray, edges: np.ndarray | None = None, out=None
) -> Assignment:
    """Codes for the values, with counts, sums and power taken from their histogram `hist`
    (binned, unweighted) instead of a second pass: each bin counts whole in the cell of its
    centre, values spread evenly within it (the w^2/12 term). The bins are a few parts in
    10^5 of the range wide, so the cell means differ from the exact ones by far less than the
    codebook's fp16 rounding, and the SQNR stat by under 0.01 dB; the two bincounts this
    saves were a third of a large tensor's pack time and held the GIL."""
    codes, _ = _coded(values, centroids, edges, (hist.lo, hist.hi), out=out)
    k = centroids.size
    cells = np.searchsorted(boundaries(centroids) if edges is None else edges, hist.points)
    counts = np.bincount(cells, weights=hist.counts, minlength=k)
    sums = np.bincount(cells, weights=hist.counts * hist.points, minlength=k)
    total = float(hist.counts.sum())
    sum_squares = float(np.sum(hist.counts * hist.points * hist.points)) + total * hist.width**2 / 12
    return Assignment(codes, counts, sums, sum_squares)


# -- entropy-constrained fit ------------------------------------------------------------------
# Planes are entropy coded (PNG deflate, zstd), so what a code costs is about -log2 of its
# probability, not a fixed `bits`. The entropy-constrained quantizer (Chou, Lookabaugh & Gray,
# 1989) minimises  error + lambda * bits: cells of rare codes shrink, the code distribution
# gets peakier and the planes smaller. We search lambda so that the SQNR stays within a
# given number of dB of the plain fit.

ECQ_ITERS = 300
ECQ_SEARCH_STEPS = 12


def ec_cells(centroids: np.ndarray, lengths: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Cells of the rule "minimise (x - c_i)^2 + lam * L_i" for sorted centroids.

    (x - c)^2 + lam L = x^2 + (-2c x + c^2 + lam L): the x^2 is shared, so the winner is the
    lower envelope of the lines y = -2c x + (c^2 + lam L). Returns the indices of the
    centroids that own a cell and the edges between those cells (ascending).

    Slopes descend with the index, so a line owns a cell exactly when it meets its left
    neighbour on the envelope before its right one. Every line that fails that against its
    current neighbours is dropped at once (two neighbours failing together never hide a
    cell), until all pass: O(k) numpy per round, a few rounds, where comparing every pair
    cost O(k^2) (the 8-bit fits of the mobile preset spent seconds there). Of lines with
    equal slopes only the lowest (the first on ties) can own one.
    """
    k = centroids.size
    slopes = -2.0 * centroids
    offsets = centroids * centroids + lam * lengths
    hull = np.arange(k)
    same = slopes[1:] == slopes[:-1]
    if same.any():  # equal centroids are neighbours: keep each run's lowest offset, first on ties
        run = np.concatenate(([0], np.cumsum(~same)))
        order = np.lexsort((hull, offsets, run))
        hull = np.sort(order[np.concatenate(([True], run[order][1:] != run[order][:-1]))])
    while True:
        s, o = slopes[hull], offsets[hull]
        cross = (o[1:] - o[:-1]) / (s[:-1] - s[1:])  # where each line meets the next
        owns = np.concatenate(([-np.inf], cross)) < np.concatenate((cross, [np.inf]))
        if owns.all():
            return hull.astype(np.int64), cross
        hull = hull[owns]


def _ec_lloyd(points, weights, centroids, lam, sums: CellSums | None = None):
    """Entropy-constrained Lloyd on sorted weighted points: centroids, code lengths, SSE."""
    sums = sums or CellSums(points, weights)
    total = sums.w[-1]
    lengths = np.full(centroids.size, np.log2(centroids.size))
    tol = TOLERANCE * float(points[-1] - points[0])
    for _ in range(ECQ_ITERS):
        owners, edges = ec_cells(centroids, lengths, lam)
        counts, moments, _ = sums.cells(edges)
        keep = counts > 0
        updated = moments[keep] / counts[keep]
        new_lengths = -np.log2(counts[keep] / total)
        done = updated.size == centroids.size and np.max(np.abs(updated - centroids)) <= tol
        centroids, lengths = updated, new_lengths
        if done:
            break
    owners, edges = ec_cells(centroids, lengths, lam)
    centroids = centroids[owners]
    return centroids, edges, sums.sse(centroids, edges)


def fit_entropy_constrained(hist: Histogram, k: int, max_loss_db: float, plain: np.ndarray):
    """Centroids and cell edges that lower the code entropy while keeping the SQNR within
    `max_loss_db` of the plain fit `plain` (measured on the histogram). The rate weight
    lambda is found by bisection; falls back to the plain fit."""
    points, weights = hist.points, hist.counts
    if plain.size < 2 or points.size <= plain.size:
        return plain, boundaries(plain)
    base = _sse(points, weights, plain)
    if base <= 0:
        return plain, boundaries(plain)
    budget = base * 10 ** (max_loss_db / 10)
    mse = base / weights.sum()
    best = (plain, boundaries(plain))
    lo, hi = 0.0, 8.0 * mse
    sums = CellSums(points, weights)
    for _ in range(ECQ_SEARCH_STEPS):
        lam = (lo + hi) / 2
        centroids, edges, sse = _ec_lloyd(points, weights, plain, lam, sums)
        if sse <= budget and centroids.size >= 2:
            best = (centroids, edges)
            lo = lam
        else:
            hi = lam
    return best
