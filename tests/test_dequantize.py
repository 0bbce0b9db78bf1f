"""The fast load path (whole packed bytes through a per-group table) gives bit for bit what
dequantizing code by code gives, for every depth, group size and output layout."""

from __future__ import annotations

import numpy as np
import pytest

from kformat.codecs.bitpack import pack_rows
from kformat.methods import get_method
from kformat.methods.base import byte_table


def _tables(method: str, groups: int, depth: int, rng) -> dict:
    if method == "kmeans":
        return {
            "codebook": rng.standard_normal((groups, 1 << depth)).astype(rng.choice([np.float16, np.float32]))
        }
    return {
        "scale": (rng.random(groups) * 10).astype(np.float32),
        "zero_point": rng.integers(0, 1 << depth, groups).astype(np.uint8),
    }


@pytest.mark.parametrize("method", ["kmeans", "linear"])
@pytest.mark.parametrize("depth", [1, 2, 4, 8])
@pytest.mark.parametrize(
    "group_rows, rows, cols", [(300, 37, 53), (16, 40, 64), (1, 5, 9), (32, 100, 8), (7, 30, 24)]
)
def test_packed_lookup_matches_code_by_code(method, depth, group_rows, rows, cols):
    rng = np.random.default_rng(depth * 1000 + rows)
    m = get_method(method)
    tables = _tables(method, -(-400 // group_rows), depth, rng)
    codes = rng.integers(0, 1 << depth, (rows, cols), dtype=np.uint8)
    want = m.dequantize(codes, 17, group_rows, tables)
    packed = pack_rows(codes, depth)
    assert m.dequantize_packed(packed, depth, cols, 17, group_rows, tables).tobytes() == want.tobytes()
    wide = np.full((rows, cols + 10), np.nan, np.float32)  # a tile inside a wider tensor
    m.dequantize_packed(packed, depth, cols, 17, group_rows, tables, out=wide[:, 5 : 5 + cols])
    assert np.ascontiguousarray(wide[:, 5 : 5 + cols]).tobytes() == want.tobytes()
    assert np.isnan(wide[:, :5]).all() and np.isnan(wide[:, 5 + cols :]).all()


@pytest.mark.parametrize("shape", [(1000,), (37, 53), (3, 70000), (70000, 1)])
def test_take_rows_is_np_take(shape):
    from kformat.methods.base import take_rows

    rng = np.random.default_rng(len(shape))
    table = rng.standard_normal(256).astype(np.float32)
    indices = rng.integers(0, 256, shape, dtype=np.uint8)
    out = np.empty(shape, np.float32)
    np.testing.assert_array_equal(take_rows(table, indices, out), np.take(table, indices))


@pytest.mark.parametrize("method, depth", [("kmeans", 4), ("kmeans", 8), ("fp16", None)])
def test_a_tile_dequantizes_without_a_tile_sized_temporary(method, depth):
    """np.take copies its indices as intp: taken whole, a 256 x 4096 tile's were 4-8 MiB
    per decode thread on top of the output; in runs of rows, 1 MiB."""
    import tracemalloc

    rng = np.random.default_rng(1)
    out = np.empty((256, 4096), np.float32)
    if method == "fp16":
        plane = rng.standard_normal((256, 4096)).astype(np.float16)
        run = lambda: get_method("fp16").dequantize(plane, 0, 256, {}, out=out)  # noqa: E731
    else:
        packed = pack_rows(rng.integers(0, 1 << depth, (256, 4096), dtype=np.uint8), depth)
        tables = {"codebook": rng.standard_normal((1, 1 << depth)).astype(np.float16)}
        run = lambda: get_method(method).dequantize_packed(packed, depth, 4096, 0, 256, tables, out=out)  # noqa: E731
    run()  # tables and caches made once
    tracemalloc.start()
    try:
        run()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 << 19  # the runs' intp indices: 1 MiB


@pytest.mark.parametrize("depth", [1, 2, 4, 8])
def test_byte_tables_of_stacked_groups_are_each_groups_table(depth):
    """byte_table of a stack of groups' code values (what a tile spanning several row groups
    makes in one go) gives, for every group, the values of each packed byte's codes."""
    rng = np.random.default_rng(depth)
    values = rng.standard_normal((5, 1 << depth)).astype(np.float32)
    stacked = byte_table(values, depth)
    assert stacked.shape == (5, 256)
    per_byte = 8 // depth
    for g in range(5):
        one = byte_table(values[g], depth)
        assert one.tobytes() == stacked[g].tobytes()
        decoded = np.frombuffer(one.tobytes(), np.float32).reshape(256, per_byte)
        for byte in (0, 1, 0x5A, 255):
            codes = [(byte >> (8 - depth * (i + 1))) & ((1 << depth) - 1) for i in range(per_byte)]
            assert decoded[byte].tolist() == values[g, codes].tolist()
