"""The codebook fits' Lloyd loops on cell sums, in plain numpy that numba can also compile.

kmeans_fit runs these functions as they are; kernels_numba compiles these same functions
into loops that release the GIL (and _kernels.c writes them again in C, operation for
operation). One text for both is what keeps their arithmetic, and so a
pack's bytes, the same with and without numba. So: only numpy that numba supports, no
imports from the package, and every helper called here registered in kernels_numba.
"""

from __future__ import annotations

import math

import numpy as np

LENGTH_STEPS = 1024.0  # code lengths are kept in 1/1024ths of a bit (code_lengths)


def boundaries(centroids: np.ndarray) -> np.ndarray:
    """Cell edges between sorted centroids: a value v gets code searchsorted(edges, v)."""
    return (centroids[:-1] + centroids[1:]) / 2.0


def cell_bounds(points: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Prefix indices of the cells of sorted `points` split at `edges`: 0, then where each
    edge falls (a point equal to an edge belongs to the lower cell, as searchsorted(edges,
    point) says), then the number of points."""
    bounds = np.empty(edges.size + 2, dtype=np.int64)
    bounds[0] = 0
    bounds[-1] = points.size
    bounds[1:-1] = np.searchsorted(points, edges, side="right")
    return bounds


def cell_moments(points: np.ndarray, w_wp: np.ndarray, edges: np.ndarray):
    """(weights, sums) of the cells split at `edges`, from the prefix sums of the weights and
    of weight times point stacked as columns (both gathered in one call)."""
    both = w_wp[cell_bounds(points, edges)]
    cells = both[1:] - both[:-1]
    return cells[:, 0], cells[:, 1]


def lloyd_iterations(points, w_wp, centroids, iters, tol):
    """Weighted Lloyd from unique sorted centroids until none moves more than `tol`; empty
    cells are dropped."""
    for _ in range(iters):
        if centroids.size < 2:
            break
        counts, moments = cell_moments(points, w_wp, boundaries(centroids))
        if counts.all():  # (counts are sums of weights: > 0 or exactly 0)
            updated = moments / counts
            converged = np.abs(updated - centroids).max() <= tol
        else:  # empty cells are dropped
            keep = counts > 0
            updated = moments[keep] / counts[keep]
            converged = False
        centroids = updated
        if converged:
            break
    return centroids


def every_line_owns(centroids, lengths, lam):
    """The common case of kmeans_fit.ec_cells: (True, the edges) when every line of the rule
    "minimise (x - c_i)^2 + lam * L_i" owns a cell, else (False, nothing)."""
    none = np.empty(0)
    if centroids.size < 2:
        return False, none
    slopes = -2.0 * centroids
    offsets = centroids * centroids + lam * lengths
    gap = slopes[:-1] - slopes[1:]
    if not gap.min() > 0:
        return False, none
    cross = (offsets[1:] - offsets[:-1]) / gap
    if (cross[1:] > cross[:-1]).all() and -np.inf < cross[0] and cross[-1] < np.inf:
        return True, cross
    return False, none


def ec_step(points, w_wp, centroids, edges, total, tol):
    """One entropy-constrained Lloyd update from the cells at `edges`: the non-empty cells'
    means, their code lengths (-log2 of their share of `total`), and whether it converged."""
    counts, moments = cell_moments(points, w_wp, edges)
    keep = counts > 0
    updated = moments[keep] / counts[keep]
    lengths = code_lengths(counts[keep] / total)
    done = updated.size == centroids.size and np.max(np.abs(updated - centroids)) <= tol
    return updated, lengths, done


def code_lengths(shares):
    """-log2 of each share, rounded to 1/LENGTH_STEPS of a bit: the same bits with and without
    numba. numpy's log2 is SIMD code that differs from the C library's (numba's) in the last
    bit of about 0.2% of values, and a last bit could move a cell edge across a point, so the
    fits, and a pack's bytes, depended on when the kernels loaded. Rounded, the two agree
    except within reach of a rounding midpoint; there both take the C library's log2."""
    steps = -np.log2(shares) * LENGTH_STEPS
    rounded = np.round(steps)
    near = np.abs(np.abs(steps - rounded) - 0.5) < 1e-6  # (log2's last bits are ~1e-11 here)
    if near.any():
        for i in np.flatnonzero(near):
            rounded[i] = np.round(-math.log2(shares[i]) * LENGTH_STEPS)
    return rounded / LENGTH_STEPS


def ec_iterations(points, w_wp, centroids, lengths, lam, iters, tol, total):
    """Entropy-constrained Lloyd while every line owns a cell: (centroids, lengths, iterations
    done, finished); not finished leaves the rest to the loop over kmeans_fit.ec_cells."""
    for it in range(iters):
        owned, edges = every_line_owns(centroids, lengths, lam)
        if not owned:
            return centroids, lengths, it, False
        centroids, lengths, done = ec_step(points, w_wp, centroids, edges, total, tol)
        if done:
            return centroids, lengths, it + 1, True
    return centroids, lengths, iters, True
