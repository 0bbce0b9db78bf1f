"""Bit allocation's side of k-means: the candidate rules, their bytes and errors estimated
without encoding (large tensors), and the seeds of many small tensors' fits computed in one
batch before they are encoded (kmeans_fit.remembered_seeds)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import kmeans_codes, kmeans_fit
from .base import FP16_MAX, FP16_NORMAL, group_rows_for
from .chunks import spans
from .histogram import unique
from .kmeans_fit import group_source, rows_of, stored_centroids
from .metrics import PNG_OVERHEAD, TILE_OVERHEAD, entropy_bytes, tile_count

ALLOCATION_BITS = (1, 2, 3, 4, 5, 6, 8)
ALLOCATION_GROUP_BITS = (2, 3, 4)
ALLOCATION_GROUP_ROWS = 64
# Entropy-constrained candidates: at equal stored bytes they keep more SQNR than a plain fit
# of fewer levels (the planes are entropy coded), which is what lets allocation reach a
# transformer's 0.98 mean cosine at 3.5 bits/weight.
ALLOCATION_ECQ_BITS = (3, 4, 5, 6)
ALLOCATION_ECQ_DB = 0.5
SAMPLE_GROUPS = 16  # per-group candidates are estimated on this many groups, evenly spaced
GROUP_SAMPLE_VALUES = 1 << 18  # of a sampled group's values, every stride-th is binned (outliers all)


def _estimate(
    hist: kmeans_fit.Histogram,
    k: int,
    thorough: bool,
    plain: kmeans_fit.Histogram | None = None,
    ecq: float | None = None,
    dtype: np.dtype = np.dtype(np.float16),
    seed: np.ndarray | None = None,
    *,
    sums: dict,
) -> tuple[float, np.ndarray, tuple]:
    """(noise energy, code counts) of a k-entry codebook fitted to `hist` (entropy-constrained
    within `ecq` dB of the plain fit, when given); when `hist` is importance-weighted, `plain`
    (the unweighted histogram) gives the code counts. Also the fit: (centroids, edges).

    Both come from each histogram's prefix sums (kmeans_fit.CellSums, kept in `sums` by
    histogram for the caller's other candidates of it): O(k log n) per candidate where a pass
    over every point (cells, gather, squares, bincount) was half of the estimates' time."""
    cell_sums = _sums_of(hist, sums)
    centroids = kmeans_fit.fit_centroids(hist, k, thorough, seed, cell_sums)
    centroids = unique(np.asarray(centroids, dtype=np.float64))
    edges = None
    if ecq is not None and centroids.size > 1:
        # started, as encode starts it, from the centroids rounded to the codebook's dtype
        fitted, edges = kmeans_fit.fit_entropy_constrained(
            hist, k, ecq, stored_centroids(centroids, dtype), cell_sums
        )
        centroids = np.asarray(fitted, dtype=np.float64)
        edges = np.asarray(edges, dtype=np.float64)
    cut = kmeans_codes.boundaries(centroids) if edges is None else edges  # what assign cuts at
    weight, first, second = cell_sums.cells(cut)
    # each cell's sum of w (x - c)^2; the bins' own width adds w^2/12 per value (values
    # spread uniformly within a bin)
    noise = max(0.0, float(np.sum(second - 2.0 * centroids * first + centroids * centroids * weight)))
    noise += float(cell_sums.w[-1]) * hist.width**2 / 12
    counts = weight if plain is None else _sums_of(plain, sums).cells(cut)[0]
    return noise, np.maximum(counts, 0.0), (centroids, edges)


def _sums_of(hist: kmeans_fit.Histogram, sums: dict) -> kmeans_fit.CellSums:
    """The histogram's CellSums, made once per `sums` dict."""
    found = sums.get(id(hist))
    if found is None or found.points is not hist.points:
        found = sums[id(hist)] = kmeans_fit.CellSums(hist.points, hist.counts)
    return found


PROBE_VALUES = 1 << 16  # values of a tensor coded and compressed for real to measure the planes'
# overhead over the code entropy; matrices whose rows repeat compress several times below it
PROBE_CLAMP = (0.05, 1.1)


