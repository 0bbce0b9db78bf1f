"""A long pole's row groups fitted in two processes (kformat.packing.split): the same tensor
as one process makes, whatever share the child takes, and when the child dies."""

import logging
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kformat
from kformat.methods import get_method, kernels
from kformat.packing import split
from kformat.recipe import parse_rule

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")


@pytest.fixture(autouse=True)
def kernels_settled(monkeypatch):
    """No load of the fit kernels starts or runs meanwhile: a pole is split only when none does."""
    monkeypatch.setenv("KFORMAT_NUMBA", "0")
    if kernels._loader is not None:
        kernels._loader.join()


@pytest.fixture
def w():
    rng = np.random.default_rng(11)
    w = (rng.standard_t(4, size=(512, 96)) * 0.05).astype(np.float32)
    w[40] *= 30.0  # a row of another range (scale=row)
    return w


def _same(a, b) -> None:
    assert np.array_equal(a.codes, b.codes)
    assert a.tables.keys() == b.tables.keys()
    for name in a.tables:
        assert np.array_equal(a.tables[name], b.tables[name]), name
    assert a.stats == b.stats
    assert (a.edges is None) == (b.edges is None)
    if a.edges is not None:
        assert np.array_equal(a.edges, b.edges, equal_nan=True)


@pytest.mark.parametrize(
    "text",
    ["kmeans:4,group=8", "kmeans:4,group=8,scale=row", "kmeans:3,group=16,ecq=0.5", "kmeans:8,group=64"],
)
@pytest.mark.parametrize("weighted", [False, True])
def test_a_split_encode_is_the_encode(w, text, weighted):
    rule = parse_rule(text)
    weights = np.random.default_rng(2).random(w.shape).astype(np.float32) if weighted else None
    method = get_method("kmeans")
    whole = method.encode("t", w, rule, weights=weights)
    parted = split.encode_split(method, "t", w, rule, weights)
    assert parted is not None
    _same(whole, parted)


def test_the_child_fits_groups_and_a_dead_child_costs_only_time(w, monkeypatch, caplog):
    method, rule = get_method("kmeans"), parse_rule("kmeans:4,group=4")
    whole = method.encode("t", w, rule)
    with caplog.at_level(logging.DEBUG, logger="kformat"):
        _same(whole, split.encode_split(method, "t", w, rule))
    shares = [r.getMessage() for r in caplog.records if "fitted in a forked process" in r.getMessage()]
    assert len(shares) == 1 and not shares[0].startswith("t: 0 of")

    monkeypatch.setattr(split, "_child_runs", _die)  # (inherited by the fork)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kformat"):
        _same(whole, split.encode_split(method, "t", w, rule))
    assert any("worker process died" in r.getMessage() for r in caplog.records)


def _die():
    os._exit(3)


def test_groups_that_depend_on_each_other_are_not_split(w):
    method = get_method("kmeans")
    assert method.group_encoder("t", w, parse_rule("kmeans:4,group=8,prune=0.3")) is None
    assert split.encode_split(method, "t", w, parse_rule("kmeans:4,group=8,prune=0.3")) is None
    assert split.encode_split(method, "t", w, parse_rule("kmeans:4")) is None  # one group
    assert get_method("linear").group_encoder("t", w, parse_rule("linear:8,row")) is None


def test_only_enough_fit_work_on_two_jobs_is_split(monkeypatch):
    kmeans, rule = get_method("kmeans"), parse_rule("kmeans:4,group=8")
    assert split.worth_splitting(kmeans, (8 * 200, 64), rule, jobs=2)  # 200 groups x 16 entries
    assert not split.worth_splitting(kmeans, (8 * 100, 64), rule, jobs=2)
    assert not split.worth_splitting(kmeans, (8 * 200, 64), rule, jobs=1)
    monkeypatch.setenv("KFORMAT_FORK", "0")
    assert not split.worth_splitting(kmeans, (8 * 200, 64), rule, jobs=2)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(runs=st.integers(1, 40), schedule=st.lists(st.booleans(), max_size=200))
