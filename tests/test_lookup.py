"""The loader's lookup of whole packed bytes (methods.base.take_rows) gives the same bytes
through the C loops as through np.take: every entry size a byte of codes makes (8-, 4-, 2-
and 1-bit codes), any bit pattern (NaN payloads, signed zeros), rows of any shape."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from c_kernels import built_or_skip
from kformat.methods.base import byte_table, take_rows


@pytest.mark.parametrize("depth", [8, 4, 2, 1])
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(0, 9), cols=st.integers(1, 700))
def test_whole_byte_lookups_in_c_are_np_take_s(depth, seed, rows, cols):
    loops = built_or_skip()
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 2**32, 1 << depth, dtype=np.uint32).view(np.float32)  # any bits
    table = byte_table(values, depth)
    indices = rng.integers(0, 256, (rows, cols), dtype=np.uint8)
    want = np.take(table, indices.astype(np.intp))
    out = np.empty(indices.shape, table.dtype)
    loops.lookup(table, indices, out)
    assert out.tobytes() == want.tobytes()
    again = np.empty(indices.shape, table.dtype)
    assert take_rows(table, indices, again).tobytes() == want.tobytes()  # (the C loops, here)


def test_other_lookups_stay_with_numpy():
    """Indices wider than a byte, tables of other lengths, strided outputs: np.take, the same."""
    table = np.arange(256, dtype=np.float32)
    wide = np.array([[3, 255], [0, 7]], dtype=np.int64)
    assert take_rows(table, wide, np.empty((2, 2), np.float32)).tolist() == [[3, 255], [0, 7]]
    small = np.arange(16, dtype=np.float32)
    assert take_rows(small, np.array([15, 2], np.uint8), np.empty(2, np.float32)).tolist() == [15, 2]
    out = np.zeros((2, 4), np.float32)
    take_rows(table, np.array([[1, 2], [3, 4]], np.uint8), out[:, ::2])
    assert out.tolist() == [[1, 0, 2, 0], [3, 0, 4, 0]]
    assert take_rows(table, np.zeros((0, 3), np.int64), np.empty((0, 3), np.float32)).shape == (0, 3)


def test_the_c_lookup_refuses_tables_and_outputs_of_the_wrong_size():
    loops = built_or_skip()
    indices = np.zeros(4, np.uint8)
    with pytest.raises(ValueError, match="table"):
        loops.lookup(np.zeros(255, np.float32), indices, np.empty(4, np.float32))
    with pytest.raises(ValueError, match="256 entries"):
        loops.lookup(np.zeros(256, np.float16), indices, np.empty(4, np.float16))
    with pytest.raises(ValueError, match="out"):
        loops.lookup(np.zeros(256, np.float32), indices, np.empty(3, np.float32))


def test_float16_widened_by_its_table_is_numpy_s_cast_for_every_pattern():
    """The fp16 method's widening (a 65536-entry table by 16-bit patterns, np.take): every
    pattern, NaN payloads and signed zeros included, the same float32 bits as numpy's cast."""
    from kformat.methods.fp16 import _widened

    patterns = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    got = take_rows(_widened(), patterns, np.empty(patterns.shape, np.float32))
    want = patterns.view(np.float16).astype(np.float32)
    assert got.view(np.uint32).tolist() == want.view(np.uint32).tolist()
