"""Re-laying out a container: the same blobs, verbatim, as a single file or as CDN shards."""

import numpy as np
import pytest

import kformat
from kformat.cli import main
from kformat.errors import InputError, IntegrityError


def test_single_to_sharded_and_back_is_byte_identical(tmp_path, model):
    single = tmp_path / "m.kf"
    kformat.pack(model, single, "mobile", rules=["fc1.weight=kmeans:4,tile=64x128"])
    kformat.pack(str(single), tmp_path / "shards", layout="sharded", shard_size=30000)
    kformat.pack(str(tmp_path / "shards"), tmp_path / "again.kf")
    assert (tmp_path / "again.kf").read_bytes() == single.read_bytes()
    assert len(list((tmp_path / "shards" / "shards").iterdir())) > 1
    for name, array in kformat.load_all(str(single)).items():
        assert np.array_equal(kformat.load_all(str(tmp_path / "shards"))[name], array)


def test_publish_a_kf_file_from_the_cli(tmp_path, model, capsys):
    kformat.pack(model, tmp_path / "m.kf", "kmeans4")
    assert (
        main(["publish", str(tmp_path / "m.kf"), str(tmp_path / "site" / "m"), "--shard-size", "40kB"]) == 0
    )
    assert "packed 7 tensors" in capsys.readouterr().out
    assert kformat.verify(str(tmp_path / "site" / "m")) == []
    with kformat.open(str(tmp_path / "site" / "m")) as lazy:
        assert lazy.manifest.recipe["name"] == kformat.load_recipe("kmeans4").name


def test_a_container_is_never_requantized(tmp_path, model):
    kformat.pack(model, tmp_path / "m.kf", "kmeans4")
    with pytest.raises(InputError, match="never re-quantized"):
        kformat.pack(str(tmp_path / "m.kf"), tmp_path / "x.kf", "kmeans2")
    assert main(["pack", str(tmp_path / "m.kf"), "-o", str(tmp_path / "x.kf"), "-r", "kmeans2"]) == 2
    assert not (tmp_path / "x.kf").exists()


def test_a_corrupted_blob_stops_the_copy_and_leaves_nothing(tmp_path, model):
    kformat.pack(model, tmp_path / "m.kf", "kmeans4")
    with kformat.open(str(tmp_path / "m.kf")) as lazy:
        blob = lazy["fc1.weight"].entry.tiles[0].blob
        start = lazy.container.data_offset + blob.offset
    data = bytearray((tmp_path / "m.kf").read_bytes())
    data[start + 3] ^= 1
    (tmp_path / "m.kf").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="fc1.weight' tile 0"):
        kformat.pack(str(tmp_path / "m.kf"), tmp_path / "out", layout="sharded")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m.kf"]
