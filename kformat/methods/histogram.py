"""A tensor's values as sorted weighted points, the input of the 1-D k-means fit: exact
values for small groups, uniform bins over the core of the distribution for large ones, far
outliers kept as exact points either way."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from . import kernels
from .chunks import CHUNK, map_chunks

FINE_BINS = 1 << 16
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Histogram:
    """Non-empty bins of a value histogram: their centres and counts, ascending. Bins are
    uniform over [core_lo, core_hi] (`width` wide); values outside it (the outliers past the
    TAIL quantiles, when there are far ones) are points of their own, exactly."""

    points: np.ndarray  # float64, ascending
    counts: np.ndarray  # float64
    lo: float
    hi: float
    core_lo: float = 0.0
    core_hi: float = 0.0
    width: float = 0.0
    # merged copies by their number of bins (_rebin): every fit of a width asks for one
    merged: dict = field(default_factory=dict, compare=False, repr=False)


# Above this many values the bins count an evenly strided sample (scaled up): 8M values put
# hundreds in every bin where the mass is, so the fit does not change measurably, at a
# fraction of the time. Extremes and outliers always come from every value.
SAMPLE_VALUES = 1 << 23
EXACT_POINTS = 1 << 16  # up to this many values, the "histogram" is the sorted values themselves
CORE_QUANTILE = 1e-3  # the core spans these quantiles, widened by half their distance each way


def _core(points: np.ndarray, counts: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    """The range binned uniformly: the 0.1%-99.9% quantile range widened by half its width on
    each side. Gaussian weights lie wholly inside it; far outliers (trained embeddings reach
    80 standard deviations) lie outside and are kept as exact points."""
    cdf = np.cumsum(counts)
    q_lo = points[min(int(np.searchsorted(cdf, CORE_QUANTILE * cdf[-1])), points.size - 1)]
    q_hi = points[min(int(np.searchsorted(cdf, (1 - CORE_QUANTILE) * cdf[-1])), points.size - 1)]
    spread = max(float(q_hi - q_lo), (hi - lo) * 1e-6)
    return max(lo, float(q_lo) - spread / 2), min(hi, float(q_hi) + spread / 2)


def histogram(
    values: np.ndarray, bins: int = FINE_BINS, weights: np.ndarray | None = None, sample: int = SAMPLE_VALUES
) -> Histogram:
    """The values' distribution as sorted weighted points.

    Up to EXACT_POINTS values it is the values themselves (unique, with counts). Above, counts
    over `bins` uniform bins, in chunks, points being the bin centres: fine enough that using
    centres instead of exact bin means changes nothing measurable (kmeans_codes.assign_binned
    measures it). When far outliers stretch the range, the bins
    would be too coarse where the mass is: a second pass bins only the core range (_core) and
    keeps the values outside it as exact points. With `weights` (importance, the shape of
    `values`) the counts are sums of weights, so the fit minimises the weighted error."""
    flat = values.reshape(-1)
    wflat = None if weights is None else np.ascontiguousarray(weights, dtype=np.float64).reshape(-1)
    lo, hi = value_range(flat)
    if hi == lo:
        total = float(flat.size) if wflat is None else float(wflat.sum())
        return Histogram(np.array([lo]), np.array([total]), lo, hi, lo, hi, 0.0)
    if flat.size <= EXACT_POINTS:
        if wflat is None:
            points, counts = _unique_counts(flat)
        else:
            points, inverse = np.unique(flat.astype(np.float64), return_inverse=True)
            counts = np.bincount(inverse.reshape(-1), weights=wflat, minlength=points.size)
        core_lo, core_hi = _core(points, counts, lo, hi)
        return Histogram(points, counts.astype(np.float64), lo, hi, core_lo, core_hi, 0.0)
    stride = max(1, flat.size // sample)
    counts = _counts(flat, lo, hi, bins, wflat, stride)
    width = (hi - lo) / bins
    keep = counts > 0
    core_lo, core_hi = _core(lo + (np.flatnonzero(keep) + 0.5) * width, counts[keep], lo, hi)
    if core_hi - core_lo >= (hi - lo) / 4:
        return _uniform(counts, lo, hi, lo, hi)
    core_lo = lo + np.floor((core_lo - lo) / width) * width  # on the first pass's bin edges
    core_hi = min(hi, lo + np.ceil((core_hi - lo) / width + 1) * width)

    def core_part(start: int, stop: int):
        chunk = flat[start:stop]
        inside = (chunk >= core_lo) & (chunk < core_hi)
        part_weights = None if wflat is None else wflat[start:stop]
        sampled = inside[::stride]
        counts = np.bincount(
            _bin_index(chunk[::stride][sampled], core_lo, core_hi, bins),
            None if part_weights is None else part_weights[::stride][sampled],
            minlength=bins,
        )
        outside = chunk[~inside]
        return counts, outside, np.ones(outside.size) if part_weights is None else part_weights[~inside]

    core = np.zeros(bins, dtype=np.float64)
    tails, tail_weights = [], []
    for counts_part, outside, outside_weights in map_chunks(core_part, flat.size, CHUNK - CHUNK % stride):
        core += counts_part * stride
        tails.append(outside)
        tail_weights.append(outside_weights)
    tail_points, inverse = np.unique(np.concatenate(tails).astype(np.float64), return_inverse=True)
    tail_counts = np.bincount(inverse.reshape(-1), np.concatenate(tail_weights), minlength=tail_points.size)
    inner = _uniform(core, core_lo, core_hi, lo, hi)
    below = tail_points < core_lo
    return Histogram(
        np.concatenate((tail_points[below], inner.points, tail_points[~below])),
        np.concatenate((tail_counts[below], inner.counts, tail_counts[~below])).astype(np.float64),
        lo,
        hi,
        core_lo,
        core_hi,
        inner.width,
    )


def _counts(flat: np.ndarray, lo: float, hi: float, bins: int, weights=None, stride: int = 1) -> np.ndarray:
    """Values per bin; with `stride` > 1, of every stride-th value, times stride."""
    counts = np.zeros(bins, dtype=np.int64 if weights is None else np.float64)

    def part(start: int, stop: int) -> np.ndarray:
        chunk_weights = None if weights is None else weights[start:stop:stride]
        sample = np.ascontiguousarray(flat[start:stop:stride])  # binned 1.6x faster than a strided view
        if chunk_weights is None:
            counted = _counted_in_c(sample, lo, hi, bins)
            if counted is not None:
                return counted
        return kernels.bincount(_bin_index(sample, lo, hi, bins), chunk_weights, bins)

    # a chunk holds CHUNK sampled values: fewer partial counts of every bin to add up
    for part_counts in map_chunks(part, flat.size, CHUNK * stride):  # in order: the same sums
        counts += part_counts.astype(counts.dtype)
    return counts * stride


def unique(values: np.ndarray) -> np.ndarray:
    """np.unique(values): the sorted distinct values, by numpy's own code asked for the counts
    too, so that no process imports numpy.ma for it: the plain call checks for a masked
    array, and the first in a process imported numpy.ma (8-13 ms; in every worker process
    of a pack again, and on the long pole's path)."""
    return np.unique(values, return_counts=True)[0]


def median(values: np.ndarray) -> float:
    """np.median of a 1-D array without NaNs, by numpy's steps (a partition, then the middle
    value or the mean of the middle two), without its check for NaNs in a masked array,
    which imports numpy.ma as np.unique's does."""
    half = values.size // 2
    if values.size % 2:
        return float(np.partition(values, half)[half])
    middle = np.partition(values, [half - 1, half])[half - 1 : half + 1]
    return float(np.mean(middle))


def _unique_counts(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(flat, return_counts=True), the values as float64: sorted in their own dtype
    (float32 sorts 5x faster than float64) and split into runs, 2-6x faster than np.unique
    on a row group's 49K values. Equal values (-0.0 and 0.0 among them) make one point.
    float32 values are counted by the C loops where built, a radix sort of their bits: 3x
    faster again (kernels_c.unique_floats; there -0.0 and 0.0 make the point 0.0)."""
    loops = kernels.c_loops()
    if loops is not None and flat.dtype == np.float32 and flat.flags.c_contiguous:
        found = loops.unique_floats(flat)
        if found is not None:
            return found
    ordered = np.sort(flat)
    starts = np.concatenate(([0], np.flatnonzero(ordered[1:] != ordered[:-1]) + 1))
    counts = np.diff(np.append(starts, ordered.size))
    return ordered[starts].astype(np.float64), counts


def value_range(flat: np.ndarray) -> tuple[float, float]:
    """(min, max) of a flat array (or an array-like of slices: ScaledRows), chunk by chunk on
    the pool; without a pass where the caller has just read them (known_range)."""
    known = getattr(_known, "range", None)
    if known is not None and isinstance(flat, np.ndarray) and known[0] == _identity(flat):
        return known[1]
    return joined_range(range_parts(flat))


def range_parts(flat: np.ndarray) -> list[tuple[np.generic, np.generic]]:
    """(min, max) of each chunk of a flat array (NaN where the chunk holds one)."""
    return map_chunks(lambda start, stop: (flat[start:stop].min(), flat[start:stop].max()), flat.size)


def joined_range(parts: list[tuple[np.generic, np.generic]]) -> tuple[float, float]:
    """value_range's (min, max) from range_parts (a NaN past the first chunk goes unseen)."""
    return float(min(lo for lo, _ in parts)), float(max(hi for _, hi in parts))


_known = threading.local()  # this thread's (array identity, (min, max)) within known_range


def _identity(flat: np.ndarray) -> tuple:
    return (flat.__array_interface__["data"][0], flat.size, flat.dtype.str, flat.strides)


@contextmanager
def known_range(flat: np.ndarray, span: tuple[float, float] | None) -> Iterator[None]:
    """Within the block, on this thread, value_range of `flat` (the same memory, size, dtype
    and strides, unchanged meanwhile) is `span` without a pass: the packer has just read it
    to check every value is finite, and a whole tensor's histogram read it again (VGG16's
    first FC layer: 20 ms a pass). A span of None (not read: check_finite's for other
    dtypes) changes nothing."""
    if span is None:
        yield
        return
    before = getattr(_known, "range", None)
    _known.range = (_identity(flat), span)
    try:
        yield
    finally:
        _known.range = before


def _uniform(counts: np.ndarray, core_lo: float, core_hi: float, lo: float, hi: float) -> Histogram:
    bins = counts.size
    keep = counts > 0
    width = (core_hi - core_lo) / bins
    centres = core_lo + (np.arange(bins) + 0.5) * width
    return Histogram(centres[keep], counts[keep].astype(np.float64), lo, hi, core_lo, core_hi, width)


def _counted_in_c(sample: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray | None:
    """_bin_index's float32 steps and their bincount in one pass of the C loops, where built and
    the values take the float32 path; None otherwise (or where a value falls outside)."""
    loops = kernels.c_loops()
    if loops is None or _scaled_in(sample, lo, hi, bins) != np.float32:
        return None
    counts = np.zeros(bins, dtype=np.int64)
    return counts if loops.bin_floats(sample, lo, bins / (hi - lo), counts) else None


def _scaled_in(chunk: np.ndarray, lo: float, hi: float, bins: int) -> type:
    """The dtype _bin_index scales values in: their own for float32, float64 otherwise, and
    for a range of subnormals (its scale past float32's range)."""
    if chunk.dtype != np.float32 or bins / (float(hi) - float(lo)) > FLOAT32_MAX:
        return np.float64
    return np.float32


def _bin_index(chunk: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    dtype = _scaled_in(chunk, lo, hi, bins)
    scaled = np.subtract(chunk, dtype(lo), dtype=dtype)
    scaled *= dtype(bins / (hi - lo))
    np.minimum(scaled, bins - 1, out=scaled)  # (never below 0: lo is at most the least value)
    return scaled.astype(np.int32)  # 3x faster to make than intp; take and bincount widen it cheaply


def _rebin(hist: Histogram, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge a fine histogram into at most `bins` coarse uniform bins over its core range
    (means, counts); outlier points outside the core stay as they are. Kept on the histogram
    (read-only): its fits of each width and the seed memo's key ask for the same ones."""
    if hist.points.size <= bins:
        return hist.points, hist.counts
    if bins not in hist.merged:
        points, counts = _merge(hist, bins)
        points.setflags(write=False)
        counts.setflags(write=False)
        hist.merged[bins] = (points, counts)
    return hist.merged[bins]


def _merge(hist: Histogram, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """The points inside the core merged into uniform bins (their weighted means and total
    counts); the points outside stay as they are. Points are sorted, so the core is one run
    of them and each bin's members are consecutive: the bins are sums over runs (reduceat),
    not scattered adds (bincount), 2x faster on a row group's 49K exact points."""
    points, counts = hist.points, hist.counts
    first = int(np.searchsorted(points, hist.core_lo, side="left"))
    stop = int(np.searchsorted(points, hist.core_hi, side="right"))
    inner, weights = points[first:stop], counts[first:stop]
    if inner.size == 0:
        return points, counts
    span = hist.core_hi - hist.core_lo
    idx = np.minimum(((inner - hist.core_lo) * (bins / span)).astype(np.int64), bins - 1)  # ascending
    bounds = np.searchsorted(idx, np.arange(bins + 1))  # each bin's run [bounds[b], bounds[b + 1])
    _, totals, sums = run_sums(bounds, weights, inner)
    keep = totals > 0
    return (
        np.concatenate((points[:first], sums[keep] / totals[keep], points[stop:])),
        np.concatenate((counts[:first], totals[keep], counts[stop:])),
    )


def run_sums(bounds: np.ndarray, weights: np.ndarray, values: np.ndarray):
    """Sums over the runs [bounds[i], bounds[i + 1]) of sorted points (bounds ascending, from
    0 to the number of points): which runs hold a point, and those runs' total weight and
    weight x value, each added in order over the run (np.add.reduceat from where each
    non-empty run begins: the last one reaches the end)."""
    filled = bounds[1:] > bounds[:-1]
    starts = bounds[:-1][filled]
    return filled, np.add.reduceat(weights, starts), np.add.reduceat(weights * values, starts)
