"""Optimal 1-D k-means of weighted sorted points, by dynamic programming.

In one dimension the best k clusters are k runs of consecutive sorted points, so the optimum
is a shortest path: D[m][j], the least error of the first j points in m clusters, is
min over i of D[m-1][i] + cost(i, j), with cost(i, j) the squared error of points i..j-1
around their mean (from prefix sums). That cost is Monge, so the best split point moves
right as j does, and each layer is solved by divide and conquer in O(n log n), each search
starting no earlier than the previous layer's split (Knuth's bound; 1.5x at k = 256) (the same
optimum the SMAWK-based `kmeans1d` finds in O(n)). Every recursion depth of a layer is one
vectorised numpy pass over about 2n candidate splits, so k = 256 over 8192 points takes a
fraction of a second.
"""

from __future__ import annotations

import threading

import numpy as np


def _prefix(problems: list[tuple[np.ndarray, np.ndarray]]):
    """Prefix sums of every problem, concatenated: problem g's prefix index t sits at
    base[g] + t, so cost(i, j) of two indices of one problem is a difference, as for one."""
    w, s1, s2, base = [], [], [], []
    at = 0
    for points, weights in problems:
        x = points - float(np.average(points, weights=weights))  # centred: sums keep precision
        zero = np.zeros(1)
        w.append(np.concatenate((zero, np.cumsum(weights))))
        s1.append(np.concatenate((zero, np.cumsum(weights * x))))
        s2.append(np.concatenate((zero, np.cumsum(weights * x * x))))
        base.append(at)
        at += points.size + 1
    return np.concatenate(w), np.concatenate(s1), np.concatenate(s2), np.array(base)


