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

import contextlib
import os
import threading

import numpy as np

from . import kernels


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


def _layer(previous: np.ndarray, jl, jr, ol, orr, w, s1, s2, floor, best, split) -> None:
    """One layer for every problem at once: D[m][j] for j in jl..jr of each problem (split
    points searched in ol..orr), from D[m-1] (`previous`), and the split achieving it (the
    first, on ties), written into `best` and `split` at those j. `floor` (or None), the
    previous layer's splits, bounds each search from below: with one more cluster the last
    one never starts earlier (Monge costs: Knuth's bound)."""
    while jl.size:
        mid = (jl + jr) // 2
        hi = np.minimum(orr, mid - 1)
        lo = ol if floor is None else np.minimum(np.maximum(ol, floor[mid]), hi)
        lengths = hi - lo + 1
        starts = np.cumsum(lengths) - lengths
        total = int(starts[-1] + lengths[-1])
        i = np.repeat(lo - starts, lengths)
        i += np.arange(total)
        # the prefix sums at each mid repeated over its candidates (not gathered at a repeated
        # index), and each segment's first minimum from the positions equal to its least
        # value: 0.91-0.95x the time of the index gathers and a where over every candidate
        at_mid = (np.repeat(w[mid], lengths), np.repeat(s1[mid], lengths), np.repeat(s2[mid], lengths))
        values = _cost_to(w, s1, s2, i, *at_mid)
        values += previous[i]
        lowest = np.minimum.reduceat(values, starts)
        at_lowest = np.flatnonzero(values == np.repeat(lowest, lengths))
        chosen = i[at_lowest[np.searchsorted(at_lowest, starts)]]
        best[mid] = lowest
        split[mid] = chosen
        # the halves left and right of each mid, searched left and right of its split
        jl, jr = np.concatenate((jl, mid + 1)), np.concatenate((mid - 1, jr))
        ol, orr = np.concatenate((ol, chosen)), np.concatenate((chosen, orr))
        keep = jl <= jr
        jl, jr, ol, orr = jl[keep], jr[keep], ol[keep], orr[keep]


DENSE_CELLS = 1 << 19  # one problem with at most this many (i, j) pairs: every pair at once
# Points of the problems one _layer call searches together, so that its passes' arrays stay
# in cache: all 477 groups of an embedding's 4-bit seeds at once (512 points each) took
# 1.36 s, in runs of 2^14 points (32 problems) 0.52 s (2^13: 0.56 s, 2^15: 0.52 s but 120
# problems 1.4x slower than in runs of 2^14), the same splits.
LAYER_POINTS = 1 << 14


