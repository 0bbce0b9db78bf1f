"""Codes for values, given a codebook's cell edges: the assignment pass of k-means.

A value's code is the number of cell edges below it (searchsorted). Over millions of values
a binary search is slow, so a table says, for a small interval of values, how many edges lie
below it and which one edge (if any) lies inside it: then code = below + (value > inside),
two gathers and a compare per value, exact. The intervals are, fastest first:

1. for float32 values, the 2^16 intervals of their top 16 bits (the bfloat16 truncation),
   read in place, with no arithmetic per value (1.6x faster than the grid); usable when no
   interval where the values lie holds two edges (relative width 2^-7: 4-bit codebooks
   always, 8-bit ones mostly);
2. a uniform grid of LOOKUP_BINS bins over the values' range (subtract, scale, truncate);
3. one compare per edge, counted (_count_below), when edges are too close even for the grid.

With few edges (LOOKUP_EDGES) and for inputs too small to pay for a table (a row group's),
the compares are the fastest: 0.08 ns per value and edge here, 1.2 ns per value for 4-bit
codebooks, where numpy's searchsorted takes 16 ns (42 ns at 8 bits, against 21).
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import numpy as np

from . import kernels
from .base import MadeAsRead
from .chunks import map_chunks
from .fit_loops import boundaries  # noqa: F401 (also used here)
from .histogram import Histogram, _bin_index, run_sums, value_range
from .metrics import squares

LOOKUP_BINS = 1 << 16
LOOKUP_EDGES = 15  # with fewer edges, compares beat the tables' two gathers
_TOP = 1 if np.little_endian else 0  # the uint16 half of a float32 that holds sign, exponent


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


@functools.cache
def _value_rank() -> np.ndarray:
    """Each top-16-bit pattern's rank in value order: the float32s sharing a pattern form an
    interval, and ranks order those intervals (negative patterns reversed, then positive)."""
    pattern = np.arange(1 << 16)
    return np.where(pattern & 0x8000, pattern ^ 0xFFFF, pattern | 0x8000)


def _rank(values: np.ndarray) -> np.ndarray:
    return _value_rank()[np.ascontiguousarray(values, dtype=np.float32).view(np.uint32) >> 16]


def _top_half_lookup(edges: np.ndarray, span):
    """Per top-16-bit pattern of a float32: how many edges lie below its interval, and the one
    edge inside it (or +inf); None when an interval the values can reach (within `span`, or
    anywhere without one) holds two edges. `edges` is float32, sorted, not empty.

    Built in value-rank order (a count per interval and its running sum), then gathered
    into pattern order: no search per pattern."""
    edges = edges + np.float32(0)  # -0.0 -> +0.0: the same cut, in the interval of +0.0
    rank = _rank(edges)
    held = np.bincount(rank, minlength=1 << 16)
    reached = held
    if span is not None:  # the ranks from the least value's interval to the greatest's
        lo, hi = np.float32(span[0]), np.float32(span[1])
        lo = lo if lo <= span[0] else np.nextafter(lo, np.float32(-np.inf))  # never inside the span
        hi = hi if hi >= span[1] else np.nextafter(hi, np.float32(np.inf))
        first, last = _rank(np.array([lo, hi], dtype=np.float32))
        reached = held[first : last + 1]
    if reached.max() > 1:
        return None
    inside = np.full(1 << 16, np.inf, dtype=np.float32)
    inside[rank] = edges
    held = held.astype(np.uint8 if edges.size < 256 else np.int16)  # the counts fit: k <= 256
    below = np.cumsum(held, dtype=held.dtype)
    below -= held
    order = _value_rank()
    return below[order], inside[order]


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


def _pays_for_table(values: int, edges: np.ndarray) -> bool:
    """Whether a lookup table pays for this many values and edges (it costs about as much as
    2^16 values; with few edges, compares are faster)."""
    return values >= LOOKUP_BINS and edges.size >= LOOKUP_EDGES


def _lookups(flat: np.ndarray, edges: np.ndarray, span) -> tuple:
    """(top, grid, lo, hi): the table _coded looks codes up in for these values (module
    docstring), or None for both where one does not pay (_pays_for_table)."""
    top = grid = None
    lo = hi = 0.0
    if _pays_for_table(flat.size, edges):
        if flat.dtype == np.float32 and flat.flags.c_contiguous:
            top = _top_half_lookup(edges, span)
        if top is None:
            lo, hi = value_range(flat) if span is None else span
            if hi > lo:
                grid = _edge_lookup(edges, lo, hi, LOOKUP_BINS)
    return top, grid, lo, hi


def _coded(values: np.ndarray, centroids: np.ndarray, edges, span, collect=None, out=None, lookups=None):
    """Codes for every value (nearest centroid, or by explicit cell edges), in chunks, and
    collect(chunk, codes) of every chunk while it is in cache. `span` is the values' (min,
    max) when the caller knows it. Codes go to `out` (contiguous uint8, the values' shape)
    when given. `lookups` is _lookups' table where the caller keeps one for many calls with
    these edges and span (CodesLater's slices)."""
    flat = values.reshape(-1)
    codes = np.empty(flat.size, dtype=np.uint8) if out is None else out.reshape(-1)
    edges = boundaries(centroids) if edges is None else edges
    edges = edges.astype(_edge_dtype(values))
    top, grid, lo, hi = _lookups(flat, edges, span) if lookups is None else lookups

    ready = _in_c(flat)

    def part(start: int, stop: int):
        chunk = flat[start:stop]
        out = codes[start:stop]
        if top is not None:  # the top 16 bits of each float32, read in place
            if ready is not None and top[0].dtype == np.uint8:
                ready.top_codes(chunk, top[0], top[1], out)
            else:
                idx = chunk.view(np.uint16)[_TOP::2].astype(np.intp)
                np.add(np.take(top[0], idx), chunk > np.take(top[1], idx), out=out, casting="unsafe")
        elif grid is not None:
            idx = _bin_index(chunk, lo, hi, LOOKUP_BINS)
            np.add(np.take(grid[0], idx), chunk > np.take(grid[1], idx), out=out, casting="unsafe")
        elif ready is None or not ready.count_codes(chunk, edges, out):
            _count_below(chunk, edges, out)
        return None if collect is None else collect(chunk, out)

    return codes.reshape(values.shape), map_chunks(part, flat.size)  # parts in chunk order


def _in_c(flat: np.ndarray):
    """The C loops, where they are built and take these values (float32, contiguous, codes
    written in place): one pass per chunk without the GIL, where numpy's lookup made an
    8-byte index per value and gathered twice, and a grid and compares where numpy compared
    every value with every one of many edges (the same codes: integers)."""
    ready = kernels.compiled()
    if ready is None or not hasattr(ready, "top_codes") or flat.dtype != np.float32:
        return None
    return ready if flat.flags.c_contiguous else None


def _count_below(values: np.ndarray, edges: np.ndarray, out: np.ndarray) -> None:
    """out = how many edges lie below each value, np.searchsorted(edges, values) (side left):
    value > edge, counted edge by edge."""
    out[...] = 0
    above = np.empty(values.shape, dtype=bool)
    for edge in edges:
        np.greater(values, edge, out=above)
        out += above


def codes_of(values: np.ndarray, centroids: np.ndarray, edges: np.ndarray | None = None) -> np.ndarray:
    """The codes assign gives, alone: no counts, sums or power (bit allocation's probes,
    which count their codes themselves; the per-chunk sums were half of a probe's assign)."""
    return _coded(values, centroids, edges, None)[0]


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


class CodesLater(MadeAsRead):
    """The uint8 codes of 2-D float32 `values` by cell edges `cut` (float32, sorted), made a
    slice at a time as they are read, each the codes _coded gives the whole: a per-tensor
    codebook's codes are read once, by the tiles that encode them, and a whole copy was its
    largest allocation (VGG16's fc1: 103 MB). The lookup table is built once, for the first
    slice that pays for one, and its choice depends only on the edges and `span` (the
    values' range)."""

    dtype = np.dtype(np.uint8)

    def __init__(self, values: np.ndarray, cut: np.ndarray, span: tuple[float, float]):
        super().__init__(values)
        self.values, self.cut, self.span = values, cut, span
        self._table = None
        self._lock = threading.Lock()

    def _lookups(self, block: np.ndarray):
        if not _pays_for_table(block.size, self.cut):
            return None  # (_coded searches: no table for these)
        with self._lock:
            if self._table is None:
                self._table = _lookups(block.reshape(-1), self.cut, self.span)
            return self._table

    def __getitem__(self, key) -> np.ndarray:
        block = np.ascontiguousarray(self.values[key])
        return _coded(block, None, self.cut, self.span, lookups=self._lookups(block))[0]


def assign_binned(
    values: np.ndarray,
    hist: Histogram,
    centroids: np.ndarray,
    edges: np.ndarray | None = None,
    out=None,
    later: bool = False,
) -> Assignment:
    """Codes for the values, with counts, sums and power taken from their histogram `hist`
    (unweighted) instead of a second pass over the values. An exact histogram (width 0: the
    unique values and their counts) gives them exactly, up to the order of the additions. A
    binned one counts each bin whole in the cell of its centre, values spread evenly within
    it (the w^2/12 term): the bins are a few parts in 10^5 of the range wide, so the cell
    means differ from the exact ones by far less than the codebook's fp16 rounding, and the
    SQNR stat by under 0.01 dB. The bincounts this saves were a third of a large tensor's pack
    time and held the GIL, and a fifth of a row group's. With `later` (2-D float32 values in
    one block) the codes are made as they are read (CodesLater), not now."""
    cut = (boundaries(centroids) if edges is None else edges).astype(_edge_dtype(values))
    span = (hist.lo, hist.hi)
    if later:
        codes = CodesLater(values, cut, span)
    else:
        codes, _ = _coded(values, centroids, cut, span, out=out)
    k = centroids.size
    # points are sorted: each cell's points are one run, from the first point above its lower edge
    bounds = np.concatenate(([0], np.searchsorted(hist.points, cut, side="right"), [hist.points.size]))
    filled, cell_counts, cell_sums = run_sums(bounds, hist.counts, hist.points)
    counts = np.zeros(k, dtype=np.float64)
    sums = np.zeros(k, dtype=np.float64)
    counts[filled], sums[filled] = cell_counts, cell_sums
    total = float(hist.counts.sum())
    sum_squares = float(np.sum(hist.counts * hist.points * hist.points)) + total * hist.width**2 / 12
    return Assignment(codes, counts, sums, sum_squares)


def _edge_dtype(values: np.ndarray) -> type:
    """The dtype codes compare values with edges in: the values' own for float32 (a value is
    above an edge in float32 exactly when it is above the edge rounded to float32)."""
    return np.float32 if values.dtype == np.float32 else np.float64
