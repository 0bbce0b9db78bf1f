"""Allocation seeds many small tensors' codebooks in one batch and keeps the seeds for their
encodes: a batched seed is the seed alone, the encodes find them, and the output is the
same bytes as without the batch."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import kformat
from kformat.methods import kmeans_fit, kmeans_memo, kmeans_pieces
from kformat.methods.kmeans import KMeans


@settings(max_examples=12, deadline=None, derandomize=True)
@given(st.integers(0, 10_000), st.sampled_from([2, 8, 16, 64, 256]))
def test_a_seed_from_a_batch_is_the_seed_alone(seed, k):
    rng = np.random.default_rng(seed)
    hists = [
        kmeans_fit.histogram((rng.standard_t(3, int(n)) * scale).astype(np.float32))
        for n, scale in zip(rng.integers(300, 30_000, 4), rng.uniform(0.01, 2.0, 4))
    ]
    batched = kmeans_fit.seeds(hists, k)
    for hist, together in zip(hists, batched):
        assert np.array_equal(together, kmeans_fit.seeds([hist], k)[0])


def test_remembered_seeds_are_found_and_forgotten_after(monkeypatch):
    rng = np.random.default_rng(1)
    hists = [kmeans_fit.histogram(rng.standard_normal(5000).astype(np.float32)) for _ in range(3)]
    solved = []
    real = kmeans_pieces.seed_in_pieces
    monkeypatch.setattr(kmeans_fit, "seed_in_pieces", lambda p, k: solved.append(len(p)) or real(p, k))
    with kmeans_fit.remembered_seeds():
        first = kmeans_fit.seeds(hists, 16)
        again = kmeans_fit.seeds(hists[1:2], 16)  # found: nothing solved
        assert solved == [3] and np.array_equal(again[0], first[1])
    kmeans_fit.seeds(hists[1:2], 16)  # forgotten
    assert solved == [3, 1]


def model():
    rng = np.random.default_rng(8)
    return {
        f"layer{i}.weight": (rng.standard_t(4, (rows, 96)) * 0.03).astype(np.float32)
        for i, rows in enumerate([200, 130, 64, 300, 90])
    }


def test_allocation_writes_the_same_bytes_with_and_without_the_batch(tmp_path, monkeypatch):
    """The batch only moves work: every candidate's encode gets the same seeds."""
    kformat.pack(model(), tmp_path / "batched.kf", "fp16", target_bits=3.0)
    monkeypatch.setattr(KMeans, "warm", lambda self, problems: None)
    kformat.pack(model(), tmp_path / "alone.kf", "fp16", target_bits=3.0)
    assert (tmp_path / "batched.kf").read_bytes() == (tmp_path / "alone.kf").read_bytes()


def test_the_batch_computes_the_seeds_encodes_ask_for(monkeypatch):
    """After warm, encoding every candidate solves no programme: the histograms warm builds
    are those encode builds (a mismatch would only cost time, so it is checked here)."""
    from kformat.packing.weighing import exact_candidates, method_candidates

    weights = model()
    problems = [(w, None, method_candidates("kmeans", w.shape[0])) for w in weights.values()]
    solved = []
    real = kmeans_pieces.seed_in_pieces
    with kmeans_fit.remembered_seeds():
        KMeans().warm(problems)
        monkeypatch.setattr(
            kmeans_fit, "seed_in_pieces", lambda p, k: solved.append((len(p), k)) or real(p, k)
        )
        for name, w in weights.items():
            exact_candidates(name, w, (1024, 1024))
    assert solved == []


def test_weighing_finds_every_small_tensors_seeds_with_a_large_tensor_between(monkeypatch):
    """A large tensor weighed between two small ones of a batch (a transformer's word
    embeddings between its other embeddings and its first layer) must not drop the batch's
    seeds: the small tensors' candidates solve no programme."""
    from kformat.methods import kmeans_fit as fit
    from kformat.packing import weighing
    from kformat.recipe.recipe import load_recipe
    from kformat.sources import DictSource

    small = list(model().items())
    big = (np.random.default_rng(3).standard_normal((400, 96)) * 0.1).astype(np.float32)
    weights = dict(small[:2] + [("big.weight", big)] + small[2:])
    monkeypatch.setattr(weighing, "EXACT_MAX", 300 * 96)  # big.weight is estimated, the rest encoded
    solved_in_small = []
    inside = []
    real_candidates, real_pieces = weighing.candidates, kmeans_pieces.seed_in_pieces

    def candidates(name, array, *args, **kwargs):
        inside.append(array.size <= weighing.EXACT_MAX)
        try:
            return real_candidates(name, array, *args, **kwargs)
        finally:
            inside.pop()

    def pieces(problems, k):
        if inside and inside[-1]:
            solved_in_small.append(k)
        return real_pieces(problems, k)

    monkeypatch.setattr(weighing, "candidates", candidates)
    monkeypatch.setattr(fit, "seed_in_pieces", pieces)
    options, _ = weighing.estimate(DictSource(weights), load_recipe("fp16"))
    assert set(options) == set(weights)
    assert solved_in_small == []


