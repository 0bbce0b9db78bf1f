"""A tensor's range is read once: the packer's finiteness check reads each chunk's min and
max, and the method's passes over the whole tensor (its histogram) take that range instead
of reading it again. The same range, the same bytes; NaN and inf anywhere still refused."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

import kformat
from kformat.errors import QuantizationError
from kformat.methods import histogram
from kformat.methods.chunks import CHUNK
from kformat.methods.histogram import known_range, value_range
from kformat.packing import encode
from kformat.packing.encode import check_finite


def test_the_check_gives_value_range_s_range_for_float32_only():
    w = np.random.default_rng(0).standard_normal((3, CHUNK)).astype(np.float32)  # three chunks
    assert check_finite("w", w) == value_range(w.reshape(-1))
    assert check_finite("w", w.astype(np.float64)) is None
    assert check_finite("empty", np.zeros((0, 4), np.float32)) is None


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("at", [0, CHUNK + 5, 3 * CHUNK - 1])  # (past the first chunk too)
def test_a_value_that_is_not_finite_is_refused_wherever_it_is(bad, at):
    w = np.ones(3 * CHUNK, np.float32)
    w[at] = bad
    with pytest.raises(QuantizationError, match=f"at flat index {at} is not finite"):
        check_finite("w", w)


def test_the_known_range_stands_for_that_array_only():
    a = np.arange(12, dtype=np.float32)
    b = a.copy()
    with known_range(a, (-7.0, 99.0)):
        assert value_range(a) == (-7.0, 99.0)  # (taken as told: no pass)
        assert value_range(b) == (0.0, 11.0)  # another array of the same size and values
        assert value_range(a[:6]) == (0.0, 5.0)  # part of it
    assert value_range(a) == (0.0, 11.0)


@pytest.mark.parametrize("recipe", ["kmeans4", "mobile", "kmeans8"])
def test_a_pack_with_the_range_read_once_is_the_same_bytes(tmp_path, monkeypatch, recipe):
    rng = np.random.default_rng(1)
    weights = {
        "big": rng.standard_normal((512, 1024)).astype(np.float32),
        "small": np.ones((8, 8), np.float32),
    }
    read = []
    real = histogram.range_parts
    monkeypatch.setattr(histogram, "range_parts", lambda flat: read.append(flat.size) or real(flat))
    kformat.pack(weights, tmp_path / "once.kf", recipe, jobs=1)
    once = list(read)
    monkeypatch.setattr(encode, "known_range", lambda flat, span: contextlib.nullcontext())
    read.clear()
    kformat.pack(weights, tmp_path / "twice.kf", recipe, jobs=1)
    assert (tmp_path / "once.kf").read_bytes() == (tmp_path / "twice.kf").read_bytes()
    assert once.count(512 * 1024) < read.count(512 * 1024)  # (the whole tensor read fewer times)
