"""Hostile inputs beyond the conformance suite: files crafted at test time against shapes,
allocation, padding and trailing bytes, and the reader's own limits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kformat
from kformat.cli import main
from kformat.errors import LimitError
from kformat.loading.container import Container


@pytest.fixture
def packed(model, tmp_path) -> Path:
    out = tmp_path / "m.kf"
    kformat.pack(model, out, "kmeans4")
    return out


@pytest.fixture
def sharded(model, tmp_path) -> Path:
    out = tmp_path / "site"
    kformat.pack(model, out, "kmeans4", layout="sharded", shard_size=40_000)
    return out


def _gaps(container: Container, shard: int = 0) -> list[tuple[int, int]]:
    """(start, end) of the padding between blobs, relative to the data region or shard."""
    spans = sorted((r.offset, r.offset + r.length) for r, _ in container.blob_labels if r.shard == shard)
    return [(e0, s1) for (_, e0), (s1, _) in zip(spans, spans[1:]) if s1 > e0]


def _poke(path: Path, offset: int, value: int = 0x5A) -> None:
    data = bytearray(path.read_bytes())
    data[offset] = value
    path.write_bytes(bytes(data))


def _messages(path) -> list[str]:
    return [f"{p.label}: {p.message}" for p in kformat.verify(str(path))]


def test_verify_refuses_non_zero_padding_before_the_data_region(packed):
    with Container.open(str(packed)) as c:
        start, end = c.manifest_end, c.data_offset
    assert end > start, "the writer aligns the data region, so there is padding to forge"
    _poke(packed, start)
    assert any("padding must be zero" in m for m in _messages(packed))
    assert main(["verify", str(packed)]) == 1


def test_verify_refuses_non_zero_padding_between_blobs(packed):
    with Container.open(str(packed)) as c:
        gap = _gaps(c)[0]
        base = c.data_offset
    _poke(packed, base + gap[0])
    messages = _messages(packed)
    assert any("padding must be zero" in m and f"byte {base + gap[0]}" in m for m in messages), messages
    assert kformat.load_all(str(packed))  # the blobs themselves are intact


def test_verify_refuses_bytes_after_the_last_blob(packed):
    with packed.open("ab") as f:
        f.write(b"\0" * 10)
    assert any("10 bytes after the last blob" in m for m in _messages(packed))


def test_verify_refuses_a_shard_altered_in_its_padding_or_grown(sharded):
    with Container.open(str(sharded)) as c:
        name = c.manifest.shards[0].name
        gap = _gaps(c, 0)[0]
    shard = sharded / "shards" / name
    _poke(shard, gap[0])
    messages = _messages(sharded)
    assert any("padding must be zero" in m for m in messages)
    assert any("not its name: the shard was altered" in m for m in messages)
    _poke(shard, gap[0], 0)
    assert _messages(sharded) == []
    with shard.open("ab") as f:
        f.write(b"\0")
    assert any("1 bytes after its manifest length" in m for m in _messages(sharded))


def test_max_tensor_bytes_bounds_what_a_reader_materialises(packed):
    with kformat.open(str(packed), max_tensor_bytes=20_000) as model:
        assert model["fc2.weight"].numpy().nbytes == 12_000
        with pytest.raises(
            LimitError, match=r"'fc1.weight' needs 624000 bytes, more than max_tensor_bytes 20000"
        ):
            model["fc1.weight"].numpy()
        with pytest.raises(LimitError, match="max_tensor_bytes"):
            model["fc1.weight"].quantized()
        x = np.ones(520, np.float32)
        assert model["fc1.weight"].matmul(x).shape == (300,)  # streaming allocates a tile, not the tensor


def test_a_failed_allocation_is_a_limit_error_naming_the_tensor(packed, monkeypatch):
    import kformat.loading.container as container_module

    def no_memory(*args, **kwargs):
        raise MemoryError

    with kformat.open(str(packed)) as model:
        monkeypatch.setattr(container_module.np, "empty", no_memory)
        with pytest.raises(LimitError, match=r"'fc1.weight': cannot allocate 624000 bytes"):
            model["fc1.weight"].numpy()


def test_a_huge_constant_tensor_is_written_so_that_readers_accept_it(tmp_path):
    """4500 x 4500 zeros (81 MB of float32) compress past the 4096:1 amplification limit as
    zstd planes; the writer stores such planes raw, and the file reads back."""
    zeros = {"w": np.zeros((4500, 4500), np.float32)}
    for rule in ("kmeans:1,codec=zstd", "fp16,codec=zstd"):
        out = tmp_path / "z.kf"
        entry = kformat.pack(zeros, out, "fp16", rules=[f"w={rule}"]).manifest.tensors[0]
        assert entry.codec == "raw" and "4096:1" in entry.reason
        assert not kformat.load_all(str(out))["w"].any()
