import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kformat
from kformat.errors import QuantizationError
from kformat.packing.encode import encode_tensor
from kformat.methods import kmeans_codes
from kformat.methods import kmeans_fit as kmeans
from kformat.recipe import parse_rule

# SQNR of the optimal (Lloyd-Max) quantizer of a unit Gaussian, in dB, by bits.
LLOYD_MAX_DB = {1: 4.40, 2: 9.30, 3: 14.62, 4: 20.22}


@pytest.fixture(scope="module")
def gaussian():
    return np.random.default_rng(0).standard_normal((512, 1024)).astype(np.float32)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_kmeans_reaches_lloyd_max_on_gaussian(gaussian, bits):
    enc = encode_tensor("w", gaussian, parse_rule(f"kmeans:{bits}"))
    assert enc.stats["sqnr_db"] == pytest.approx(LLOYD_MAX_DB[bits], abs=0.05)


def test_kmeans8_reaches_the_high_rate_optimum(gaussian):
    enc = encode_tensor("w", gaussian, parse_rule("kmeans:8"))
    # Panter-Dite: 6.02 * 8 - 4.35 dB for a Gaussian at high rate.
    assert enc.stats["sqnr_db"] > 43.0


def _brute_force_optimum(points: np.ndarray, k: int) -> float:
    """Exact 1-D k-means error by trying every split of the sorted points."""
    import itertools

    xs = np.sort(points)
    best = math.inf
    for cuts in itertools.combinations(range(1, xs.size), k - 1):
        parts = np.split(xs, cuts)
        best = min(best, sum(float(((p - p.mean()) ** 2).sum()) for p in parts))
    return best


@given(st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=5, max_size=11), st.integers(2, 3))
@settings(max_examples=60, deadline=None)
def test_kmeans_matches_exact_optimum_on_small_sets(values, k):
    points = np.array(values, dtype=np.float64)
    hist = kmeans.histogram(points, bins=1 << 16)
    centroids = kmeans.fit_centroids(hist, k)
    found = kmeans_codes.assign(points, centroids)
    # As the encoder does: each centroid becomes the exact mean of its cell.
    used = found.counts > 0
    centroids = centroids.copy()
    centroids[used] = found.sums[used] / found.counts[used]
    err = float(((points - centroids[found.codes]) ** 2).sum())
    assert err <= _brute_force_optimum(points, k) * (1 + 1e-6) + 1e-9


def test_few_distinct_values_are_exact():
    values = np.random.default_rng(1).choice([-1.5, 0.0, 0.25], size=(40, 50)).astype(np.float32)
    enc = encode_tensor("w", values, parse_rule("kmeans:2"))
    assert np.array_equal(enc.rows(0, 40), values)


def test_constant_tensor():
    enc = encode_tensor("w", np.full((8, 8), 3.5, np.float32), parse_rule("kmeans:4"))
    assert np.all(enc.rows(0, 8) == 3.5)


def test_codebooks_are_sorted_and_codes_in_range(gaussian):
    enc = encode_tensor("w", gaussian, parse_rule("kmeans:3,group=100"))
    assert enc.codebook.shape == (6, 8)
    assert np.all(np.diff(enc.codebook.astype(np.float64), axis=1) >= 0)
    assert enc.codes.max() < 8


def test_grouped_codebooks_beat_one_codebook_on_rows_of_different_scale():
    rng = np.random.default_rng(2)
    scales = np.geomspace(0.01, 10, 64, dtype=np.float32)[:, None]
    w = rng.standard_normal((64, 256)).astype(np.float32) * scales

    def mean_row_sqnr(enc):
        err = ((enc.rows(0, 64) - w) ** 2).sum(axis=1)
        return float(np.mean(10 * np.log10((w**2).sum(axis=1) / err)))

    one = encode_tensor("w", w, parse_rule("kmeans:4"))
    grouped = encode_tensor("w", w, parse_rule("kmeans:4,group=8"))
    assert grouped.stats["sqnr_db"] >= one.stats["sqnr_db"]
    assert mean_row_sqnr(grouped) > mean_row_sqnr(one) + 10


@pytest.mark.parametrize(
    "rule",
    [
        "kmeans:4,prune=0.6",
        "linear:8,prune=0.6",
        "kmeans:2,row,prune=0.5",
        "linear:4,group=16,prune_threshold=0.5",
    ],
)
def test_pruned_weights_stay_exact_zeros(gaussian, rule):
    enc = encode_tensor("w", gaussian, parse_rule(rule))
    restored = enc.rows(0, gaussian.shape[0])
    threshold = 0.5 if "threshold" in rule else np.quantile(np.abs(gaussian), 0.5 if "0.5" in rule else 0.6)
    pruned = np.abs(gaussian) < threshold * 0.999
    assert enc.stats["pruned"] >= pruned.sum()
    assert np.all(restored[pruned] == 0.0)