def _probe(w: np.ndarray) -> np.ndarray:
    """About PROBE_VALUES values of `w` from evenly spaced rows, what _plane_overhead codes."""
    rows = max(1, min(w.shape[0], PROBE_VALUES // max(1, w.shape[1])))
    picks = unique(np.linspace(0, w.shape[0] - 1, rows).astype(np.intp))
    return np.ascontiguousarray(w[picks, : PROBE_VALUES // picks.size], dtype=np.float32)


def _plane_overhead(block: np.ndarray, fit, bits: int) -> float:
    """Bytes of real PNG planes per byte of code entropy, measured on a probe of the tensor
    (_probe) coded by `fit` (centroids, edges): Huffman coding of packed codes lands 0.7%
    over the entropy on Gaussian weights and 2% on MiniLM's, where one constant missed by 1.3%."""
    from ..codecs import plane_depth
    from ..codecs.png import encode_png

    centroids, edges = fit
    codes = kmeans_codes.codes_of(block, centroids, edges)  # uint8
    entropy = entropy_bytes(np.bincount(codes.reshape(-1), minlength=centroids.size))
    if entropy <= 0:
        return PNG_OVERHEAD
    depth = plane_depth(bits)
    planes = len(encode_png(codes, depth, 1 << bits)) - _tile_overhead(bits)
    return float(np.clip(planes / entropy, *PROBE_CLAMP))


def _tile_overhead(bits: int) -> int:
    """A tile's bytes besides its codes: PNG chunks, zlib and Huffman tables, and a palette
    of 2^bits entries, as encoded.tile_blob writes it (counted at the plane depth's 2^depth,
    a 6-bit tile was 576 bytes over: MiniLM-shaped 384 x 384 matrices 0.45%)."""
    return TILE_OVERHEAD + 3 * (1 << bits)


def warm(problems) -> None:
    """The seeds of every candidate's fits of several tensors, one batch per width and
    grouping (plain rules: those encode seeds from the same histograms, which do not
    depend on the width)."""
    plain = [
        (index, rule)
        for index, (_, _, rules) in enumerate(problems)
        for rule in rules
        if rule.scale is None and rule.prune is None and rule.prune_threshold is None
    ]
    hists: dict[tuple[int, int], list] = {}  # (tensor, rows per group) -> its groups' histograms
    for index, rule in plain:
        w, weights, _ = problems[index]
        rows = w.shape[0]
        step = group_rows_for(rule, rows)
        if (index, step) not in hists:
            hists[index, step] = [
                group_source(w[r0:r1], None, 2, rows_of(weights, r0, r1, rows))[0]
                for r0, r1 in spans(rows, step)
            ]
    for bits, granularity, size in dict.fromkeys(
        (int(r.bits), r.granularity, r.group_size) for _, r in plain
    ):
        k = 1 << bits
        batch = [
            h
            for index, rule in plain
            if (int(rule.bits), rule.granularity, rule.group_size) == (bits, granularity, size)
            for h in hists[index, group_rows_for(rule, problems[index][0].shape[0])]
            if h is not None and h.points.size > k
        ]
        if batch:
            kmeans_fit.seeds(batch, k)


def candidates(rows: int) -> list[str]:
    rules = [f"kmeans:{b}" for b in ALLOCATION_BITS]
    rules += [f"kmeans:{b},ecq={ALLOCATION_ECQ_DB}" for b in ALLOCATION_ECQ_BITS]
    if rows >= 2 * ALLOCATION_GROUP_ROWS:
        rules += [f"kmeans:{b},group={ALLOCATION_GROUP_ROWS}" for b in ALLOCATION_GROUP_BITS]
    return rules


@dataclass
class Summary:
    """What the estimates of a large tensor need of it: its histograms, a probe of its values
    and the histograms of the sampled groups of each group size. Read from the tensor in
    large numpy passes (which release the GIL); a few MB, so the fits (thousands of small
    numpy calls, which hold it) may run in another process (kformat.packing.weighing)."""

    shape: tuple[int, int]
    tiles: int
    hist: kmeans_fit.Histogram
    plain: kmeans_fit.Histogram | None  # unweighted, when `hist` is importance-weighted
    signal: float
    probe: np.ndarray
    groups: dict[int, tuple[np.ndarray, np.ndarray, list]]  # rows per group -> picks, stands, hists


def summarize(w, rules, tile, weights=None, name: str | None = None) -> Summary:
    """The Summary of a 2-D tensor for `rules` (importance `weights` broadcastable to it);
    its histogram is remembered under `name` for the encode of a per-tensor rule."""
    full = None if weights is None else np.broadcast_to(weights, w.shape)
    hist = group_source(w, None, 2, full)[0]  # as encode bins the whole tensor
    if name is not None:
        kmeans_fit.remember_histogram(whole_key(name, full is not None, w.shape), hist)
    row_mass = None if full is None else full.sum(axis=1, dtype=np.float64)
    groups = {}
    for rule in rules:
        group = group_rows_for(rule, w.shape[0])
        if rule.granularity == "tensor" or group in groups:
            continue
        picks, stands = _sampled_groups(row_mass, group, w.shape[0])
        hists = []
        for g in picks:
            block, part = (
                w[g * group : (g + 1) * group],
                None if full is None else full[g * group : (g + 1) * group],
            )
            hists.append(
                (
                    group_source(block, None, 2, part, GROUP_SAMPLE_VALUES)[0],
                    None if full is None else group_source(block, None, 2, None, GROUP_SAMPLE_VALUES)[0],
                )
            )
        groups[group] = (picks, stands, hists)
    return Summary(
        shape=tuple(w.shape),
        tiles=tile_count(w.shape, tile),
        hist=hist,
        plain=None if full is None else kmeans_fit.histogram(w),
        signal=_power(hist) or 1.0,  # as the noise is measured: on the histogram (sampled when large)
        probe=_probe(w),
        groups=groups,
    )


def whole_key(name: str, weighted: bool, shape: tuple[int, ...]) -> tuple:
    """The key a whole tensor's histogram is remembered under: both sides bin it by
    group_source, whose bins follow from the shape."""
    return (name, weighted, tuple(shape))


def estimate_summary(summary: Summary, rules) -> list[tuple[float, float]]:
    """(bytes, relative error) of each rule from the tensor's Summary: per-tensor rules from
    its histogram; per-group rules from a sample of its groups (_sampled_groups). Size is
    the code entropy times the planes' measured overhead, plus codebooks and tile overhead.
    With importance the histograms are weighted, and so is the error."""
    overheads: dict[int, float] = {}  # planes' bytes per entropy byte, measured per width
    sums: dict = {}  # each histogram's CellSums, shared by its candidates
    out = []
    for rule in rules:
        bits = int(rule.bits)
        if rule.granularity == "tensor":
            dtype = np.dtype(rule.codebook_dtype)
            noise, counts, fit = _estimate(
                summary.hist, 1 << bits, True, summary.plain, rule.ecq, dtype, sums=sums
            )
            overhead = _plane_overhead(summary.probe, fit, bits)
            if rule.ecq is None:
                overheads[bits] = overhead
            size = entropy_bytes(counts) * overhead + (1 << bits) * 2 + summary.tiles * _tile_overhead(bits)
            largest = float(np.abs(fit[0]).max(initial=0))
            refused = _refused(largest, largest, dtype)
            out.append((size, math.inf if refused else noise / summary.signal))
            continue
        overhead = overheads.get(bits, PNG_OVERHEAD)  # the per-tensor fit's of this width
        out.append(_estimate_groups(summary, rule, overhead, sums))
    return out


def warm_summaries(items: list[tuple[Summary, list]]) -> None:
    """The seeds of every fit of several tensors' summaries, one programme per width (the
    per-tensor histograms and the sampled groups' alike), where seeds are remembered."""
    batches: dict[int, dict[int, kmeans_fit.Histogram]] = {}  # k -> histograms by id
    for summary, rules in items:
        for rule in rules:
            k = 1 << int(rule.bits)
            if rule.granularity == "tensor":
                hists = [summary.hist]
            else:
                hists = [h for h, _ in summary.groups[group_rows_for(rule, summary.shape[0])][2]]
            batch = batches.setdefault(k, {})
            batch.update((id(h), h) for h in hists if h is not None and h.points.size > k)
    for k, hists in batches.items():
        kmeans_fit.seeds(list(hists.values()), k)


def estimate(w, rules, tile, weights=None) -> list[tuple[float, float]]:
    return estimate_summary(summarize(w, rules, tile, weights), rules)


def _power(hist: kmeans_fit.Histogram) -> float:
    """The (weighted) sum of squared values a histogram stands for, values spread uniformly
    within each bin (what _estimate assumes of the noise too)."""
    return float(np.sum(hist.counts * hist.points**2) + hist.counts.sum() * hist.width**2 / 12)


def _sampled_groups(row_mass: np.ndarray | None, group: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The row groups a per-group estimate fits, and how many groups' worth of values each
    stands for, in units of its own values (so a short last group stands for as many values
    as a full one sampled in its place: counted as a full group, it had MiniLM's word
    embedding's 4-bit groups 0.55% short, 58 rows among 64-row groups).

    Evenly spaced groups; with importance, half of them are instead the groups that carry
    the most importance, each standing for itself (an embedding's importance sits in its
    frequent tokens' rows, which evenly spaced groups would miss)."""
    groups = math.ceil(rows / group)
    sizes = np.minimum(group, rows - np.arange(groups) * group)  # rows of each group
    count = min(groups, SAMPLE_GROUPS)
    if row_mass is None or count == groups:
        picks = unique(np.linspace(0, groups - 1, count).astype(int))
        if picks.size == groups:
            return picks, np.ones(groups)
        return picks, rows / picks.size / sizes[picks]
    mass = np.add.reduceat(row_mass, np.arange(0, row_mass.size, group))
    top = np.sort(np.argsort(-mass, kind="stable")[: count // 2])
    rest = np.setdiff1d(np.arange(groups), top)
    spread = rest[unique(np.linspace(0, rest.size - 1, count - top.size).astype(int))]
    picks = np.concatenate([top, spread])
    stands = np.concatenate([np.ones(top.size), sizes[rest].sum() / spread.size / sizes[spread]])
    return picks, stands


def _estimate_groups(summary: Summary, rule, overhead: float, sums: dict) -> tuple[float, float]:
    """(bytes, relative error) of a per-group rule from its sampled groups' histograms,
    fitted as encode fits them: seeded by one batched exact programme, then Lloyd."""
    rows = summary.shape[0]
    bits = int(rule.bits)
    k = 1 << bits
    group = group_rows_for(rule, rows)
    groups = math.ceil(rows / group)
    picks, stands, hists = summary.groups[group]
    batch = [i for i, (h, _) in enumerate(hists) if h is not None and h.points.size > k]
    seeded = dict(zip(batch, kmeans_fit.seeds([hists[i][0] for i in batch], k)))
    noise = entropy = largest = 0.0
    for i, ((hist, plain), weight) in enumerate(zip(hists, stands)):
        if hist is None:  # (no values: never, as groups are not pruned here)
            continue
        part, counts, (centroids, _) = _estimate(hist, k, False, plain, seed=seeded.get(i), sums=sums)
        noise += part * weight
        entropy += entropy_bytes(counts) * weight
        largest = max(largest, float(np.abs(centroids).max(initial=0)))
    size = entropy * overhead + groups * k * 2 + summary.tiles * _tile_overhead(bits)
    # the groups not sampled may hold a larger entry than those sampled: judge by the values
    spread = max(abs(summary.hist.lo), abs(summary.hist.hi))
    refused = _refused(largest, spread, np.dtype(rule.codebook_dtype))
    return size, math.inf if refused else noise / summary.signal


def _refused(largest_entry: float, largest_value: float, dtype: np.dtype) -> bool:
    """Whether encode refuses these codebooks (as a small tensor's candidate it would not be
    one): past float16's range, or every entry below its normal range (precision lost)."""
    if dtype != np.float16:
        return False
    return largest_entry > FP16_MAX or 0 < largest_value < FP16_NORMAL
