"""Local paths are read without fsspec, and ranges are merged into fewer reads."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from hypothesis import given, strategies as st

import kformat
from kformat.loading.local import local_path
from kformat.loading.ranges import merge_ranges


def test_local_paths_are_recognised(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert local_path("model.kf") == str(tmp_path / "model.kf")
    assert local_path(f"file://{tmp_path}/m/") == str(tmp_path / "m")
    assert local_path("~/m.kf") == os.path.expanduser("~/m.kf")
    for other in ("s3://bucket/m.kf", "https://cdn/m.kf", "simplecache::https://cdn/m.kf", "memory://m"):
        assert local_path(other) is None


def test_a_local_load_does_not_import_fsspec(tmp_path):
    """fsspec (11 MiB and tens of milliseconds to import) is for other URLs only."""
    kformat.pack({"w": np.ones((8, 8), np.float32)}, tmp_path / "m.kf", "fp16")
    code = (
        "import sys, kformat; kformat.load_all(sys.argv[1]); kformat.verify(sys.argv[1]);"
        "print('fsspec' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.kf")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


ranges = st.lists(
    st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 10_000), st.integers(0, 3000)), max_size=40
)


@given(ranges, st.integers(0, 2000), st.integers(1, 8000))
def test_merged_blocks_cover_every_range_and_keep_their_limits(items, gap, cap):
    paths = [p for p, _, _ in items]
    starts = [s for _, s, _ in items]
    ends = [s + n for _, s, n in items]
    blocks = list(zip(*merge_ranges(paths, starts, ends, gap, cap)))
    for path, start, end in zip(paths, starts, ends):  # each range inside one block
        assert any(p == path and s <= start and end <= e for p, s, e in blocks)
    assert blocks == sorted(blocks)
    for (p1, s1, e1), (p2, s2, e2) in zip(blocks, blocks[1:]):
        if p1 == p2:  # apart by more than the gap, or merging would pass the cap
            assert s2 - e1 > gap or max(e1, e2) - s1 > cap
    for p, s, e in blocks:  # over the cap only when one range alone is
        if e - s > cap:
            assert any(p == path and start == s and end == e for path, start, end in zip(paths, starts, ends))


def test_a_local_store_reads_large_blobs_alone_and_small_ones_together(tmp_path, monkeypatch):
    """Cutting a merged read into its blobs copies them again: a local store merges only
    what stays within LOCAL_MERGE_MAX, and every range comes back exact either way."""
    from kformat.loading import store as store_module
    from kformat.loading.store import ByteRange, Store

    data = np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()
    (tmp_path / "blob").write_bytes(data)
    store = Store.from_url(str(tmp_path))
    reads = []
    real = store.local.read
    monkeypatch.setattr(store.local, "read", lambda *a: reads.append(a[1:3]) or real(*a))
    small = [(i * 1000, i * 1000 + 900) for i in range(20)]  # 20 small ranges: one read
    large = [(1 << 20, (1 << 20) + 600_000), ((1 << 20) + 600_100, (2 << 20) + 300_000)]  # 2 more
    ranges = [ByteRange("blob", s, e) for s, e in small + large]
    got = store.read_many(ranges)
    assert got == [data[s:e] for s, e in small + large]
    assert reads == [(small[0][0], small[-1][1]), *large]  # the small ones in one, each large alone
    # (the small ones' span fits the cap, the large pair's does not)
    assert small[-1][1] - small[0][0] <= store_module.LOCAL_MERGE_MAX < large[1][1] - large[0][0]