def test_allocation_rounds_reuse_the_seeds_weighing_found(tmp_path, monkeypatch):
    """The packs that follow weighing fit the chosen rules from the seeds weighing computed
    (its histograms are those encode builds, large tensors' too): no programme is solved."""
    from kformat.packing import allocate, weighing

    weights = model()
    weights["big.weight"] = (np.random.default_rng(4).standard_t(5, (1024, 1100)) * 0.05).astype(np.float32)
    assert weights["big.weight"].size > weighing.EXACT_MAX  # estimated from histograms
    solved, weighed = [], []
    real_pieces, real_estimate = kmeans_pieces.seed_in_pieces, allocate.estimate
    monkeypatch.setattr(
        kmeans_fit, "seed_in_pieces", lambda p, k: (weighed and solved.append(k)) or real_pieces(p, k)
    )
    monkeypatch.setattr(allocate, "estimate", lambda *a: (real_estimate(*a), weighed.append(1))[0])
    kformat.pack(weights, tmp_path / "m.kf", "fp16", target_bits=3.5)
    assert weighed and solved == []


def test_seeds_past_the_memo_cap_are_returned_not_kept(monkeypatch):
    rng = np.random.default_rng(2)
    hists = [kmeans_fit.histogram(rng.standard_normal(5000).astype(np.float32)) for _ in range(2)]
    monkeypatch.setattr(kmeans_memo, "MEMO_BYTES", 200)  # room for one 16-entry seed
    with kmeans_fit.remembered_seeds():
        first = kmeans_fit.seeds(hists, 16)
        assert len(kmeans_memo._MEMO.found) == 1
        assert all(np.array_equal(a, b) for a, b in zip(first, kmeans_fit.seeds(hists, 16)))
    assert not kmeans_memo._MEMO.found and kmeans_memo._MEMO.bytes == 0


def test_allocation_rounds_reuse_the_histograms_weighing_read(tmp_path, monkeypatch):
    """A large tensor given a per-tensor rule is not read again to bin it: the pack finds the
    histogram weighing read (the same one: the file is the same as without it)."""
    from kformat.methods import histogram as hist_module
    from kformat.packing import allocate, weighing

    rng = np.random.default_rng(6)  # 100 rows: no per-group candidates
    weights = {"big.weight": (rng.standard_t(5, (100, 11_000)) * 0.05).astype(np.float32)}
    assert weights["big.weight"].size > weighing.EXACT_MAX
    binned, weighed = [], []
    real_histogram, real_estimate = hist_module.histogram, allocate.estimate

    def histogram(values, *args, **kwargs):
        if weighed and values.size == weights["big.weight"].size:
            binned.append(values.size)
        return real_histogram(values, *args, **kwargs)

    monkeypatch.setattr(kmeans_fit, "histogram", histogram)
    monkeypatch.setattr(allocate, "estimate", lambda *a: (real_estimate(*a), weighed.append(1))[0])
    kformat.pack(weights, tmp_path / "a.kf", "fp16", target_bits=4.0, jobs=1)
    with kformat.open(str(tmp_path / "a.kf")) as f:
        quant = f["big.weight"].entry.quant
        rule = f"kmeans:{quant.bits}"
    assert quant.method == "kmeans" and quant.group_rows >= 100  # one codebook: a per-tensor rule
    assert weighed and binned == []
    monkeypatch.setattr(kmeans_fit, "histogram", real_histogram)
    kformat.pack(weights, tmp_path / "direct.kf", "fp16", rules=[f"big.weight={rule}"])
    with kformat.open(str(tmp_path / "a.kf")) as a, kformat.open(str(tmp_path / "direct.kf")) as d:
        assert np.array_equal(a["big.weight"].numpy(), d["big.weight"].numpy())
