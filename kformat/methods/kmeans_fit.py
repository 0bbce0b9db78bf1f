"""Fast, deterministic 1-D k-means for codebook quantization.

Weights are scalars, so k-means is one-dimensional and needs none of the machinery of the
general case. The values are first summarised by a fine histogram (2**16 uniform bins),
which costs one streaming pass over the tensor. Clustering then runs on at most a few
ten thousand weighted points:

1. initial centroids by an exact dynamic programme (optimal 1-D k-means, kmeans_dp; in
   pieces for 6-8 bits, kmeans_pieces) over the histogram merged into a few thousand
   bins (or, for fits without one, the better of companding and weighted quantiles);
2. weighted Lloyd iterations on the fine histogram until the centroids stop moving;
3. one assignment pass over the real values (kmeans_codes: lookup tables of the cell edges);
   a final Lloyd update makes each centroid its cell's mean: exact (per-code sums collected
   in that pass) for small, weighted or pruned blocks, from the fine histogram for the rest
   (assign_binned: within 0.01 dB, without a second GIL-bound pass).

Centroids are kept sorted, so codes are ordered like the values they stand for.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .histogram import FINE_BINS, SAMPLE_VALUES, Histogram, _rebin, histogram, unique  # noqa: F401 (re-exported)
from . import kernels, kmeans_memo
from .fit_loops import cell_bounds, cell_moments, ec_step, every_line_owns
from .kmeans_codes import boundaries
from .kmeans_memo import (  # noqa: F401 (re-exported: what allocation keeps while it runs)
    histograms_kept,
    keep_histograms,
    keep_seeds,
    remember_histogram,
    remembered_histogram,
    remembered_seeds,
    seeds_kept,
)
from .kmeans_pieces import seed_in_pieces

DP_POINTS = 4096  # the exact DP runs on the histogram merged into this many bins
RACE_BINS = 8192
MAX_ITERS = 300
TOLERANCE = 1e-7  # stop when no centroid moves more than this fraction of the value range


def stored_centroids(centroids: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The distinct centroids the codebook dtype can hold, sorted, as float64 (inf where they
    overflow it; encode refuses those with a clear error)."""
    with np.errstate(over="ignore"):
        return unique(centroids.astype(dtype)).astype(np.float64)


