"""The single-file sink's two commits: blobs written in place behind a reserved room (large
files), or the minimal layout copied into a second file (small files, a room too small).
Both give a file every reader takes, with the same tensors."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

import kformat
from kformat.format.constants import HEADER_SIZE
from kformat.packing import sinks
from kformat.packing.sinks import SingleFileSink
from kformat.loading.container import Container


def header_fields(path: Path) -> tuple[int, int]:
    """(M, D) from a single file's header."""
    return struct.unpack_from("<QQ", path.read_bytes()[:HEADER_SIZE], 16)


def minimal_offset(manifest_length: int) -> int:
    return -(-(HEADER_SIZE + manifest_length) // 64) * 64


@pytest.fixture(scope="module")
def large() -> dict[str, np.ndarray]:
    """8 MiB of float32 stored raw: blobs enough that a reserved room costs under 1/1024."""
    rng = np.random.default_rng(5)
    return {"big.weight": rng.standard_normal((2048, 1024)).astype(np.float32), "small.bias": np.ones(9)}


def test_a_large_file_is_written_in_place_behind_a_reserved_room(large, tmp_path, monkeypatch):
    copies = []
    monkeypatch.setattr(sinks, "_copy_rest", lambda *a: copies.append(a))
    report = kformat.pack(large, tmp_path / "m.kf", "raw")
    assert copies == []  # the blobs were never copied
    length, offset = header_fields(tmp_path / "m.kf")
    assert offset % 4096 == 0 and offset > minimal_offset(length)
    assert (offset - minimal_offset(length)) * sinks.WASTE_DIVISOR <= report.bytes - offset
    assert report.bytes == (tmp_path / "m.kf").stat().st_size
    assert kformat.verify(str(tmp_path / "m.kf")) == []  # including the zeros of the gap
    for name, array in kformat.load_all(str(tmp_path / "m.kf")).items():
        np.testing.assert_array_equal(array, large[name])
    assert [p.name for p in tmp_path.iterdir()] == ["m.kf"]


def test_a_small_file_gets_the_minimal_layout(tmp_path):
    weights = {"w": np.linspace(-1, 1, 600, dtype=np.float32).reshape(20, 30)}
    kformat.pack(weights, tmp_path / "m.kf", "kmeans4")
    length, offset = header_fields(tmp_path / "m.kf")
    assert offset == minimal_offset(length)  # a reserved room would cost more than 1/1024
    assert [p.name for p in tmp_path.iterdir()] == ["m.kf"]


def test_a_manifest_larger_than_its_room_is_copied_behind_it(large, tmp_path):
    """The same blobs and manifest through a room too small: the minimal layout, same tensors."""
    kformat.pack(large, tmp_path / "in_place.kf", "raw")
    with Container.open(str(tmp_path / "in_place.kf")) as container:
        manifest, start = container.manifest, container.data_offset
    data = (tmp_path / "in_place.kf").read_bytes()
    sink = SingleFileSink(tmp_path / "copied.kf", reserve=4096)
    for entry in manifest.tensors:
        for tile in entry.tiles:
            ref = tile.blob
            assert sink.add(data[start + ref.offset : start + ref.offset + ref.length]).offset == ref.offset
    big_metadata = {"note": "x" * 8192}  # the manifest no longer fits the room
    sink.commit(manifest.model_copy(update={"metadata": big_metadata}))
    length, offset = header_fields(tmp_path / "copied.kf")
    assert offset == minimal_offset(length)
    assert kformat.verify(str(tmp_path / "copied.kf")) == []
    copied = kformat.load_all(str(tmp_path / "copied.kf"))
    np.testing.assert_array_equal(copied["big.weight"], large["big.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copied.kf", "in_place.kf"]


def test_blobs_synced_in_the_background_give_the_same_file(large, tmp_path, monkeypatch):
    kformat.pack(large, tmp_path / "once.kf", "raw")
    synced = []
    real = sinks._sync_quietly
    monkeypatch.setattr(sinks, "SYNC_STEP", 1 << 16)
    monkeypatch.setattr(sinks, "_sync_quietly", lambda fd: synced.append(fd) or real(fd))
    kformat.pack(large, tmp_path / "often.kf", "raw")
    assert synced  # a sync ran while blobs were still coming
    assert (tmp_path / "once.kf").read_bytes() == (tmp_path / "often.kf").read_bytes()


def test_a_failed_pack_in_place_leaves_nothing(large, tmp_path, monkeypatch):
    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sinks.os, "fsync", fail)
    with pytest.raises(kformat.KFormatError, match="No space left"):
        kformat.pack(large, tmp_path / "m.kf", "raw")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("layout", ["single", "sharded", "sharded again"])
def test_an_interrupt_after_the_commit_leaves_the_output_whole(large, tmp_path, monkeypatch, layout):
    """The commit comes before the encoder closes (its worker processes exit meanwhile): a ^C
    while it closes reaches the caller, and the committed output stays, every tensor in it
    (abort after a commit drops nothing; a sharded directory's shards are the output's)."""
    from kformat.packing.local import LocalEncoder

    out = tmp_path / ("m.kf" if layout == "single" else "shards")
    sharded = {} if layout == "single" else {"layout": "sharded", "shard_size": 1 << 20}
    if layout == "sharded again":  # into an existing directory: shards added to it, not a fresh one
        kformat.pack(large, out, "q8", **sharded)
    real = LocalEncoder.__exit__

    def interrupted(self, *exc):
        real(self, *exc)
        raise KeyboardInterrupt

    monkeypatch.setattr(LocalEncoder, "__exit__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        kformat.pack(large, out, "q4", **sharded)
    monkeypatch.undo()
    loaded = kformat.load_all(str(out))
    assert sorted(loaded) == sorted(large)
    kformat.pack(large, tmp_path / "again.kf", "q4")
    expected = kformat.load_all(str(tmp_path / "again.kf"))
    assert all(np.array_equal(loaded[name], expected[name]) for name in large)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left
