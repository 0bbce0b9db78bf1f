"""scale=row with one codebook divides its rows as they are read (ScaledRows), not in a copy
of the whole tensor: the same values, slice by slice, and the same packed bytes."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kformat
from kformat.methods import kmeans_groups
from kformat.methods.scaled_rows import ScaledRows


def _rows(seed=0, shape=(37, 53)):
    rng = np.random.default_rng(seed)
    rows = (rng.standard_normal(shape) * rng.uniform(0.01, 50, (shape[0], 1))).astype(np.float32)
    divisor = np.sqrt(np.mean(np.square(rows), axis=1)).astype(np.float16).astype(np.float32)
    return rows, divisor


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.integers(-2500, 2500), st.integers(-2500, 2500), st.integers(1, 40))
def test_every_slice_holds_the_values_of_the_whole_division(start, stop, step):
    rows, divisor = _rows()
    whole = (rows / divisor[:, None]).reshape(-1)
    got = ScaledRows(rows, divisor).reshape(-1)[start:stop:step]
    assert got.dtype == np.float32
    assert np.array_equal(got, whole[start:stop:step])


def test_it_is_read_flat_and_forward_only():
    rows, divisor = _rows()
    view = ScaledRows(rows, divisor)
    assert view.size == rows.size and view.shape == rows.shape and view.reshape(-1) is view
    with pytest.raises(ValueError):
        view.reshape(rows.shape)
    with pytest.raises(ValueError):
        view[::-1]
    with pytest.raises(TypeError):
        view[3]
    with pytest.raises(TypeError):
        ScaledRows(rows.astype(np.float64), divisor)


def test_a_large_scaled_tensor_packs_the_same_bytes_without_the_copy(tmp_path, monkeypatch):
    """q8 (kmeans:8, scale=row, one codebook) of a tensor above SCALED_IN_PLACE, read through
    ScaledRows, against the same pack with the whole division made first."""
    rows, _ = _rows(1, (1024, 4160))  # 4.26M values: above 2^22
    weights = {"fc.weight": rows}
    assert rows.size >= kmeans_groups.SCALED_IN_PLACE
    made = []

    class Counted(ScaledRows):
        def __init__(self, *args):
            made.append(1)
            super().__init__(*args)

    monkeypatch.setattr(kmeans_groups, "ScaledRows", Counted)
    kformat.pack(weights, tmp_path / "view.kf", "q8", jobs=1)
    assert made  # (the histogram's and the codes' reads went through it)
    monkeypatch.setattr(kmeans_groups, "SCALED_IN_PLACE", 1 << 62)  # the whole division, as before
    kformat.pack(weights, tmp_path / "copy.kf", "q8", jobs=1)
    assert (tmp_path / "view.kf").read_bytes() == (tmp_path / "copy.kf").read_bytes()
