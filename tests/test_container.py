import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

import kformat
from kformat.errors import (
    FormatError,
    IntegrityError,
    NotFound,
    QuantizationError,
    StorageError,
    VersionError,
)
from kformat.format.header import encode_header
from kformat.packing.encode import encode_tensor
from kformat.loading.container import Container
from kformat.recipe import parse_rule, recipe_from_dict

RULES = [f"kmeans:{b}" for b in range(1, 9)] + [
    "kmeans:4,group=64",
    "kmeans:3,row",
    "kmeans:4,codebook=fp32",
    "kmeans:4,codec=zstd",
    "kmeans:5,codec=raw",
    "kmeans:4,prune=0.5",
    "linear:8",
    "linear:8,row",
    "linear:4,group=50",
    "linear:2,codec=zstd",
    "linear:6,prune_threshold=0.01",
    "fp16",
    "fp16,codec=zstd",
    "raw",
    "raw,codec=zstd",
]


def recipe(rule: str, tile=(64, 128)):
    return recipe_from_dict({"default": rule, "tile": list(tile), "min_elements": 1})


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_round_trip_matches_the_quantizer_exactly(tmp_path, model, rule, layout):
    out = tmp_path / ("m.kf" if layout == "single" else "m")
    kformat.pack(model, out, recipe(rule), layout=layout, shard_size=20000)
    with Container.open(str(out)) as c:
        assert list(c.tensors) == list(model)
        for name, array in model.items():
            got = c.read_tensor(name)
            entry = c.tensors[name]
            assert got.shape == array.shape
            if entry.quant.method == "raw":
                assert got.dtype == array.dtype and got.tobytes() == array.tobytes()
            else:
                expected = encode_tensor(name, array, parse_rule(entry.rule)).rows(0, entry.view[0])
                assert got.dtype == np.float32
                assert np.array_equal(got.reshape(entry.view), expected)
        assert c.verify() == []


@pytest.mark.parametrize(
    "dtype",
    [
        "float16",
        "float32",
        "float64",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "bool",
    ],
)
def test_raw_tensors_come_back_bit_exact(tmp_path, dtype):
    rng = np.random.default_rng(0)
    arrays = {
        "scalar": np.array(rng.standard_normal() * 100).astype(dtype),
        "vector": (rng.standard_normal(17) * 100).astype(dtype),
        "cube": (rng.standard_normal((3, 4, 5)) * 100).astype(dtype),
        "empty": np.zeros((0, 3), dtype=dtype),
    }
    kformat.pack(arrays, tmp_path / "r.kf", "raw")
    back = kformat.load_all(str(tmp_path / "r.kf"))
    for name, array in arrays.items():
        assert back[name].dtype == array.dtype and back[name].shape == array.shape
        assert back[name].tobytes() == array.tobytes()


def test_output_is_deterministic(tmp_path, model):
    kformat.pack(model, tmp_path / "a.kf", "mobile")
    kformat.pack(model, tmp_path / "b.kf", "mobile")
    assert (tmp_path / "a.kf").read_bytes() == (tmp_path / "b.kf").read_bytes()
    kformat.pack(model, tmp_path / "a", "mobile", layout="sharded", shard_size=4096)
    kformat.pack(model, tmp_path / "b", "mobile", layout="sharded", shard_size=4096)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_shards_are_content_addressed_and_bounded(tmp_path, model):
    out = tmp_path / "cdn"
    kformat.pack(model, out, "fp16", layout="sharded", shard_size=4096)
    shards = list((out / "shards").iterdir())
    assert len(shards) > 3
    for shard in shards:
        data = shard.read_bytes()
        assert shard.name == hashlib.sha256(data).hexdigest() + ".kfs"
    big_blob = max(t.blob.length for e in Container.open(str(out)).manifest.tensors for t in e.tiles)
    assert max(s.stat().st_size for s in shards) <= max(4096, big_blob)
    assert oct((out / "manifest.kf").stat().st_mode & 0o777) != "0o600"


def test_failed_pack_leaves_nothing_behind(tmp_path, model):
    model = dict(model)
    model["zz.weight"] = np.full((64, 64), np.nan, np.float32)
    for layout, out in (("single", tmp_path / "x.kf"), ("sharded", tmp_path / "x")):
        with pytest.raises(QuantizationError, match="zz.weight"):
            kformat.pack(model, out, "kmeans4", layout=layout, shard_size=4096)
        assert not out.exists()
    assert os.listdir(tmp_path) == []


def test_failed_pack_keeps_the_previous_output(tmp_path, model):
    out = tmp_path / "m.kf"
    kformat.pack(model, out, "fp16")
    before = out.read_bytes()
    bad = dict(model, extra=np.full((40, 40), np.inf, np.float32))
    with pytest.raises(QuantizationError):
        kformat.pack(bad, out, "fp16")
    assert out.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.kf"]


