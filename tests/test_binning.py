"""A histogram's bins counted in one pass of the C loops (kernels_c.bin_floats) are the ones
numpy's steps count (histogram._bin_index, then bincount): the same points and counts, so
the same fits and the same bytes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from c_kernels import built_or_skip, same_histogram_without_c


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.sampled_from([70_000, 300_000, 1_200_000]),  # (past EXACT_POINTS: binned; sampled)
    tails=st.booleans(),
    ties=st.booleans(),
)
def test_binned_in_c_as_in_numpy(seed, size, tails, ties):
    built_or_skip()
    rng = np.random.default_rng(seed)
    values = (rng.standard_t(2 if tails else 30, size) * 0.02).astype(np.float32)
    if ties:  # values on bin edges and repeated
        values = (np.round(values * 400) / 400).astype(np.float32)
    same_histogram_without_c(values)


def test_a_value_outside_the_range_is_declined_not_counted():
    loops = built_or_skip()
    counts = np.zeros(4, np.int64)
    assert loops.bin_floats(np.array([0.5, 1.0], np.float32), 0.0, 3.0, counts)
    assert counts.tolist() == [0, 1, 0, 1]  # (1.0 lands on the last bin's cap)
    assert not loops.bin_floats(np.array([-0.5], np.float32), 0.0, 3.0, np.zeros(4, np.int64))
    assert not loops.bin_floats(np.array([np.nan], np.float32), 0.0, 3.0, np.zeros(4, np.int64))