def test_linear_codes_keep_zero_exact_and_bound_error(gaussian):
    enc = encode_tensor("w", gaussian, parse_rule("linear:8,row"))
    restored = enc.rows(0, gaussian.shape[0])
    step = enc.scale[:, None]
    assert np.all(np.abs(restored - gaussian) <= step / 2 + 1e-6)
    w = gaussian.copy()
    w[:, ::7] = 0
    enc = encode_tensor("w", w, parse_rule("linear:3"))
    assert np.all(enc.rows(0, w.shape[0])[:, ::7] == 0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("rule", ["kmeans:4", "linear:8", "fp16"])
def test_non_finite_values_are_named(bad, rule):
    w = np.ones((8, 8), np.float32)
    w[3, 5] = bad
    with pytest.raises(QuantizationError, match=r"tensor 'layer.w'.*flat index 29"):
        encode_tensor("layer.w", w, parse_rule(rule))


@pytest.mark.parametrize("sign", [1, -1])  # (the largest magnitude from either end of the range)
def test_fp16_overflow_is_an_error(sign):
    with pytest.raises(QuantizationError, match="float16 range"):
        encode_tensor("big", np.full((4, 4), sign * 1e6, np.float32), parse_rule("fp16"))
    w = np.zeros((4, 4), np.float32)
    w[1, 2] = sign * 70000.0
    with pytest.raises(QuantizationError, match="float16 range"):
        encode_tensor("one", w, parse_rule("fp16"))


@pytest.mark.parametrize("sign", [1, -1])
def test_fp16_of_values_all_below_its_smallest_is_an_error(sign):
    with pytest.raises(QuantizationError, match="below float16's smallest"):
        encode_tensor("tiny", np.full((4, 4), sign * 1e-9, np.float32), parse_rule("fp16"))
    zeros = encode_tensor("zeros", np.zeros((4, 4), np.float32), parse_rule("fp16"))  # (all zero: fine)
    assert not np.asarray(zeros.values).any()


@pytest.mark.parametrize("rule", ["kmeans:4", "kmeans:8", "kmeans:4,group=64,scale=row"])
@pytest.mark.parametrize("scale", [1e-40, 1e-9, 1e-6])
def test_weights_below_fp16_normal_range_are_an_error_not_zeros(rule, scale):
    """A float16 codebook flushed such weights to zero (or to a few subnormal steps) and the
    pack reported 0 dB; now it says so, and codebook=float32 keeps them."""
    w = (np.random.default_rng(2).standard_normal((128, 64)) * scale).astype(np.float32)
    with pytest.raises(QuantizationError, match=r"tensor 'w'.*codebook=float32"):
        encode_tensor("w", w, parse_rule(rule))
    q = encode_tensor("w", w, parse_rule(rule + ",codebook=float32"))
    assert q.stats.get("sqnr_db", 20.0) > 15.0
    back = q.dequantize() if "scale" not in rule else None
    if back is not None:
        assert np.corrcoef(back.reshape(-1), w.reshape(-1))[0, 1] > 0.99


def test_fp16_refuses_a_tensor_it_would_store_as_zeros():
    tiny = np.full((4, 4), 1e-9, np.float32)
    with pytest.raises(QuantizationError, match=r"tensor 'b'.*use raw"):
        encode_tensor("b", tiny, parse_rule("fp16"))
    tiny[0, 0] = 1e-6  # one value float16 can hold (as a subnormal): stored, as a cast would
    assert encode_tensor("b", tiny, parse_rule("fp16")).values[0, 0] != 0
    encode_tensor("b", np.zeros((4, 4), np.float32), parse_rule("fp16"))


def test_small_but_normal_weights_and_zeros_keep_float16_codebooks():
    rng = np.random.default_rng(3)
    encode_tensor("w", (rng.standard_normal((64, 64)) * 1e-3).astype(np.float32), parse_rule("kmeans:4"))
    encode_tensor("w", np.zeros((64, 64), np.float32), parse_rule("kmeans:4"))


def test_quantization_is_deterministic(gaussian):
    a = encode_tensor("w", gaussian, parse_rule("kmeans:4,group=64"))
    b = encode_tensor("w", gaussian, parse_rule("kmeans:4,group=64"))
    assert np.array_equal(a.codes, b.codes) and np.array_equal(a.codebook, b.codebook)


def test_entropy_constrained_fit_trades_little_sqnr_for_fewer_bits(gaussian):
    plain = encode_tensor("w", gaussian, parse_rule("kmeans:4"))
    ec = encode_tensor("w", gaussian, parse_rule("kmeans:4,ecq=0.25"))
    assert ec.stats["entropy_bits"] < plain.stats["entropy_bits"] - 0.08
    assert plain.stats["sqnr_db"] - 0.3 <= ec.stats["sqnr_db"] < plain.stats["sqnr_db"]


@pytest.mark.parametrize("most", [12, 300])
def test_ec_cells_match_brute_force(most):
    rng = np.random.default_rng(3)
    for case in range(50):
        centroids = np.sort(rng.standard_normal(rng.integers(2, most)))
        if case % 3 == 0:  # repeated centroids: only one of each can own a cell
            centroids = np.sort(np.concatenate((centroids, centroids[: centroids.size // 3])))
        lengths = rng.random(centroids.size) * 5
        lam = float(rng.random()) * (case % 4 != 1)  # lam = 0: every distinct line owns a cell
        owners, edges = kmeans.ec_cells(centroids, lengths, lam)
        if lam == 0 and case % 3:
            assert np.array_equal(owners, np.arange(centroids.size))  # the one-pass path
        xs = np.linspace(-4, 4, 2001)
        brute = np.argmin((xs[:, None] - centroids) ** 2 + lam * lengths, axis=1)
        fast = owners[np.searchsorted(edges, xs)]
        cost = lambda idx: (xs - centroids[idx]) ** 2 + lam * lengths[idx]  # noqa: E731
        assert np.allclose(cost(fast), cost(brute))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bits", [1, 4, 8])
def test_exact_histogram_cell_stats_are_the_exact_ones(dtype, bits):
    """A row group's histogram is its unique values: the cell counts and sums come from it,
    the same as a pass over the values (up to the order of the additions), also for values
    between an edge and the edge rounded to float32, which a float32 compare puts above it."""
    rng = np.random.default_rng(bits)
    w = (rng.standard_t(4, 40_000) * 0.02).astype(dtype)
    w[:2000] = np.round(w[:2000], 3)  # repeated values
    hist = kmeans.histogram(w)
    assert hist.width == 0  # the exact path
    centroids = np.unique(kmeans.fit_centroids(hist, 1 << bits))
    cut = kmeans_codes.boundaries(centroids)
    w[2000 : 2000 + cut.size] = cut.astype(dtype)  # values on the (rounded) edges
    w[3000 : 3000 + cut.size] = np.nextafter(cut, np.inf).astype(dtype)
    hist = kmeans.histogram(w)
    exact, binned = kmeans_codes.assign(w, centroids), kmeans_codes.assign_binned(w, hist, centroids)
    assert np.array_equal(exact.codes, binned.codes)
    assert np.array_equal(exact.counts, binned.counts)
    assert np.allclose(binned.sums, exact.sums, rtol=1e-12, atol=1e-12)
    assert binned.sum_squares == pytest.approx(exact.sum_squares, rel=1e-12)


@pytest.mark.parametrize("kind", ["gaussian", "student", "outliers"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_binned_cell_stats_match_the_exact_ones(kind, bits):
    """Large blocks take their cell means and counts from the fine histogram: the codes are the
    same, the means well inside the fp16 codebook's rounding, the SQNR stat within 0.01 dB."""
    rng = np.random.default_rng(bits)
    w = {
        "gaussian": rng.standard_normal(300_000),
        "student": rng.standard_t(3, 300_000),
        "outliers": np.concatenate((rng.standard_normal(299_990), rng.uniform(40, 80, 10))),
    }[kind].astype(np.float32) * 0.02
    hist = kmeans.histogram(w)
    assert hist.width > 0  # the binned path
    centroids = np.unique(kmeans.fit_centroids(hist, 1 << bits).astype(np.float16)).astype(np.float64)
    exact, binned = kmeans_codes.assign(w, centroids), kmeans_codes.assign_binned(w, hist, centroids)
    assert np.array_equal(exact.codes, binned.codes)
    used = exact.counts > 0
    # only values in a bin that straddles an edge can be counted in the neighbouring cell
    assert np.abs(binned.counts - exact.counts).sum() <= 2 * (centroids.size - 1) * hist.counts.max()
    spacing = np.diff(centroids).min()
    means = binned.sums[used] / np.maximum(binned.counts[used], 1)
    assert np.abs(means - exact.sums[used] / exact.counts[used]).max() < 0.05 * spacing
    table = (exact.sums[used] / exact.counts[used]).astype(np.float16).astype(np.float64)
    full = np.zeros(centroids.size)
    full[used] = table

    def db(a):
        return 10 * math.log10(a.sum_squares / a.squared_error(full))

    assert abs(db(binned) - db(exact)) < 0.01


@pytest.mark.parametrize(
    "rule", ["kmeans:4,group=16,scale=row", "kmeans:3,scale=row", "kmeans:4,ecq=0.5,scale=row"]
)
def test_scaled_rows_sqnr_stat_is_the_error_of_what_a_reader_restores(tmp_path, rule):
    """scale=row measures its SQNR group by group while the codes are in cache: it must be
    the error of the weights a reader gets back (codebook entry x row scale)."""
    rng = np.random.default_rng(3)
    w = (rng.standard_t(4, (100, 96)) * rng.uniform(0.01, 1.0, (100, 1))).astype(np.float32)
    report = kformat.pack({"w": w}, tmp_path / "m.kf", rules=[f"*={rule}"])
    back = kformat.load_all(str(tmp_path / "m.kf"))["w"].astype(np.float64)
    expected = 10 * math.log10(np.sum(w.astype(np.float64) ** 2) / np.sum((w - back) ** 2))
    assert report.manifest.tensors[0].stats["sqnr_db"] == pytest.approx(expected, abs=1e-9)
