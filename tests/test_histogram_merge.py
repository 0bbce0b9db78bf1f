"""Histograms of a group's values: exact points for small groups (numpy's unique, faster), and
merging into coarse bins (what the 1-D k-means programme runs on): each bin
gets exactly the core points whose scaled offset truncates to it, as a scattered add would
give them, and the merged points stay sorted."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kformat.methods.histogram import _merge, histogram


def scattered(hist, bins):
    """The same merge by bincount over a mask: the reference."""
    span = hist.core_hi - hist.core_lo
    inside = (hist.points >= hist.core_lo) & (hist.points <= hist.core_hi)
    points, weights = hist.points[inside], hist.counts[inside]
    idx = np.minimum(((points - hist.core_lo) * (bins / span)).astype(np.int64), bins - 1)
    counts = np.bincount(idx, weights=weights, minlength=bins)
    sums = np.bincount(idx, weights=weights * points, minlength=bins)
    keep = counts > 0
    below, above = hist.points < hist.core_lo, hist.points > hist.core_hi
    return (
        np.concatenate((hist.points[below], sums[keep] / counts[keep], hist.points[above])),
        np.concatenate((hist.counts[below], counts[keep], hist.counts[above])),
    )


@given(
    st.integers(0, 2**32 - 1),
    st.integers(100, 80_000),
    st.sampled_from([64, 512, 4096]),
    st.booleans(),
    st.booleans(),
)
@settings(max_examples=40, deadline=None)
def test_runs_merge_as_a_scattered_add_would(seed, size, bins, weighted, ties):
    rng = np.random.default_rng(seed)
    values = rng.standard_t(3, size).astype(np.float32)
    if ties:
        values[: size // 4] = np.round(values[: size // 4], 1)
    weights = rng.random(size) * (rng.random(size) > 0.2) if weighted else None
    hist = histogram(values, weights=weights)
    if hist.points.size <= bins or hist.core_hi <= hist.core_lo:
        return
    points, counts = _merge(hist, bins)
    want_points, want_counts = scattered(hist, bins)
    assert points.shape == want_points.shape
    np.testing.assert_allclose(counts, want_counts, rtol=1e-12)
    np.testing.assert_allclose(points, want_points, rtol=1e-12)
    assert np.all(np.diff(points) >= 0)


@given(st.integers(0, 2**32 - 1), st.integers(1, 70_000), st.booleans(), st.booleans())
@settings(max_examples=40, deadline=None)
def test_exact_points_are_numpys_unique_values_and_counts(seed, size, single, rounded):
    """A small group's histogram is its distinct values and their counts, as float64."""
    from kformat.methods.histogram import _unique_counts

    rng = np.random.default_rng(seed)
    values = rng.standard_t(3, size).astype(np.float32 if single else np.float64)
    if rounded:
        values = np.round(values, 1)
        values[: size // 3] = -0.0  # and 0.0 among the rounded: one point
    points, counts = _unique_counts(values)
    want_points, want_counts = np.unique(values.astype(np.float64), return_counts=True)
    assert points.dtype == np.float64
    np.testing.assert_array_equal(np.abs(points), np.abs(want_points))  # (the sign a zero keeps may differ)
    np.testing.assert_array_equal(counts, want_counts)
