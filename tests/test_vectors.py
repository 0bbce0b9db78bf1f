"""The C loops' vector paths (AVX2, AVX-512) give what their plain twins give: the DP's
scan the same floats and first minima to the bit, the product from k-means codes the same
y to float32 rounding. `set_vectors` lowers the level so that one machine runs every path
it has; a level the processor lacks is skipped."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from c_kernels import built_or_skip
from kformat.methods import kmeans_dp

LEVELS = [0, 1, 2]  # none, AVX2, AVX-512


@pytest.fixture(scope="module")
def c_loops():
    loops = built_or_skip()
    top = loops.set_vectors(2)
    yield loops, top
    loops.set_vectors(top)


def at_level(c_loops, level: int):
    loops, top = c_loops
    if level > top:
        pytest.skip(f"this processor has vectors up to level {top}")
    assert loops.set_vectors(level) == level
    return loops


def _reference(codes: np.ndarray, bits: int, cols: int, group_rows: int, books: np.ndarray, x: np.ndarray):
    """W @ x in float64 from codes unpacked by hand (the earlier column in the high nibble)."""
    if bits == 4:
        unpacked = np.empty((codes.shape[0], codes.shape[1] * 2), np.uint8)
        unpacked[:, 0::2], unpacked[:, 1::2] = codes >> 4, codes & 15
        codes = unpacked[:, :cols]
    groups = np.arange(codes.shape[0]) // group_rows
    w = books.reshape(-1, 1 << bits)[groups[:, None], codes].astype(np.float64)
    return w @ x.astype(np.float64)


@pytest.mark.parametrize("level", [1, 2])
@pytest.mark.parametrize("bits", [4, 8])
@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(1, 40),
    cols=st.integers(1, 300),  # tails of every length past the 8 or 16 a step takes
    group_rows=st.integers(1, 50),
)
def test_the_product_from_codes_is_float64_s(c_loops, level, bits, seed, rows, cols, group_rows):
    loops = at_level(c_loops, level)
    rng = np.random.default_rng(seed)
    row_bytes = (cols + 1) // 2 if bits == 4 else cols
    codes = rng.integers(0, 256, (rows, row_bytes), dtype=np.uint8)
    groups = -(-rows // group_rows)
    books = rng.standard_normal((groups, 1 << bits)).astype(np.float32)
    x = rng.standard_normal(cols).astype(np.float32)
    first, stop = sorted(int(v) for v in rng.integers(0, rows + 1, 2))
    y = np.full(rows, np.nan, np.float32)
    if bits == 8 and level < 2:  # (8-bit codes need AVX-512: with AVX2 the bands are faster)
        assert loops.matvec(bits, codes, cols, group_rows, books, x, y, first, stop) is False
        assert np.isnan(y).all()
        return
    assert loops.matvec(bits, codes, cols, group_rows, books, x, y, first, stop)
    want = _reference(codes, bits, cols, group_rows, books, x)
    scale = np.abs(books).max() * np.abs(x).sum()
    np.testing.assert_allclose(y[first:stop], want[first:stop], rtol=0, atol=1e-5 * scale)
    assert np.isnan(y[:first]).all() and np.isnan(y[stop:]).all()  # (nothing else written)


def test_without_vectors_the_product_is_declined(c_loops):
    """Level 0 (or a processor without AVX2): False, nothing written; the caller uses bands."""
    loops = at_level(c_loops, 0)
    y = np.full(2, 7.0, np.float32)
    codes, books, x = np.zeros((2, 4), np.uint8), np.zeros((1, 256), np.float32), np.ones(4, np.float32)
    assert loops.matvec(8, codes, 4, 2, books, x, y, 0, 2) is False
    assert (y == 7.0).all()


@pytest.mark.parametrize("level", [1, 2])
def test_the_product_refuses_buffers_too_short(c_loops, level):
    """Lengths are checked in C: a wrong call is a ValueError, never a stray read or write."""
    loops = at_level(c_loops, level)
    packed, books, x = np.zeros((4, 5), np.uint8), np.zeros((1, 16), np.float32), np.zeros(9, np.float32)
    y = np.empty(4, np.float32)
    assert loops.matvec(4, packed, 9, 4, books, x, y, 0, 4)
    with pytest.raises(ValueError, match="rows past the codes"):
        loops.matvec(4, packed, 9, 4, books, x, y, 0, 5)
    with pytest.raises(ValueError, match="codebooks"):
        loops.matvec(4, packed, 9, 2, books, x, y, 0, 4)  # two groups, one book
    with pytest.raises(ValueError, match="x"):
        loops.matvec(4, packed, 9, 4, books, x[:8], y, 0, 4)
    if level >= 2:  # (8-bit codes: AVX-512 only)
        with pytest.raises(ValueError, match="codebooks"):  # 256 entries a group
            loops.matvec(8, np.zeros((4, 9), np.uint8), 9, 4, books, x, y, 0, 4)
    with pytest.raises(ValueError, match="bad bits"):
        loops.matvec(2, packed, 9, 4, books, x, y, 0, 4)


def _problems(rng: np.random.Generator, ties: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    problems = []
    for _ in range(int(rng.integers(1, 4))):
        size = int(rng.integers(1, 400))
        points = np.sort(rng.standard_t(3, size))
        if ties:  # equal costs between splits, zero weights (divisions by zero in the lanes)
            points = np.sort(np.round(points, 1))
        weights = rng.integers(0, 4, size).astype(np.float64) if ties else rng.random(size) + 0.1
        weights[rng.integers(size)] += 1.0
        problems.append((points, weights))
    return problems


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), ties=st.booleans(), k=st.sampled_from([2, 5, 16, 40]))
def test_the_dp_scan_is_the_same_at_every_level(c_loops, seed, ties, k):
    """The DP (divide and conquer layers, and the dense one) at every level: the same floats
    and the same splits, first minima included."""
    rng = np.random.default_rng(seed)
    problems = _problems(rng, ties)
    results = []
    for level in [lv for lv in LEVELS if lv <= c_loops[1]]:
        c_loops[0].set_vectors(level)
        programme = kmeans_dp.Programme(problems)
        programme.extend(k)
        dense = kmeans_dp.optimal_centroids(*problems[0], min(k, 16))
        results.append((programme.errors, programme.splits, programme.layer, dense))
    flat = [[*errors, *splits, layer, dense] for errors, splits, layer, dense in results]
    for other in flat[1:]:
        for a, b in zip(other, flat[0], strict=True):
            np.testing.assert_array_equal(a, b, strict=True)


@pytest.mark.parametrize("level", LEVELS)
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(0, 100), edges=st.integers(0, 16))
def test_codes_by_few_edges_are_numpy_s_at_every_level(c_loops, level, seed, size, edges):
    """Up to 16 edges, any order: the count of edges below each value, as numpy's compare per
    edge gives (values on the edges, signed zeros, NaN and infinities among them)."""
    from kformat.methods.kmeans_codes import _count_below

    loops = at_level(c_loops, level)
    rng = np.random.default_rng(seed)
    cuts = rng.standard_normal(edges).astype(np.float32)
    odd = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], np.float32)
    values = np.concatenate([rng.standard_normal(size).astype(np.float32), cuts, odd])
    rng.shuffle(values)
    got, want = np.full(values.size, 99, np.uint8), np.empty(values.size, np.uint8)
    assert loops.count_codes(values, cuts, got)
    _count_below(values, cuts, want)
    assert got.tolist() == want.tolist()


@pytest.mark.parametrize("level", LEVELS)
@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(1, 80),
    cols=st.integers(1, 300),
    bits=st.sampled_from([2, 4, 8]),
    group=st.sampled_from([1, 7, 64]),
    halves=st.booleans(),
)
def test_linear_codes_in_c_are_numpy_s_at_every_level(c_loops, level, seed, rows, cols, bits, group, halves):
    """quantize_linear's codes, scales, zero points, counts and powers, through the C loops at
    every level and through numpy: the same to the bit (values on rounding ties included)."""
    from kformat.methods import kernels, linear

    rng = np.random.default_rng(seed)
    w = (rng.standard_t(3, (rows, cols)) * 0.05).astype(np.float32)
    if halves:  # many values whose quotient lands on .5
        w = (np.round(w * 50) / 50).astype(np.float32)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(kernels, "c_loops", lambda: None)
        want = linear.quantize_linear(w, bits, group)
    at_level(c_loops, level)
    got = linear.quantize_linear(w, bits, group)
    for a, b in zip(got[:4], want[:4], strict=True):
        np.testing.assert_array_equal(a, b, strict=True)
    assert got[4] == want[4]
