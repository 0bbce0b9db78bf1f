"""float32 values rounded to float16 by the C loops' F16C pass (kernels_c.half_values) are
numpy's astype bits, ties, subnormals and overflow included, and so are fp16's stored values
and its estimate's rounding errors: the same planes and the same candidates."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from c_kernels import built_or_skip
from kformat.methods import fp16, kernels


def _finite_bits(rng: np.random.Generator, size: int) -> np.ndarray:
    values = rng.integers(0, 2**32, size, dtype=np.uint64).astype(np.uint32).view(np.float32)
    return values[np.isfinite(values)]


def _numpy(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(over="ignore", invalid="ignore"):
        half = values.astype(np.float16)
        return half, values - half.astype(np.float32)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.sampled_from([0, 1, 7, 8, 9, 1000, 4099]),
    kind=st.sampled_from(["weights", "bits", "ties", "edge"]),
)
def test_f16c_rounds_as_numpy(seed, size, kind):
    loops = built_or_skip()
    rng = np.random.default_rng(seed)
    if kind == "weights":
        values = (rng.standard_normal(size) * 10.0 ** rng.uniform(-9, 5)).astype(np.float32)
    elif kind == "bits":  # any finite bit pattern: subnormals, huge values, both zeros
        values = _finite_bits(rng, size)
    elif kind == "ties":  # halfway between neighbouring float16 values, normal and subnormal
        bits = rng.integers(0, 0x7BFF, size, dtype=np.uint16)
        low, high = (b.view(np.float16).astype(np.float64) for b in (bits, bits + np.uint16(1)))
        values = ((low + high) / 2).astype(np.float32) * rng.choice(np.array([-1, 1], np.float32), size)
    else:  # around float16's largest (65504) and past it
        values = (np.float32(65504) + rng.integers(-64, 64, size).astype(np.float32)) * rng.choice(
            [-1, 1], size
        )
    values = values.astype(np.float32)
    half, error = np.empty(values.size, np.float16), np.empty(values.size, np.float32)
    level = kernels.c_loops().set_vectors(1)
    try:
        if level < 1:
            pytest.skip("this processor has no AVX2 path")
        if not loops.half_values(values, half, error):
            pytest.skip("this processor has no F16C")
    finally:
        kernels.c_loops().set_vectors(9)
    want_half, want_error = _numpy(values)
    np.testing.assert_array_equal(half.view(np.uint16), want_half.view(np.uint16))
    np.testing.assert_array_equal(error, want_error)
    np.testing.assert_array_equal(fp16.rounded(values).view(np.uint16), want_half.view(np.uint16))
    np.testing.assert_array_equal(fp16.rounding_error(values), want_error)


def test_nan_and_no_vectors_are_left_to_numpy():
    loops = built_or_skip()
    values = np.array([1.0, 2.0, np.nan, 3.0], np.float32)
    assert not loops.half_values(values, np.empty(4, np.float16), None)
    assert not loops.half_values(np.full(11, np.nan, np.float32), None, np.empty(11, np.float32))
    with np.errstate(invalid="ignore"):
        want = values.astype(np.float16)
    np.testing.assert_array_equal(fp16.rounded(values).view(np.uint16), want.view(np.uint16))
    level = loops.set_vectors(0)
    try:
        assert level == 0 and not loops.half_values(np.ones(8, np.float32), np.empty(8, np.float16), None)
        np.testing.assert_array_equal(fp16.rounded(np.full(9, 0.1, np.float32)), np.full(9, 0.1, np.float16))
    finally:
        loops.set_vectors(9)
    with pytest.raises(ValueError, match="half"):
        loops.half_values(np.ones(8, np.float32), np.empty(7, np.float16), None)


def test_an_fp16_tensor_from_a_strided_or_float64_array_takes_numpys_path():
    w = np.random.default_rng(3).standard_normal((6, 10)).astype(np.float32)
    np.testing.assert_array_equal(fp16.rounded(w[:, ::2]), w[:, ::2].astype(np.float16))
    np.testing.assert_array_equal(fp16.rounded(w.astype(np.float64)), w.astype(np.float16))


@pytest.mark.parametrize("level", [0, 1, 2])
@pytest.mark.parametrize("count", [65536, 65531, 9, 8, 1, 0])
def test_widened_by_f16c_is_numpy_s_cast_for_every_pattern(level, count):
    """fp16's dequantize (F16C where built, its table otherwise) gives numpy's float32 bits for
    every float16 pattern, NaN payloads (F16C alone would quiet them) and signed zeros included,
    at every vector level and for tails of every length."""
    loops = built_or_skip()
    patterns = np.arange(65536, dtype=np.uint16)[65536 - count :]
    want = patterns.view(np.float16).astype(np.float32)
    loops.set_vectors(level)
    try:
        got = fp16.Fp16().dequantize(patterns.view(np.float16).reshape(1, -1), 0, 0, {})
        direct = np.full(count, 7.0, np.float32)
        ran = loops.widen_half(patterns, direct)
    finally:
        loops.set_vectors(9)
    assert got.view(np.uint32).tolist() == [want.view(np.uint32).tolist()]
    if ran:
        assert direct.view(np.uint32).tolist() == want.view(np.uint32).tolist()
    with pytest.raises(ValueError, match="out"):
        loops.widen_half(np.zeros(4, np.uint16), np.empty(3, np.float32))


def test_values_rounded_later_are_the_whole_cast_slice_by_slice():
    """The packer's fp16 values (fp16.RoundedLater) read a slice at a time, tiles with a column
    range and rows alike, are those slices of the whole cast; np.asarray gives the whole."""
    w = (np.random.default_rng(5).standard_normal((37, 53)) * 3).astype(np.float32)
    later = fp16.Fp16().encode("w", w, None).values
    whole = w.astype(np.float16)
    assert later.shape == w.shape and later.dtype == np.float16 and len(later) == 37
    for key in (np.s_[0:5], np.s_[3:17, 8:40], np.s_[30:37, 50:53], np.s_[::4]):
        got = later[key]
        assert isinstance(got, np.ndarray) and got.dtype == np.float16
        np.testing.assert_array_equal(got.view(np.uint16), whole[key].view(np.uint16))
    np.testing.assert_array_equal(np.asarray(later).view(np.uint16), whole.view(np.uint16))
    np.testing.assert_array_equal(np.asarray(later, dtype=np.float32), whole.astype(np.float32))


@pytest.mark.parametrize("level", [0, 1])
def test_widened_into_a_strided_output_band_by_band_is_numpy_s_cast(level):
    """A tile narrower than its tensor is widened into a strided output through a band: the
    same bits for every pattern, with F16C and without."""
    loops = built_or_skip()
    patterns = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    whole = np.zeros((256, 300), np.float32)
    loops.set_vectors(level)
    try:
        fp16.Fp16().dequantize(patterns.view(np.float16), 0, 0, {}, out=whole[:, 10:266])
    finally:
        loops.set_vectors(9)
    want = patterns.view(np.float16).astype(np.float32)
    assert whole[:, 10:266].view(np.uint32).tolist() == want.view(np.uint32).tolist()
    assert not whole[:, :10].any() and not whole[:, 266:].any()
