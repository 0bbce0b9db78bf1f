"""The assignment pass: every lookup path gives exactly searchsorted's codes."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import contextlib
import os

from kformat.methods import kernels, kmeans_codes
from kformat.methods.kmeans_codes import LOOKUP_BINS, _coded, _top_half_lookup, boundaries


LOOPS = ["compiled", "numpy"]


@contextlib.contextmanager
def loops(which: str):
    """The C loops' one-pass codes (where built), or numpy's lookups and compares alone."""
    if which == "numpy":
        os.environ["KFORMAT_NUMBA"] = "0"
    try:
        assert which == "compiled" or kernels.compiled() is None
        yield
    finally:
        os.environ.pop("KFORMAT_NUMBA", None)


def _values(seed: int, kind: str, scale: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    size = LOOKUP_BINS + int(rng.integers(0, 5000))
    values = {
        "gaussian": rng.standard_normal(size),
        "heavy": rng.standard_t(2, size),
        "positive": rng.exponential(1.0, size),
        "tiny": rng.standard_normal(size) * 1e-39,  # subnormal float32
    }[kind]
    return (values * scale).astype(np.float32)


def _edges(values: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Cell edges placed as a fitted codebook's are: between sorted centroids drawn from the values,
    some of them values themselves (so values fall exactly on edges), and -0.0 among them."""
    rng = np.random.default_rng(seed)
    centroids = np.unique(rng.choice(values, size=k).astype(np.float64))
    edges = boundaries(centroids)
    if edges.size > 2:
        edges[rng.integers(0, edges.size)] = float(rng.choice(values))
        edges[edges.size // 2] = -0.0
    return np.sort(edges)


@pytest.mark.parametrize("which", LOOPS)
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from(["gaussian", "heavy", "positive", "tiny"]),
    st.sampled_from([1e-3, 1.0, 3e4]),
    st.sampled_from([2, 4, 16, 64, 256]),
)
@settings(max_examples=60, deadline=None, derandomize=True)
def test_codes_are_the_count_of_edges_below_every_value(which, seed, kind, scale, k):
    values = _values(seed, kind, scale)
    edges = _edges(values, k, seed)
    span = (float(values.min()), float(values.max())) if seed % 2 else None
    with loops(which):
        codes, _ = _coded(values, np.zeros(edges.size + 1), edges, span)
    expected = np.searchsorted(edges.astype(np.float32), values)
    assert np.array_equal(codes, expected)


@pytest.mark.parametrize("which", LOOPS)
@pytest.mark.parametrize("span", [None, "values"])
def test_each_lookup_path_is_taken_and_exact(span, which):
    """Well-spaced edges take the top-16-bit table; two edges inside one of its intervals make
    it decline (then the uniform grid, or for still closer edges the search, answers)."""
    values = _values(1, "gaussian", 1.0)
    reach = (float(values.min()), float(values.max())) if span else None
    spaced = np.linspace(-2, 2, 15).astype(np.float32)
    assert _top_half_lookup(spaced, reach) is not None
    one = np.float32(1)
    close = np.sort(np.append(spaced, [one, np.float32(1.001)])).astype(np.float32)  # both in one interval
    assert _top_half_lookup(close, reach) is None
    closest = np.sort(np.append(spaced, [one, np.nextafter(one, np.float32(2))])).astype(np.float32)
    for edges in (spaced, close, closest):
        with loops(which):
            codes, _ = _coded(values, np.zeros(edges.size + 1), edges, reach)
        assert np.array_equal(codes, np.searchsorted(edges, values))


def test_close_edges_outside_the_values_do_not_stop_the_table():
    values = _values(2, "positive", 1.0)  # all >= 0
    edges = np.array([-1.0002, -1.0001, 0.5, 1.5], dtype=np.float32)  # the close pair is below every value
    span = (float(values.min()), float(values.max()))
    assert _top_half_lookup(edges, span) is not None
    assert _top_half_lookup(edges, None) is None
    codes = kmeans_codes.assign(values, np.zeros(5), edges, span).codes
    assert np.array_equal(codes, np.searchsorted(edges, values))


def test_a_tensor_of_subnormals_encodes():
    """Bins over a range of subnormal float32s are scaled in float64 (the float32 scale
    overflowed to inf and bincount got negative indices: a ValueError out of pack)."""
    from kformat.methods.histogram import histogram
    from kformat.packing.encode import encode_tensor
    from kformat.recipe import parse_rule

    w = (np.random.default_rng(0).standard_normal((300, 400)) * 1e-40).astype(np.float32)
    assert histogram(w).counts.sum() == w.size
    for rule in ("kmeans:4,codebook=float32", "kmeans:8,codebook=float32"):
        q = encode_tensor("w", w, parse_rule(rule))
        assert q.codes.shape == w.shape
        assert q.stats["sqnr_db"] > 15  # (a float16 codebook cannot hold them: test_quantize)


