"""A grouped k-means tensor is fitted a batch of groups at a time (their histograms made,
seeded, used, then dropped): the codebooks, codes and stats do not depend on the batches."""

import numpy as np
import pytest

from kformat.methods import kmeans, kmeans_groups
from kformat.packing.encode import encode_tensor
from kformat.recipe import parse_rule


@pytest.fixture
def weights():
    rng = np.random.default_rng(7)
    w = rng.standard_t(4, size=(96, 200)).astype(np.float32) * 0.05
    w[5] *= 40.0  # a row of another range (scale=row)
    return w


@pytest.mark.parametrize(
    "rule",
    [
        "kmeans:4,group=8",
        "kmeans:4,group=8,scale=row",
        "kmeans:3,group=16,ecq=0.5",
        "kmeans:4,group=8,prune=0.3",
        "kmeans:8,group=32",
    ],
)
def test_batches_of_groups_give_the_same_tensor(monkeypatch, weights, rule):
    whole = encode_tensor("t", weights, parse_rule(rule))
    monkeypatch.setattr(kmeans_groups, "HISTOGRAMS_AT_ONCE", 1)  # one group a batch
    assert kmeans_groups.group_batches(12, 8 * 200) == [(g, g + 1) for g in range(12)]
    batched = encode_tensor("t", weights, parse_rule(rule))
    assert np.array_equal(whole.codes, batched.codes)
    assert whole.tables.keys() == batched.tables.keys()
    for name in whole.tables:
        assert np.array_equal(whole.tables[name], batched.tables[name]), name
    assert whole.stats == batched.stats


def test_importance_weighted_groups_too(monkeypatch, weights):
    importance = np.random.default_rng(1).random(weights.shape).astype(np.float32)
    method = kmeans.KMeans()
    rule = parse_rule("kmeans:4,group=8")
    whole = method.encode("t", weights, rule, weights=importance)
    monkeypatch.setattr(kmeans_groups, "HISTOGRAMS_AT_ONCE", 1)
    batched = method.encode("t", weights, rule, weights=importance)
    assert np.array_equal(whole.codes, batched.codes)
    assert np.array_equal(whole.tables["codebook"], batched.tables["codebook"])
    assert whole.stats == batched.stats


def test_batches_hold_a_bounded_number_of_histograms():
    """About 32 MiB of histograms a batch: exact points of a 64 x 768 group count 32 bytes each."""
    batches = kmeans_groups.group_batches(477, 64 * 768)  # BERT-base's word embedding under q4
    assert len(batches) == 23 and batches[0] == (0, 21) and batches[-1] == (462, 477)
    assert kmeans_groups.group_batches(1, 10**8) == [(0, 1)]
