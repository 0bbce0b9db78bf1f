"""A small row group's exact histogram counted by the C loops' radix sort
(kernels_c.unique_floats) is numpy's unique with counts: the same points, ascending, and the
same counts, so the same fits and the same bytes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from c_kernels import built_or_skip, same_histogram_without_c


def _numpy_unique(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    points, counts = np.unique(values.astype(np.float64), return_counts=True)
    return points, counts


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.sampled_from([0, 1, 2, 7, 2048, 24_576, 65_536]),
    kind=st.sampled_from(["normal", "few", "subnormal", "bits", "extremes"]),
)
def test_radix_counts_are_numpys(seed, size, kind):
    loops = built_or_skip()
    rng = np.random.default_rng(seed)
    if kind == "normal":
        values = (rng.standard_t(4, size) * 0.02).astype(np.float32)
    elif kind == "few":  # long runs of equal values, both signs
        values = rng.integers(-6, 6, size).astype(np.float32) / 4
    elif kind == "subnormal":
        values = (rng.standard_normal(size) * 1e-40).astype(np.float32)
    elif kind == "bits":  # any finite bit pattern
        values = rng.integers(0, 2**32, size, dtype=np.uint64).astype(np.uint32).view(np.float32)
        values = values[np.isfinite(values)]
    else:
        table = np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, 3e38, -3e38, 1e-45, -1e-45], np.float32)
        values = rng.choice(table, size)
    points, counts = loops.unique_floats(values)
    want_points, want_counts = _numpy_unique(values)
    np.testing.assert_array_equal(points, want_points, strict=True)
    np.testing.assert_array_equal(counts, want_counts, strict=True)
    assert counts.sum() == values.size


def test_both_zeros_make_the_point_plus_zero_and_nan_is_declined():
    loops = built_or_skip()
    points, counts = loops.unique_floats(np.array([0.0, -0.0, -0.0, 2.0, 0.0], np.float32))
    assert points.tolist() == [0.0, 2.0] and not np.signbit(points[0]) and counts.tolist() == [4, 1]
    points, _ = loops.unique_floats(np.array([-0.0, 1.0], np.float32))
    assert np.signbit(points[0])  # (only -0.0: that is the value)
    assert loops.unique_floats(np.array([1.0, np.nan], np.float32)) is None
    with pytest.raises(ValueError, match="points"):
        loops._kernels.unique_floats(np.ones(4, np.float32), np.empty(3), np.empty(4, np.int64))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), size=st.sampled_from([300, 24_576, 49_152]))
def test_a_group_histogram_is_the_same_with_and_without_the_c_loops(seed, size):
    built_or_skip()
    values = (np.random.default_rng(seed).standard_t(3, size) * 0.05).astype(np.float32)
    values[::7] = np.round(values[::7], 2)  # ties
    same_histogram_without_c(values)