@pytest.mark.parametrize("which", LOOPS)
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from(["gaussian", "heavy", "positive"]),
    st.sampled_from([1, 2, 8, 16, 64, 256]),
    st.sampled_from([np.float32, np.float64]),
    st.integers(1, 5000),
)
@settings(max_examples=60, deadline=None, derandomize=True)
def test_small_inputs_and_few_edges_count_compares_exactly_as_searchsorted(which, seed, kind, k, dtype, size):
    """Below LOOKUP_BINS values, or with fewer than LOOKUP_EDGES edges, codes are counted by
    one compare per edge: values on an edge, and signed zeros, as searchsorted places them."""
    values = _values(seed, kind, 1.0)[:size].astype(dtype)
    edges = _edges(values, k, seed).astype(dtype)
    values[: min(size, edges.size)] = edges[: min(size, edges.size)]  # some values exactly on edges
    if size > 3:
        values[-2:] = [-0.0, 0.0]
    with loops(which):
        codes, _ = _coded(values, np.zeros(edges.size + 1), edges, None)
    assert np.array_equal(codes, np.searchsorted(edges, values))
    large = np.resize(values, LOOKUP_BINS + 7)  # a large input with few edges: compares too
    if edges.size < kmeans_codes.LOOKUP_EDGES:
        with loops(which):
            codes, _ = _coded(large, np.zeros(edges.size + 1), edges, None)
        assert np.array_equal(codes, np.searchsorted(edges, large))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31), k=st.sampled_from([2, 16, 256]), size=st.sampled_from([100, 70_000]))
def test_codes_of_are_assigns_codes(seed, k, size):
    """Bit allocation's probes take the codes alone (codes_of): the very codes of assign, by
    nearest centroid or by explicit edges."""
    rng = np.random.default_rng(seed)
    values = rng.standard_t(4, size).astype(np.float32).reshape(-1, 50)
    centroids = np.unique(rng.standard_normal(k))
    edges = np.sort(rng.standard_normal(centroids.size - 1))
    assert np.array_equal(
        kmeans_codes.codes_of(values, centroids), kmeans_codes.assign(values, centroids).codes
    )
    assert np.array_equal(
        kmeans_codes.codes_of(values, centroids, edges), kmeans_codes.assign(values, centroids, edges).codes
    )


@pytest.mark.parametrize("which", LOOPS)
@settings(max_examples=25, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from(["gaussian", "heavy", "tiny"]),
    st.sampled_from([2, 16, 256]),
    st.sampled_from([(96, 700), (640, 300), (7, 9001)]),
)
def test_codes_made_later_are_the_whole_codes_slice_by_slice(which, seed, kind, k, shape):
    """A per-tensor codebook's codes made as tiles read them (CodesLater) are the codes of the
    whole, for row bands, tiles with a column range, single rows and np.asarray, whether a
    slice pays for a lookup table or not; and so are a packed tensor's."""
    with loops(which):
        rng = np.random.default_rng(seed)
        draw = {"gaussian": rng.standard_normal, "heavy": lambda n: rng.standard_t(2, n)}
        values = draw.get(kind, lambda n: rng.standard_normal(n) * 1e-39)(shape[0] * shape[1])
        values = values.astype(np.float32).reshape(shape)
        cut = _edges(values.reshape(-1), k, seed).astype(np.float32)
        span = (float(values.min()), float(values.max()))
        whole = _coded(values, None, cut, span)[0]
        later = kmeans_codes.CodesLater(values, cut, span)
        rows, cols = shape
        for key in (
            np.s_[:],
            np.s_[0:1],
            np.s_[rows // 3 : rows],
            np.s_[1 : rows - 1, cols // 4 : cols // 2],
        ):
            np.testing.assert_array_equal(later[key], whole[key])
        np.testing.assert_array_equal(np.asarray(later), whole)
        assert later.shape == shape and later.dtype == np.uint8 and len(later) == rows


def test_a_per_tensor_encode_makes_its_codes_later_with_the_codes_and_stats_of_a_whole_pass():
    """kmeans encodes of one codebook leave their codes to be made as they are read (no whole
    copy in hand), the codes, tables and stats an encode that writes them all gives; group
    rules write theirs."""
    from kformat.methods import get_method
    from kformat.methods.kmeans_groups import GroupEncoder
    from kformat.recipe import parse_rule

    w = (np.random.default_rng(11).standard_t(4, (300, 400)) * 0.02).astype(np.float32)
    for text in ("kmeans:4", "kmeans:8,ecq=0.5", "kmeans:2"):
        rule = parse_rule(text)
        q = get_method("kmeans").encode("w", w, rule)
        written = GroupEncoder("w", w, rule, codes=np.empty(w.shape, np.uint8)).whole()
        assert isinstance(q.codes, kmeans_codes.CodesLater) and isinstance(written.codes, np.ndarray)
        np.testing.assert_array_equal(np.asarray(q.codes), written.codes)
        np.testing.assert_array_equal(q.codes[10:20, 5:50], written.codes[10:20, 5:50])
        np.testing.assert_array_equal(q.codebook, written.codebook)
        assert q.stats == written.stats
    grouped = get_method("kmeans").encode("w", w, parse_rule("kmeans:4,group=64"))
    assert isinstance(grouped.codes, np.ndarray)
