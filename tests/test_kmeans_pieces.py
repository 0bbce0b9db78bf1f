"""Wide codebooks seeded by the dynamic programme in pieces: the hand-out of clusters among
pieces is optimal, a piece that needs many more clusters than the average gets them, and
seeds polished by Lloyd land on the exact optimum's error."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kformat.methods import kmeans_pieces
from kformat.methods.kmeans_dp import Programme, optimal_centroids
from kformat.methods.kmeans_fit import lloyd


def error(points, weights, centroids):
    return float(np.sum(weights * np.min((points[:, None] - centroids[None, :]) ** 2, axis=1)))


@settings(derandomize=True, max_examples=60, deadline=None)
@given(st.data())
def test_hand_out_is_the_best_split_of_k_clusters_among_pieces(data):
    """Against every split, on the real error curves of small pieces (convex in the count)."""
    sizes = data.draw(st.lists(st.integers(1, 9), min_size=1, max_size=4))
    seed = data.draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    pieces = [(np.sort(rng.standard_t(2, n)), rng.uniform(0.1, 3.0, n)) for n in sizes]
    programme = Programme(pieces)
    programme.extend(max(sizes))
    errors = np.array(programme.errors)
    k = data.draw(st.integers(len(sizes), sum(sizes)))
    counts = kmeans_pieces._hand_out(errors, k)
    assert counts.sum() == k and np.all(counts >= 1) and np.all(counts <= sizes)
    best = min(
        sum(errors[m - 1, p] for p, m in enumerate(split))
        for split in itertools.product(*[range(1, n + 1) for n in sizes])
        if sum(split) == k
    )
    found = sum(errors[m - 1, p] for p, m in enumerate(counts))
    assert np.isclose(found, best, rtol=1e-9, atol=1e-12)


def test_a_piece_that_needs_many_clusters_gets_them():
    """Forty far outliers, each worth a cluster of its own, sit in one piece: the programme is
    grown past its first depth for that piece until the hand-out no longer wants more."""
    rng = np.random.default_rng(3)
    core = rng.standard_normal(3000) * 0.02
    outliers = 1.0 + np.arange(40) * 0.5  # spread so that each is best alone
    points = np.unique(np.concatenate((core, outliers)))
    weights = np.ones(points.size)
    k = 128
    seed = kmeans_pieces.seed_in_pieces([(points, weights)], k)[0]
    assert seed.size == k and np.all(np.diff(seed) > 0)
    nearest = np.min(np.abs(outliers[:, None] - seed[None, :]), axis=1)
    assert np.all(nearest < 1e-9)  # every outlier its own centroid, as at the optimum
    exact = error(points, weights, optimal_centroids(points, weights, k))
    assert error(points, weights, seed) <= exact * 1.05


@pytest.mark.parametrize("k", [64, 256])
def test_seeds_polished_by_lloyd_reach_the_optimum_of_several_groups(k):
    """A batch of groups (weighted, heavy-tailed) at k = 64 and 256: within 0.05 dB of the exact
    programme once Lloyd has run, as kmeans_fit uses them (raw points, about 16 per
    cluster, where Lloyd's local minima are closest together: 0.03 dB; on binned weights the
    gap is a few hundredths less, see test_kmeans_optimal)."""
    rng = np.random.default_rng(11)
    problems = []
    for n in (1500, 4000, 2600):
        points = np.unique(rng.standard_t(3, n) * 0.02)
        problems.append((points, rng.uniform(0.5, 4.0, points.size)))
    seeds = kmeans_pieces.seed_in_pieces(problems, k)
    for (points, weights), seed in zip(problems, seeds):
        polished = lloyd(points, weights, seed)
        exact = error(points, weights, optimal_centroids(points, weights, k))
        assert 10 * np.log10(error(points, weights, polished) / exact) <= 0.05


def test_narrow_codebooks_and_small_problems_get_the_exact_programme():
    rng = np.random.default_rng(5)
    points = np.sort(rng.standard_t(3, 700))
    weights = rng.uniform(0.5, 2.0, points.size)
    for k in (16, 32, 512):  # narrow, narrow, and fewer than 2k points
        ours = kmeans_pieces.seed_in_pieces([(points, weights)], k)[0]
        assert np.array_equal(ours, optimal_centroids(points, weights, k))
