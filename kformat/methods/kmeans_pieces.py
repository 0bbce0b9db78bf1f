"""Seeds for wide codebooks (k >= 64: 6, 7 and 8 bits): the exact dynamic programme in pieces.

The exact programme (kmeans_dp) computes one layer per cluster: 255 layers of small numpy
passes for an 8-bit codebook, most of an 8-bit pack's time, holding the GIL. With many
clusters the optimum is local: a cluster's edges depend on its neighbours, not on values far
away. So the sorted points are cut into pieces of about PIECE_CLUSTERS clusters each, and
one batched programme solves every piece for every cluster count it may need (a few dozen
layers, not k). Each piece's least error is convex in its cluster count, so handing the k
clusters out greedily by the largest drop in error is the optimal split of k among the
pieces. A piece that takes every cluster computed so far gets more layers, and the hand-out
is redone, until none does. What the pieces lose against the whole is their fixed seams:
a second pass puts its seams mid-way through the first pass's pieces (on edges the first
pass found, so it can only do better), and Lloyd on the fine histogram moves the rest
(kmeans_fit). About 36 layers instead of 255; on MiniLM's weights the fitted codebooks are
about as close to kmeans1d's optimum as with the whole programme (widest gap 0.045 dB at 8
bits, against 0.058; 0.041 at 6 bits, against 0.017, in half the time).
"""

from __future__ import annotations

import numpy as np

from . import kmeans_dp
from .histogram import median, unique
from .kmeans_dp import Programme, means, optimal_centroids_batch

WIDE = 64  # codebooks with at least this many entries (6-8 bits) are seeded in pieces
PIECE_CLUSTERS = 8  # clusters per piece, on average
PASSES = 2  # the second with its seams mid-way through the first's pieces


def _pieces(points: np.ndarray, weights: np.ndarray, count: int) -> np.ndarray:
    """Start indices of `count` runs of the sorted points with about equal shares of the
    optimal cluster density (the density to the power 1/3: high-rate quantization theory),
    so that each run needs about as many clusters. A point's share is its weight's cube root
    times its spacing to the power 2/3, the spacing capped at the median so that far
    outliers, which need few clusters, do not take whole pieces of their own."""
    gaps = np.diff(points)
    spacing = np.empty_like(points)
    spacing[0], spacing[-1] = gaps[0], gaps[-1]
    spacing[1:-1] = (gaps[:-1] + gaps[1:]) / 2
    spacing = np.minimum(spacing, median(spacing))
    share = np.cumsum(np.cbrt(weights) * np.cbrt(spacing) ** 2)
    cuts = np.searchsorted(share, share[-1] * np.arange(1, count) / count)
    return unique(np.concatenate(([0], cuts)))


def _hand_out(errors: np.ndarray, k: int) -> np.ndarray:
    """Cluster counts per piece (at least 1, summing to k) minimising the summed error, given
    errors[m - 1, p], piece p's least error in m clusters (inf where it cannot have m)."""
    possible = np.isfinite(errors[1:])  # (then errors[:-1] is finite too)
    drops = np.full(possible.shape, -np.inf)  # what the m+1-th cluster of a piece saves
    np.subtract(errors[:-1], errors[1:], out=drops, where=possible)
    drops = np.minimum.accumulate(drops, axis=0)  # convex: taken in order within a piece
    order = np.argsort(-drops, axis=None, kind="stable")[: k - errors.shape[1]]
    return 1 + np.bincount(np.unravel_index(order, drops.shape)[1], minlength=errors.shape[1])


Problem = tuple[np.ndarray, np.ndarray]  # sorted float64 points, their weights


def _solve(problems: list[Problem], starts: list[np.ndarray], k: int) -> list[np.ndarray]:
    """The best k clusters of each problem with a cluster edge at each of its piece `starts`:
    where the clusters start (indices into its points), then its size."""
    pieces, owners, offsets = [], [], []
    for g, ((points, weights), cuts) in enumerate(zip(problems, starts)):
        stops = np.append(cuts[1:], points.size)
        pieces += [(points[a:b], weights[a:b]) for a, b in zip(cuts, stops)]
        owners += [g] * cuts.size
        offsets += list(cuts)
    owners = np.array(owners)
    programme = Programme(pieces)
    active, depth = np.arange(len(pieces)), 2 * PIECE_CLUSTERS + 2
    while active.size:
        programme.extend(depth, active)
        errors = np.array(programme.errors)
        counts = np.empty(len(pieces), dtype=np.int64)
        for g in range(len(problems)):
            mine = owners == g
            counts[mine] = _hand_out(errors[:, mine], k)
        active = np.flatnonzero((counts == depth) & (programme.sizes > depth))  # may want more
        depth *= 2
    found = []
    for g, (points, _) in enumerate(problems):
        mine = np.flatnonzero(owners == g)
        edges = [programme.bounds(p, int(counts[p]))[:-1] + offsets[p] for p in mine]
        found.append(np.concatenate(edges + [[points.size]]))
    return found


def _shifted(starts: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Pieces whose seams sit mid-way through the previous pieces, on cluster edges found."""
    middles = (starts + np.append(starts[1:], bounds[-1])) // 2
    seams = bounds[np.minimum(np.searchsorted(bounds, middles), bounds.size - 2)]  # never the end
    return unique(np.concatenate(([0], seams)))


def seed_in_pieces(problems: list[Problem], k: int) -> list[np.ndarray]:
    """About k centroids per problem (sorted points, weights) that Lloyd turns into the
    optimum; small problems and narrow codebooks get the exact programme."""
    if k < WIDE:
        return optimal_centroids_batch(problems, k)
    out: list[np.ndarray | None] = [None] * len(problems)
    todo = []
    for g, (points, weights) in enumerate(problems):
        if points.size <= 2 * k:
            out[g] = optimal_centroids_batch([(points, weights)], k)[0]
        else:
            todo.append(g)
    if todo:
        chosen = [(problems[g][0].astype(np.float64), problems[g][1].astype(np.float64)) for g in todo]
        starts = [_pieces(p, w, max(1, k // PIECE_CLUSTERS)) for p, w in chosen]
        with kmeans_dp.one_at_a_time():
            for _ in range(PASSES):
                bounds = _solve(chosen, starts, k)
                starts = [_shifted(s, b) for s, b in zip(starts, bounds)]
        for g, (points, weights), found in zip(todo, chosen, bounds):
            out[g] = means(points, weights, found)
    return out