def _runs(chosen: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
    """`chosen` cut into runs of problems of about LAYER_POINTS points (at least one each)."""
    ends = np.cumsum(sizes[chosen]) // LAYER_POINTS
    cuts = np.flatnonzero(np.diff(ends)) + 1
    return [part for part in np.split(chosen, cuts) if part.size]


def _dense_layers(first: np.ndarray, w, s1, s2, k: int) -> tuple[list[np.ndarray], list[float], np.ndarray]:
    """The splits of layers 2..k of one problem (prefix indices 0..n) from every (i, j) pair
    at once, each layer's least error over all n points, and layer k: three big numpy passes
    a layer instead of a few hundred small ones, so a 4-bit seed (k = 16 over 512 points)
    spends its time outside the GIL. The same values and the same first minima as _layer
    (cost(i, j) computed the same way, ties to the lowest i)."""
    size = first.size
    i = np.arange(size)
    cost = _cost_to(w, s1, s2, i[None, :], w[:, None], s1[:, None], s2[:, None])  # [j, i]
    cost[i[None, :] >= i[:, None]] = np.inf  # a cluster holds at least one point
    layer, splits, ends = first.copy(), [], []
    layer[:1] = np.inf  # one cluster over no points
    values = np.empty_like(cost)
    for m in range(2, k + 1):
        np.add(cost, layer[None, :], out=values)  # D[m-1][i] + cost(i, j): inf where unreachable
        split = np.argmin(values, axis=1)
        layer = values[i, split]
        layer[:m] = np.inf  # j < m points cannot fill m clusters
        splits.append(split)
        ends.append(float(layer[-1]))
    return splits, ends, layer


class Programme:
    """The dynamic programme of a batch of problems (sorted float64 points, weights), grown
    one layer (one more cluster) at a time: each problem's least error with m clusters, and
    the centroids achieving it, for every m computed so far. Problems with fewer points
    than m clusters, or left out of `extend`, have error inf there."""

    def __init__(self, problems: list[tuple[np.ndarray, np.ndarray]]):
        self.problems = problems
        self.sizes = np.array([p.size for p, _ in problems])
        self.w, self.s1, self.s2, self.base = _prefix(problems)
        start = np.repeat(self.base, self.sizes + 1)  # each prefix index's problem start
        self.layer = _cost(self.w, self.s1, self.s2, start, np.arange(self.w.size))
        self.splits: list[np.ndarray] = []
        self.errors = [self.layer[self.base + self.sizes]]  # errors[m - 1][g]: g in m clusters

    @property
    def depth(self) -> int:
        """The most clusters computed so far."""
        return len(self.errors)

    def extend(self, k: int, active: np.ndarray | None = None) -> None:
        """Layers up to k clusters, for the problems `active` (indices; default all)."""
        base, sizes = self.base, self.sizes
        if k <= self.depth:
            return
        compiled = kernels.compiled()
        dense = self.depth == 1 and base.size == 1 and self.w.size**2 <= DENSE_CELLS and k > 1
        if compiled is not None:  # every layer in one call, without the GIL: the same numbers
            self._extend_compiled(compiled, k, active, dense)
            return
        with kernels.timed_numpy_loop():
            if dense:
                splits, ends, self.layer = _dense_layers(self.layer, self.w, self.s1, self.s2, k)
                self.splits += splits
                self.errors += [np.array([end]) for end in ends]
                return
            chosen = np.arange(base.size) if active is None else np.asarray(active)
            for m in range(self.depth + 1, k + 1):
                chosen = chosen[sizes[chosen] >= m]  # m clusters need m points
                floor = self.splits[-1] if self.splits else None
                best, split = np.full(self.w.size, np.inf), np.zeros(self.w.size, dtype=np.int64)
                for part in _runs(chosen, sizes):
                    b, n = base[part], sizes[part]
                    args = (b + m, b + n, b + m - 1, b + n - 1, self.w, self.s1, self.s2, floor)
                    _layer(self.layer, *args, best, split)
                self.layer = best
                self.splits.append(split)
                errors = np.full(base.size, np.inf)
                errors[chosen] = self.layer[base[chosen] + sizes[chosen]]
                self.errors.append(errors)

    def _extend_compiled(self, compiled, k: int, active: np.ndarray | None, dense: bool) -> None:
        """extend() by the compiled loops (kernels_c or kernels_numba): the dense path's or
        divide and conquer's splits."""
        if dense:
            self.layer, splits, ends = compiled.dp_dense(self.layer, self.w, self.s1, self.s2, k)
            self.splits += list(splits)
            self.errors += [ends[m : m + 1] for m in range(ends.size)]
            return
        chosen = np.arange(self.base.size) if active is None else np.asarray(active, dtype=np.int64)
        floor = self.splits[-1] if self.splits else np.zeros(1, dtype=np.int64)
        args = (self.layer, self.w, self.s1, self.s2, self.base, self.sizes, np.ascontiguousarray(chosen))
        self.layer, splits, errors = compiled.dp_extend(
            *args, self.depth + 1, k, np.ascontiguousarray(floor), bool(self.splits)
        )
        self.splits += list(splits)
        self.errors += list(errors)

    def bounds(self, g: int, m: int) -> np.ndarray:
        """Where problem g's best m clusters start (indices into its points), then its size."""
        start = int(self.base[g])
        bounds = [start + int(self.sizes[g])]
        for split in reversed(self.splits[: m - 1]):
            bounds.append(int(split[bounds[-1]]))
        bounds.append(start)
        return np.array(bounds[::-1]) - start

    def centroids(self, g: int, m: int) -> np.ndarray:
        """The sorted centroids of problem g's best m clusters (m <= depth, m <= its points)."""
        return means(*self.problems[g], self.bounds(g, m))


def means(points: np.ndarray, weights: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """The weighted means of the runs of points between consecutive `bounds` (empty runs and
    runs of zero weight dropped)."""
    weighted = np.concatenate(([0.0], np.cumsum(weights * points)))
    total = np.concatenate(([0.0], np.cumsum(weights)))
    a, b = bounds[:-1], bounds[1:]
    keep = total[b] > total[a]
    return (weighted[b] - weighted[a])[keep] / (total[b] - total[a])[keep]


def optimal_centroids(points: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """The k centroids (sorted, fewer when there are fewer points) that minimise the weighted
    squared error of `points` (sorted ascending), exactly."""
    return optimal_centroids_batch([(points, weights)], k)[0]


# One programme at a time: its many small numpy passes hold the GIL between them, and two
# threads running programmes at once passed the GIL back and forth at every pass (an 8-bit
# pack of VGG16 took 1.4x longer with --jobs 2 than with --jobs 1).
ONE_AT_A_TIME = threading.Lock()


def _new_lock_after_fork() -> None:  # another thread may have held it when this process forked
    global ONE_AT_A_TIME
    ONE_AT_A_TIME = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_after_fork)


def one_at_a_time():
    """ONE_AT_A_TIME for the numpy loops; nothing for the compiled ones, which free the GIL."""
    return contextlib.nullcontext() if kernels.compiled() is not None else ONE_AT_A_TIME


def optimal_centroids_batch(problems: list[tuple[np.ndarray, np.ndarray]], k: int) -> list[np.ndarray]:
    """optimal_centroids of several problems (the groups of a tensor) in the same numpy
    passes, so many small groups cost little more than one."""
    out: list[np.ndarray | None] = [None] * len(problems)
    todo = []
    for g, (points, weights) in enumerate(problems):
        if points.size <= k:
            out[g] = points.astype(np.float64).copy()
        else:
            todo.append(g)
    if todo:
        chosen = [(problems[g][0].astype(np.float64), problems[g][1].astype(np.float64)) for g in todo]
        with one_at_a_time():
            programme = Programme(chosen)
            programme.extend(k)
        for index, g in enumerate(todo):
            out[g] = programme.centroids(index, k)
    return out