def test_pack_refuses_to_overwrite_its_input(tmp_path, model):
    src = tmp_path / "m.npz"
    np.savez(src, **model)
    before = src.read_bytes()
    with pytest.raises(StorageError, match="is the input"):
        kformat.pack(str(src), src, "fp16")
    assert src.read_bytes() == before


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_verify_names_every_corrupted_blob(tmp_path, model):
    out = tmp_path / "m.kf"
    kformat.pack(model, out, "mobile", rules=["fc1.weight=kmeans:4,tile=128x256"])
    c = Container.open(str(out))
    labelled = [(ref, label) for ref, label in c.blob_labels if ref.length]
    original = out.read_bytes()
    for ref, label in labelled:
        out.write_bytes(original)
        _flip(out, c.data_offset + ref.offset + ref.length // 2)
        problems = kformat.verify(str(out))
        assert [p.label for p in problems] == [label]
        assert "hash mismatch" in problems[0].message
    out.write_bytes(original)
    assert kformat.verify(str(out)) == []


def test_reading_a_corrupted_tile_fails_loudly(tmp_path, model):
    out = tmp_path / "m.kf"
    kformat.pack(model, out, "mobile")
    c = Container.open(str(out))
    tile = c.tensors["fc1.weight"].tiles[0]
    _flip(out, c.data_offset + tile.blob.offset + 3)
    with pytest.raises(IntegrityError, match=r"tensor 'fc1.weight' tile 0 .*hash mismatch"):
        Container.open(str(out)).read_tensor("fc1.weight")


def test_bad_files_give_clear_errors(tmp_path, model):
    out = tmp_path / "m.kf"
    kformat.pack(model, out, "mobile")
    data = out.read_bytes()
    bad = tmp_path / "bad.kf"
    bad.write_bytes(b"PK\x03\x04" + data[4:])
    with pytest.raises(FormatError, match="bad magic"):
        Container.open(str(bad))
    bad.write_bytes(data[:40])
    with pytest.raises(FormatError, match="truncated"):
        Container.open(str(bad))
    bad.write_bytes(data[:300])
    with pytest.raises(FormatError, match="truncated"):
        Container.open(str(bad))
    newer = bytearray(data)
    newer[8:10] = (2).to_bytes(2, "little")
    bad.write_bytes(bytes(newer))
    with pytest.raises(VersionError, match="version 2.0 is newer"):
        Container.open(str(bad))
    # A truncated blob region is found by verify and by reads.
    bad.write_bytes(data[: len(data) - 100])
    assert any("truncated" in p.message or "shorter" in p.message for p in kformat.verify(str(bad)))
    with pytest.raises(NotFound):
        Container.open(str(tmp_path / "nope.kf"))


def test_must_understand_extensions_are_refused(tmp_path, model):
    import msgpack

    out = tmp_path / "m.kf"
    kformat.pack(model, out, "fp16")
    c = Container.open(str(out))
    doc = c.manifest.model_dump(mode="python")
    doc["must_understand"] = ["sparse-tiles"]
    doc["future_optional_field"] = {"ignored": True}
    body = msgpack.packb(doc, use_bin_type=True)
    bad = tmp_path / "ext.kf"
    bad.write_bytes(encode_header(body, 0) + body)
    with pytest.raises(VersionError, match="sparse-tiles"):
        Container.open(str(bad))
    doc["must_understand"] = []
    body = msgpack.packb(doc, use_bin_type=True)
    pad = (-(64 + len(body))) % 64
    payload = out.read_bytes()[c.data_offset :]
    ok = tmp_path / "ok.kf"
    ok.write_bytes(encode_header(body, 64 + len(body) + pad) + body + b"\0" * pad + payload)
    assert np.array_equal(Container.open(str(ok)).read_tensor("fc1.weight"), c.read_tensor("fc1.weight"))


def test_missing_shard_is_named(tmp_path, model):
    out = tmp_path / "cdn"
    kformat.pack(model, out, "fp16", layout="sharded", shard_size=8192)
    c = Container.open(str(out))
    victim = c.manifest.shards[1].name
    (out / "shards" / victim).unlink()
    problems = kformat.verify(str(out))
    assert any(victim in p.label or victim in p.message for p in problems)
    with pytest.raises(NotFound, match=victim[:16]):
        kformat.load_all(str(out))


def test_memory_filesystem_reads_like_local(tmp_path, model):
    import fsspec

    out = tmp_path / "m.kf"
    kformat.pack(model, out, "mobile")
    fs = fsspec.filesystem("memory")
    fs.pipe("/models/m.kf", out.read_bytes())
    local = kformat.load_all(str(out))
    remote = kformat.load_all("memory://models/m.kf")
    for name in local:
        assert np.array_equal(local[name], remote[name])


def test_open_reads_only_the_header_and_manifest(tmp_path, model):
    out = tmp_path / "m.kf"
    kformat.pack(model, out, "mobile")
    c = Container.open(str(out))
    assert c.store.requests <= 2
    assert c.store.bytes_read <= max(64 << 10, c.data_offset)