def _cost(w, s1, s2, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Squared error of points i..j-1 around their weighted mean (i < j)."""
    return _cost_to(w, s1, s2, i, w[j], s1[j], s2[j])


def _cost_to(w, s1, s2, i: np.ndarray, wj: np.ndarray, s1j: np.ndarray, s2j: np.ndarray) -> np.ndarray:
    """_cost(i, j) given the prefix sums at j."""
    dw = wj - w[i]
    d1 = s1j - s1[i]
    d1 *= d1
    np.divide(d1, dw, out=d1, where=dw > 0)
    d1[dw <= 0] = 0.0
    cost = s2j - s2[i]
    cost -= d1
    return np.maximum(cost, 0.0, out=cost)


def _layer(previous: np.ndarray, jl, jr, ol, orr, w, s1, s2, floor=None) -> tuple[np.ndarray, np.ndarray]:
    """One layer for every problem at once: D[m][j] for j in jl..jr of each problem (split
    points searched in ol..orr), from D[m-1] (`previous`), and the split achieving it (the
    first, on ties). `floor`, the previous layer's splits, bounds each search from below:
    with one more cluster the last one never starts earlier (Monge costs: Knuth's bound)."""
    best = np.full(previous.size, np.inf)
    split = np.zeros(previous.size, dtype=np.int64)
    while jl.size:
        mid = (jl + jr) // 2
        hi = np.minimum(orr, mid - 1)
        lo = ol if floor is None else np.minimum(np.maximum(ol, floor[mid]), hi)
        lengths = hi - lo + 1
        starts = np.cumsum(lengths) - lengths
        total = int(starts[-1] + lengths[-1])
        i = np.arange(total) + np.repeat(lo - starts, lengths)
        at = np.repeat(mid, lengths)
        values = previous[i] + _cost_to(w, s1, s2, i, w[at], s1[at], s2[at])
        lowest = np.minimum.reduceat(values, starts)
        position = np.where(values <= np.repeat(lowest, lengths), np.arange(total), total)
        chosen = i[np.minimum.reduceat(position, starts)]
        best[mid] = lowest
        split[mid] = chosen
        # the halves left and right of each mid, searched left and right of its split
        jl, jr = np.concatenate((jl, mid + 1)), np.concatenate((mid - 1, jr))
        ol, orr = np.concatenate((ol, chosen)), np.concatenate((chosen, orr))
        keep = jl <= jr
        jl, jr, ol, orr = jl[keep], jr[keep], ol[keep], orr[keep]
    return best, split


DENSE_CELLS = 1 << 19  # one problem with at most this many (i, j) pairs: every pair at once


def _dense_layers(first: np.ndarray, w, s1, s2, k: int) -> list[np.ndarray]:
    """The splits of layers 2..k of one problem (prefix indices 0..n) from every (i, j) pair
    at once: three big numpy passes a layer instead of a few hundred small ones, so a 4-bit
    seed (k = 16 over 512 points) spends its time outside the GIL. The same values and the
    same first minima as _layer (cost(i, j) computed the same way, ties to the lowest i)."""
    size = first.size
    i = np.arange(size)
    cost = _cost_to(w, s1, s2, i[None, :], w[:, None], s1[:, None], s2[:, None])  # [j, i]
    cost[i[None, :] >= i[:, None]] = np.inf  # a cluster holds at least one point
    layer, splits = first.copy(), []
    layer[:1] = np.inf  # one cluster over no points
    values = np.empty_like(cost)
    for m in range(2, k + 1):
        np.add(cost, layer[None, :], out=values)  # D[m-1][i] + cost(i, j): inf where unreachable
        split = np.argmin(values, axis=1)
        layer = values[i, split]
        layer[:m] = np.inf  # j < m points cannot fill m clusters
        splits.append(split)
    return splits


def optimal_centroids(points: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """The k centroids (sorted, fewer when there are fewer points) that minimise the weighted
    squared error of `points` (sorted ascending), exactly."""
    return optimal_centroids_batch([(points, weights)], k)[0]


# One programme at a time: its many small numpy passes hold the GIL between them, and two
# threads running programmes at once passed the GIL back and forth at every pass (an 8-bit
# pack of VGG16 took 1.4x longer with --jobs 2 than with --jobs 1).
_ONE_AT_A_TIME = threading.Lock()


def optimal_centroids_batch(problems: list[tuple[np.ndarray, np.ndarray]], k: int) -> list[np.ndarray]:
    """optimal_centroids of several problems (the groups of a tensor) in the same numpy
    passes, so many small groups cost little more than one."""
    with _ONE_AT_A_TIME:
        return _solve(problems, k)


def _solve(problems: list[tuple[np.ndarray, np.ndarray]], k: int) -> list[np.ndarray]:
    out: list[np.ndarray | None] = [None] * len(problems)
    todo = []
    for g, (points, weights) in enumerate(problems):
        if points.size <= k:
            out[g] = points.astype(np.float64).copy()
        else:
            todo.append(g)
    if todo:
        chosen = [(problems[g][0].astype(np.float64), problems[g][1].astype(np.float64)) for g in todo]
        sizes = np.array([p.size for p, _ in chosen])
        w, s1, s2, base = _prefix(chosen)
        start = np.repeat(base, sizes + 1)  # each prefix index's problem start
        layer = _cost(w, s1, s2, start, np.arange(w.size))
        if len(todo) == 1 and w.size**2 <= DENSE_CELLS:
            splits = _dense_layers(layer, w, s1, s2, k)
        else:
            splits = []
            for m in range(2, k + 1):
                floor = splits[-1] if splits else None
                jl, jr = base + m, base + sizes
                layer, split = _layer(layer, jl, jr, base + m - 1, base + sizes - 1, w, s1, s2, floor)
                splits.append(split)
        for index, g, (points, weights) in zip(range(len(todo)), todo, chosen):
            bounds = [int(base[index] + sizes[index])]
            for split in reversed(splits):
                bounds.append(int(split[bounds[-1]]))
            bounds.append(int(base[index]))
            bounds = np.array(bounds[::-1]) - base[index]
            weighted = np.concatenate(([0.0], np.cumsum(weights * points)))
            total = np.concatenate(([0.0], np.cumsum(weights)))
            a, b = bounds[:-1], bounds[1:]
            keep = total[b] > total[a]
            out[g] = (weighted[b] - weighted[a])[keep] / (total[b] - total[a])[keep]
    return out