def group_source(
    block: np.ndarray,
    mask: np.ndarray | None,
    k: int,
    weights: np.ndarray | None = None,
    sample: int = SAMPLE_VALUES,
):
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
    bins = min(FINE_BINS, max(1024, min(source.size, sample) // 8))
    return histogram(source, bins, weights, sample), k, fixed_zero


def rows_of(weights: np.ndarray | None, r0: int, r1: int, rows: int) -> np.ndarray | None:
    """The importance weights of rows r0..r1 (weights of one row broadcast to every row)."""
    if weights is None:
        return None
    return weights[r0:r1] if weights.shape[0] == rows else weights


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


class CellSums:
    """Prefix sums of sorted weighted points: the weight, sum and sum of squares of any cell
    (a run of points between two edges) in O(log n), so a Lloyd iteration costs O(k log n)
    instead of a pass over every point (what makes entropy-constrained fits affordable)."""

    def __init__(self, points: np.ndarray, weights: np.ndarray):
        self.points, self._weights = points, weights
        # the prefix sums of the weights and of weight x point, side by side (moments gathers
        # both in one call), summed straight into place
        self.w_wp = np.zeros((points.size + 1, 2))
        kernels.prefix_sums(points, weights, self.w_wp)
        self.w, self.wp = self.w_wp[:, 0], self.w_wp[:, 1]
        self._wpp: np.ndarray | None = None  # only the squared errors need it (cells)

    @property
    def wpp(self) -> np.ndarray:
        """Prefix sums of weight x point^2, made on first use."""
        if self._wpp is None:
            wpp = np.zeros(self.points.size + 1)
            np.cumsum(self._weights * self.points * self.points, out=wpp[1:])
            self._wpp = wpp
        return self._wpp

    def cells(self, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(weights, sums, sums of squares) of the cells split at `edges`."""
        bounds = cell_bounds(self.points, edges)
        w, wp, wpp = self.w[bounds], self.wp[bounds], self.wpp[bounds]
        return w[1:] - w[:-1], wp[1:] - wp[:-1], wpp[1:] - wpp[:-1]

    def moments(self, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(weights, sums) of the cells split at `edges`: cells() without the squares (Lloyd
        runs this tens of times per codebook, holding the GIL)."""
        return cell_moments(self.points, self.w_wp, edges)

    def sse(self, centroids: np.ndarray, edges: np.ndarray) -> float:
        """Squared error of the cells at `edges` quantized to `centroids` (one per cell)."""
        w, wp, wpp = self.cells(edges)
        return float(max(0.0, np.sum(wpp - 2.0 * centroids * wp + centroids * centroids * w)))


def lloyd(points: np.ndarray, weights: np.ndarray, centroids: np.ndarray, iters: int = MAX_ITERS, sums=None):
    """Weighted Lloyd iterations on sorted points; empty cells are dropped."""
    centroids = unique(centroids)
    tol = TOLERANCE * float(points[-1] - points[0])
    sums = sums or CellSums(points, weights)
    with kernels.loops(sums.points, sums.w_wp, centroids) as run:
        return run.lloyd_iterations(sums.points, sums.w_wp, centroids, iters, tol)


def _sse(points: np.ndarray, weights: np.ndarray, centroids: np.ndarray) -> float:
    cells = np.searchsorted(boundaries(centroids), points)
    err = points - centroids[np.minimum(cells, centroids.size - 1)]
    return float(np.sum(weights * err * err))


def _split_largest(points, weights, centroids, k, sums=None):
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
        centroids = lloyd(points, weights, np.concatenate([kept, split]), iters=MAX_ITERS, sums=sums)
    return centroids


def dp_points(hist: Histogram, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The histogram merged to the resolution the exact DP runs at: about 32 bins per
    centroid (4096 at most), enough for the optimum of the merged points to be within a few
    hundredths of a dB of the optimum of the values once Lloyd has polished it."""
    return _rebin(hist, min(DP_POINTS, 32 * k))


def _key(problem: tuple[np.ndarray, np.ndarray], k: int) -> tuple[int, bytes]:
    points, weights = problem
    digest = hashlib.blake2b(np.ascontiguousarray(points, np.float64).tobytes(), digest_size=20)
    digest.update(np.ascontiguousarray(weights, np.float64).tobytes())
    return k, digest.digest()


def seeds(hists: list[Histogram], k: int) -> list[np.ndarray]:
    """DP seeds of several histograms (the groups of a tensor), in one batch: exact, or in
    pieces for wide codebooks (kmeans_pieces); remembered while `remembered_seeds` is on."""
    problems = [dp_points(h, k) for h in hists]
    if not kmeans_memo.active():
        return seed_in_pieces(problems, k)
    keys = [_key(p, k) for p in problems]
    known = kmeans_memo.known_seeds(keys)
    missing = [i for i, seed in enumerate(known) if seed is None]
    if missing:
        fresh = seed_in_pieces([problems[i] for i in missing], k)
        for i, seed in zip(missing, fresh):
            seed.setflags(write=False)  # shared by every fit that finds it
            known[i] = seed
        kmeans_memo.keep_seeds({keys[i]: known[i] for i in missing})
    return known


def fit_centroids(
    hist: Histogram, k: int, thorough: bool = True, seed: np.ndarray | None = None, sums=None
) -> np.ndarray:
    """Sorted centroids (at most k) that minimise the squared error over the histogram.

    When `thorough` (or given a `seed` from `seeds`), the optimum of the histogram merged into
    about 32 bins per centroid (dynamic programming, kformat.methods.kmeans_dp; in pieces at
    6-8 bits, kmeans_pieces) seeds Lloyd on the fine histogram (`sums`: its CellSums, when
    the caller fits it several times): within 0.06 dB of the
    optimum of the real values at every width on MiniLM's weights, where Lloyd alone gets
    stuck 1-9 dB short at 8 bits on trained weights. Otherwise (small groups) Lloyd runs from
    a companding init and from equal-mass quantiles, and the better one wins.
    """
    points, weights = hist.points, hist.counts
    if points.size <= k:
        return points.copy()
    if thorough or seed is not None:
        if seed is None:
            seed = seeds([hist], k)[0]
        return _split_largest(points, weights, lloyd(points, weights, seed, sums=sums), k, sums)
    candidates = [_companding_init(hist, k), _quantile_init(points, weights, k)]
    # Race the candidates on a coarser histogram, then polish the winner on the fine one.
    race_points, race_weights = _rebin(hist, max(RACE_BINS, 32 * k))
    best, best_err = None, np.inf
    for init in candidates:
        fitted = lloyd(race_points, race_weights, init)
        err = _sse(race_points, race_weights, fitted)
        if err < best_err:
            best, best_err = fitted, err
    return _split_largest(points, weights, lloyd(points, weights, best, sums=sums), k, sums)


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
    owned, cross = every_line_owns(centroids, lengths, lam)  # the common case, in fewer calls
    if owned:
        return np.arange(k, dtype=np.int64), cross
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


def _ec_lloyd(points, weights, centroids, lam, sums: CellSums | None = None, lengths=None):
    """Entropy-constrained Lloyd on sorted weighted points, from `centroids` (and their code
    `lengths`, default all equal): centroids, cell edges, SSE and the centroids' lengths."""
    sums = sums or CellSums(points, weights)
    total = float(sums.w[-1])
    if lengths is None:
        lengths = np.full(centroids.size, np.log2(centroids.size))
    tol = TOLERANCE * float(points[-1] - points[0])
    with kernels.loops(sums.points, sums.w_wp, centroids, lengths) as run:  # until a line owns no cell
        centroids, lengths, done, finished = run.ec_iterations(
            sums.points, sums.w_wp, centroids, lengths, lam, ECQ_ITERS, tol, total
        )
    if not finished:
        with kernels.timed_numpy_loop():
            for _ in range(ECQ_ITERS - done):
                owners, edges = ec_cells(centroids, lengths, lam)
                step = ec_step(sums.points, sums.w_wp, centroids, edges, total, tol)
                centroids, lengths, converged = step
                if converged:
                    break
    owners, edges = ec_cells(centroids, lengths, lam)
    centroids = centroids[owners]
    return centroids, edges, sums.sse(centroids, edges), lengths[owners]


def fit_entropy_constrained(hist: Histogram, k: int, max_loss_db: float, plain: np.ndarray, sums=None):
    """Centroids and cell edges that lower the code entropy while keeping the SQNR within
    `max_loss_db` of the plain fit `plain` (measured on the histogram). The rate weight
    lambda is found by bisection; falls back to the plain fit. Each step starts from the fit
    at the largest lambda accepted so far: a lower lambda than the step's, so no cell it still
    needs was dropped, and Lloyd converges in 0.4-0.8x the iterations of a start from `plain`
    (the 8-bit fits of the mobile preset held the GIL for 0.25 s)."""
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
    sums = sums or CellSums(points, weights)
    start, start_lengths = plain, None
    for _ in range(ECQ_SEARCH_STEPS):
        lam = (lo + hi) / 2
        centroids, edges, sse, lengths = _ec_lloyd(points, weights, start, lam, sums, start_lengths)
        if sse <= budget and centroids.size >= 2:
            best = (centroids, edges)
            lo = lam
            start, start_lengths = centroids, lengths
        else:
            hi = lam
    return best