def test_the_two_processes_claim_every_run_and_meet_once(runs, schedule):
    """Claims interleaved in any order (True: the parent's next step, False: the child's):
    every run is claimed, by one side or, where they meet, both."""
    marks = np.array([-1, runs], dtype=np.int64)
    sides = {False: iter(range(runs)), True: iter(range(runs - 1, -1, -1))}  # from_end: the child
    claimed = {False: [], True: []}
    stopped = set()
    for from_end in [not s for s in schedule] + [False] * (runs + 1) + [True] * (runs + 1):
        if from_end in stopped:
            continue
        i = next(sides[from_end], None)
        if i is None or not split.claim(marks, i, from_end):
            stopped.add(from_end)
        else:
            claimed[from_end].append(i)
    both = set(claimed[False]) & set(claimed[True])
    assert set(claimed[False]) | set(claimed[True]) == set(range(runs))
    assert len(both) <= 1


def test_a_pack_whose_pole_is_split_is_the_one_job_pack(tmp_path, caplog):
    rng = np.random.default_rng(5)
    weights = {
        "embed.weight": (rng.standard_normal((2048, 48)) * 0.05).astype(np.float32),
        "fc.weight": (rng.standard_normal((64, 48)) * 0.05).astype(np.float32),
        "fc.bias": np.zeros(64, np.float32),
    }
    recipe = kformat.Recipe.model_validate(
        {"name": "groups", "default": "fp16", "rules": [{"match": "*.weight", "rule": "kmeans:4,group=8"}]}
    )
    kformat.pack(weights, tmp_path / "one.kf", recipe, jobs=1)
    with caplog.at_level(logging.DEBUG, logger="kformat"):
        kformat.pack(weights, tmp_path / "two.kf", recipe, jobs=2)
    assert any(
        "embed.weight" in r.getMessage() and "forked process" in r.getMessage() for r in caplog.records
    )
    assert (tmp_path / "one.kf").read_bytes() == (tmp_path / "two.kf").read_bytes()


def test_on_threads_any_tensor_of_enough_fit_work_is_split(tmp_path, caplog, monkeypatch):
    """No long pole (the embedding is a fifth of the weights), no worker processes (as in bit
    allocation's rounds, or for a source that cannot be forked): the embedding is split."""
    rng = np.random.default_rng(6)
    weights = {
        f"layer{i}.weight": (rng.standard_normal((256, 96)) * 0.05).astype(np.float32) for i in range(8)
    }
    weights["embed.weight"] = (rng.standard_normal((2048, 24)) * 0.05).astype(np.float32)
    recipe = kformat.Recipe.model_validate(
        {"name": "groups", "default": "fp16", "rules": [{"match": "embed.*", "rule": "kmeans:4,group=8"}]}
    )
    kformat.pack(weights, tmp_path / "one.kf", recipe, jobs=1)
    monkeypatch.setattr("kformat.packing.local.forking", lambda source, jobs: False)
    with caplog.at_level(logging.DEBUG, logger="kformat"):
        kformat.pack(weights, tmp_path / "two.kf", recipe, jobs=2)
    assert any(
        "embed.weight" in r.getMessage() and "forked process" in r.getMessage() for r in caplog.records
    )
    assert (tmp_path / "one.kf").read_bytes() == (tmp_path / "two.kf").read_bytes()


@pytest.mark.parametrize("row", [3, 500])  # a group this process fits, and one the child does
def test_a_group_past_float16_is_the_same_error_split(w, row):
    from kformat.errors import QuantizationError

    w = w.copy()
    w[row, :8] = 1e6
    method, rule = get_method("kmeans"), parse_rule("kmeans:4,group=4")
    with pytest.raises(QuantizationError, match="'t': weights exceed the float16 range"):
        split.encode_split(method, "t", w, rule)
