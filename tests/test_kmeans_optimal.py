"""k-means codebooks against the exact optimum of 1-D k-means (the `kmeans1d` package, an
O(kn) SMAWK dynamic programme): within 0.1 dB at every width, per tensor and per group, on
weights shaped like trained ones (heavy tails, far outliers)."""

import numpy as np
import pytest

from kformat.methods import get_method
from kformat.methods.kmeans_dp import optimal_centroids
from kformat.recipe import parse_rule

kmeans1d = pytest.importorskip("kmeans1d")
KMEANS = get_method("kmeans")


def sqnr(x, y):
    x = x.astype(np.float64)
    return 10 * np.log10(np.sum(x * x) / np.sum((x - y) ** 2))


def optimum(values, k):
    clusters, centroids = kmeans1d.cluster(values.reshape(-1).astype(np.float64), k)
    return sqnr(values.reshape(-1), np.asarray(centroids)[np.asarray(clusters)])


def trained_like(rng, shape, kind):
    if kind == "gaussian":
        return rng.standard_normal(shape) * 0.02
    if kind == "student":  # heavy tails, as attention and MLP weights have
        return rng.standard_t(3, shape) * 0.02
    w = rng.standard_normal(shape) * 0.025  # an embedding: a few entries 80 sigma out
    w.reshape(-1)[rng.choice(w.size, 12, replace=False)] = rng.uniform(0.5, 2.0, 12)
    return w


@pytest.mark.parametrize("kind", ["gaussian", "student", "outliers"])
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
def test_per_tensor_codebook_is_within_a_tenth_of_a_db_of_optimal(kind, bits):
    rng = np.random.default_rng(bits)
    rows = 560 if bits <= 4 else 160  # 71,680 values (the large-tensor path), 20,480 above 4 bits
    w = trained_like(rng, (rows, 128), kind).astype(np.float32)
    q = KMEANS.encode("w", w, parse_rule(f"kmeans:{bits},codebook=float32"))
    assert sqnr(w, q.dequantize()) >= optimum(w, 1 << bits) - 0.1


@pytest.mark.parametrize("bits", [2, 4, 6, 8])
def test_per_group_codebooks_are_within_a_tenth_of_a_db_of_optimal(bits):
    rng = np.random.default_rng(10 + bits)
    w = trained_like(rng, (128, 96), "outliers").astype(np.float32)
    q = KMEANS.encode("w", w, parse_rule(f"kmeans:{bits},group=64,codebook=float32"))
    back = q.dequantize()
    for g in range(2):
        rows = slice(64 * g, 64 * (g + 1))
        assert sqnr(w[rows], back[rows]) >= optimum(w[rows], 1 << bits) - 0.1


@pytest.mark.parametrize("n,k", [(40, 3), (500, 16), (3000, 256)])
def test_dynamic_programme_finds_the_optimum(n, k):
    rng = np.random.default_rng(n)
    points = np.sort(rng.standard_t(3, n))
    ours = optimal_centroids(points, np.ones(n), k)
    clusters, theirs = kmeans1d.cluster(points, k)

    def error(centroids):
        return float(np.min((points[:, None] - np.asarray(centroids)[None, :]) ** 2, axis=1).sum())

    assert error(ours) == pytest.approx(error(theirs), rel=1e-9, abs=1e-12)


def _reference_dp(points, weights, k):
    """The textbook O(k n^2) dynamic programme: the least weighted squared error."""
    n = points.size
    w = np.concatenate(([0.0], np.cumsum(weights)))
    s1 = np.concatenate(([0.0], np.cumsum(weights * points)))
    s2 = np.concatenate(([0.0], np.cumsum(weights * points * points)))
    i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    with np.errstate(divide="ignore", invalid="ignore"):
        cost = np.where(j > i, (s2[j] - s2[i]) - (s1[j] - s1[i]) ** 2 / (w[j] - w[i]), np.inf)
    best = cost[0].copy()
    for _ in range(k - 1):
        best = np.min(best[:, None] + cost, axis=0)
    return float(best[n])


def test_batched_weighted_problems_reach_the_optimum():
    """Several groups in one batch, weighted points: each at the textbook DP's optimum."""
    from kformat.methods.kmeans_dp import optimal_centroids_batch

    rng = np.random.default_rng(7)
    problems = [(np.unique(rng.standard_t(3, n)), None) for n in (60, 150, 90)]
    problems = [(p, rng.uniform(0.1, 5.0, p.size)) for p, _ in problems]
    for k in (2, 5, 12):
        for (points, weights), centroids in zip(problems, optimal_centroids_batch(problems, k)):
            error = float(np.sum(weights * np.min((points[:, None] - centroids[None, :]) ** 2, axis=1)))
            assert error == pytest.approx(_reference_dp(points, weights, k), rel=1e-9, abs=1e-12)


def test_dense_and_divide_and_conquer_layers_choose_the_same_splits(monkeypatch):
    """One small problem takes every (i, j) pair at once; it must find the very centroids the
    divide-and-conquer layers find (same costs, ties to the first split), so packs do not
    depend on which path ran."""
    import kformat.methods.kmeans_dp as dp

    rng = np.random.default_rng(7)
    for case in range(120):
        n, k = int(rng.integers(2, 600)), int(rng.integers(2, 20))
        points, weights = np.sort(rng.standard_t(3, n)), rng.uniform(0.1, 5, n)
        if case % 3 == 0:  # repeated weights and coarse points: ties between splits
            points = np.unique(np.round(points, 1))
            weights = np.round(weights[: points.size])
        found = []
        for cells in (dp.DENSE_CELLS, 0):
            monkeypatch.setattr(dp, "DENSE_CELLS", cells)
            found.append(dp.optimal_centroids_batch([(points, weights)], k)[0])
        assert np.array_equal(*found), (n, k)


@pytest.mark.parametrize("layer_points", [1 << 30, 700, 1])
def test_runs_of_problems_find_what_one_programme_finds(monkeypatch, layer_points):
    """The numpy layers search a batch's problems in runs of about LAYER_POINTS points (their
    arrays then stay in cache): every run size gives the very centroids of one run of all,
    problems of different sizes and with too few points for k included."""
    import kformat.methods.kmeans_dp as dp

    monkeypatch.setenv("KFORMAT_NUMBA", "0")
    rng = np.random.default_rng(11)
    problems = []
    for n in rng.integers(1, 400, 40):
        points = np.unique(np.round(rng.standard_t(3, int(n)), 2))
        problems.append((points, np.round(rng.uniform(0.5, 4, points.size))))
    monkeypatch.setattr(dp, "LAYER_POINTS", 1 << 30)
    want = dp.optimal_centroids_batch(problems, 9)
    monkeypatch.setattr(dp, "LAYER_POINTS", layer_points)
    got = dp.optimal_centroids_batch(problems, 9)
    assert all(np.array_equal(a, b) for a, b in zip(want, got))
