"""The fits' inner loops compiled by numba, without the GIL (imported by kernels, never directly).

Lloyd and entropy-constrained Lloyd are fit_loops' own functions, compiled. The programme's
layers are written here, as scalar loops: the numpy code (kmeans_dp) does the same
arithmetic in the same order (no fast-math), vectorised, so both return the same floats
and the same first minima; tests compare them.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.extending import register_jitable

from . import fit_loops

STACK = 256  # pending halves of one layer's divide and conquer: about 2 log2(points) of them


@njit(nogil=True, cache=True)
def _cost_to(w, s1, s2, i, wj, s1j, s2j):  # kmeans_dp._cost_to of one pair
    dw = wj - w[i]
    d1 = s1j - s1[i]
    d1 *= d1
    d1 = d1 / dw if dw > 0 else 0.0
    cost = s2j - s2[i]
    cost -= d1
    return cost if cost > 0.0 or cost != cost else 0.0  # np.maximum(cost, 0): NaN stays


@njit(nogil=True, cache=True)
def _layer_of(previous, best, split, jl, jr, ol, orr, w, s1, s2, floor, has_floor):
    """kmeans_dp._layer for one problem, depth first (each half's search depends only on its
    parent's split, so the order does not change a result)."""
    stack = np.empty((STACK, 4), dtype=np.int64)
    stack[0, 0], stack[0, 1], stack[0, 2], stack[0, 3] = jl, jr, ol, orr
    top = 1
    while top:
        top -= 1
        a, b, lo0, hi0 = stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3]
        if a > b:
            continue
        mid = (a + b) // 2
        hi = min(hi0, mid - 1)
        lo = min(max(lo0, floor[mid]), hi) if has_floor else lo0
        wj, s1j, s2j = w[mid], s1[mid], s2[mid]
        lowest = previous[lo] + _cost_to(w, s1, s2, lo, wj, s1j, s2j)
        chosen = lo
        for i in range(lo + 1, hi + 1):
            value = previous[i] + _cost_to(w, s1, s2, i, wj, s1j, s2j)
            if value < lowest:
                lowest, chosen = value, i
        best[mid], split[mid] = lowest, chosen
        stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3] = mid + 1, b, chosen, hi0
        stack[top + 1, 0], stack[top + 1, 1], stack[top + 1, 2], stack[top + 1, 3] = a, mid - 1, lo0, chosen
        top += 2


@njit(nogil=True, cache=True)
def dp_extend(layer, w, s1, s2, base, sizes, chosen, m_from, m_to, floor, has_floor):
    """Programme.extend's layers m_from..m_to for the problems `chosen`: the last layer, and
    each layer's splits [m, prefix index] and errors [m, problem]."""
    count = m_to - m_from + 1
    splits = np.zeros((count, layer.size), dtype=np.int64)
    errors = np.full((count, base.size), np.inf)
    for step in range(count):
        m = m_from + step
        best = np.full(layer.size, np.inf)
        for g in chosen:
            n = sizes[g]
            if n < m:  # m clusters need m points
                continue
            b = base[g]
            _layer_of(
                layer, best, splits[step], b + m, b + n, b + m - 1, b + n - 1, w, s1, s2, floor, has_floor
            )
            errors[step, g] = best[b + n]
        layer = best
        floor, has_floor = splits[step], True
    return layer, splits, errors


@njit(nogil=True, cache=True)
def dp_dense(first, w, s1, s2, k):
    """kmeans_dp._dense_layers (one problem, every split i < j searched, ties to the lowest):
    layer k, the splits [m, j] and each layer's error over all points."""
    size = first.size
    layer = first.copy()
    layer[0] = np.inf  # one cluster over no points
    splits = np.zeros((k - 1, size), dtype=np.int64)
    ends = np.empty(k - 1)
    for m in range(2, k + 1):
        best = np.empty(size)
        for j in range(size):
            wj, s1j, s2j = w[j], s1[j], s2[j]
            lowest = _cost_to(w, s1, s2, 0, wj, s1j, s2j) + layer[0] if j > 0 else np.inf
            chosen = 0
            for i in range(1, j):
                value = _cost_to(w, s1, s2, i, wj, s1j, s2j) + layer[i]
                if value < lowest:
                    lowest, chosen = value, i
            best[j], splits[m - 2, j] = lowest, chosen
        best[:m] = np.inf  # j < m points cannot fill m clusters
        ends[m - 2] = best[-1]
        layer = best
    return layer, splits, ends


# fit_loops' Lloyd loops, the same functions kmeans_fit runs without numba
for _helper in (
    fit_loops.boundaries,
    fit_loops.cell_bounds,
    fit_loops.cell_moments,
    fit_loops.every_line_owns,
    fit_loops.ec_step,
    fit_loops.code_lengths,
):
    register_jitable(_helper)  # compiled where the loops below call them
lloyd_iterations = njit(nogil=True, cache=True)(fit_loops.lloyd_iterations)
ec_iterations = njit(nogil=True, cache=True)(fit_loops.ec_iterations)


@njit(nogil=True, cache=True)
def count_bins(index, bins):
    """(np.bincount(index, minlength=bins), True), or (..., False) when an index falls
    outside [0, bins) (the caller then lets numpy say so)."""
    out = np.zeros(bins, np.int64)
    for i in range(index.size):
        k = index[i]
        if k < 0 or k >= bins:
            return out, False
        out[k] += 1
    return out, True


@njit(nogil=True, cache=True)
def sum_bins(index, weights, bins):
    """count_bins with weights: np.bincount's sums, added in the same order."""
    out = np.zeros(bins, np.float64)
    for i in range(index.size):
        k = index[i]
        if k < 0 or k >= bins:
            return out, False
        out[k] += weights[i]
    return out, True


@njit(nogil=True, cache=True)
def prefix_sums(points, weights, out):
    """kernels.prefix_sums: the running sums of the weights and of weight x point, in order."""
    total = 0.0
    moment = 0.0
    for i in range(points.size):
        total += weights[i]
        moment += weights[i] * points[i]
        out[i + 1, 0] = total
        out[i + 1, 1] = moment


def warm() -> None:
    """Load (or, the first time, compile and cache) every kernel for the argument types the
    fits pass, on tiny inputs, so that no fit waits for it."""
    points = np.linspace(0.0, 1.0, 8)
    weights = np.ones(8)
    w = np.concatenate((np.zeros(1), np.cumsum(weights)))
    wp = np.concatenate((np.zeros(1), np.cumsum(weights * points)))
    s2 = np.concatenate((np.zeros(1), np.cumsum(weights * points * points)))
    w_wp = np.stack((w, wp), axis=1)
    first = np.zeros(9)
    index = np.zeros(1, dtype=np.int64)
    dp_extend(first, w, wp, s2, index, index + 8, index, 2, 3, index, False)
    dp_dense(first, w, wp, s2, 3)
    lloyd_iterations(points, w_wp, points[::3].copy(), 5, 1e-9)
    ec_iterations(points, w_wp, points[::3].copy(), np.ones(3), 0.01, 5, 1e-9, 8.0)
    bins = np.zeros(4, dtype=np.int32)
    count_bins(bins, 2)
    sum_bins(bins, weights[:4], 2)
    prefix_sums(points, weights, np.zeros((9, 2)))
