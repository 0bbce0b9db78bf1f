"""A worker process's blobs handed back through a file (kformat.packing.spill)."""

import builtins
import os
import sys

import numpy as np
import pytest

import kformat
from kformat.errors import StorageError
from kformat.packing import forked, spill
from kformat.packing.atomic import TEMP_MARK, temp_prefix
from kformat.packing.encoded import Encoded
from kformat.recipe import parse_rule


def encoded(blobs: list[bytes]) -> Encoded:
    return Encoded(
        name="w", dtype="float32", shape=[2, 2], view=(2, 2), rule=parse_rule("kmeans:4"), reason="",
        group_rows=2, storage="uint8", depth=4, codec="png", tile=(2, 2), rects=[(0, 0, 2, 2)] * len(blobs),
        blobs=blobs, digests=[""] * len(blobs), tables={}, stats={},
    )  # fmt: skip


def test_blobs_written_by_the_child_come_back_as_the_same_bytes_and_the_file_goes(tmp_path):
    blobs = [os.urandom(5000), b"", os.urandom(70_000), b"x"]
    sent, lengths = spill.spilled(encoded(blobs), str(tmp_path / "1.blobs"))
    assert sent.blobs == [] and lengths == [5000, 0, 70_000, 1]  # nothing but lengths in the pipe
    back = spill.restored(sent, lengths, str(tmp_path / "1.blobs"))
    assert [bytes(b) for b in back.blobs] == blobs and back.name == "w"
    assert list(tmp_path.iterdir()) == []  # unlinked once mapped
    empty, lengths = spill.spilled(encoded([b"", b""]), str(tmp_path / "2.blobs"))
    assert [bytes(b) for b in spill.restored(empty, lengths, str(tmp_path / "2.blobs")).blobs] == [b"", b""]


def test_without_a_file_the_blobs_go_through_the_pipe_and_a_damaged_file_is_a_storage_error(tmp_path):
    blobs = [os.urandom(100)]
    for path in (None, str(tmp_path / "missing-dir" / "1.blobs")):  # no spill; a file not writable
        whole, lengths = spill.spilled(encoded(blobs), path)
        assert lengths is None and whole.blobs == blobs
        assert spill.restored(whole, lengths, path).blobs == blobs
    full = tmp_path / "full.blobs"

    class Full:  # a disk that fills midway: the part written goes at once, the blobs take the pipe
        def __init__(self, path, mode, buffering):
            self.out = builtins.open(path, mode, buffering=buffering)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.out.close()

        def write(self, view):
            self.out.write(view[:10])
            raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(spill, "open", Full, raising=False)
        whole, lengths = spill.spilled(encoded(blobs), str(full))
    assert lengths is None and whole.blobs == blobs and not full.exists()
    sent, lengths = spill.spilled(encoded(blobs), str(tmp_path / "3.blobs"))
    (tmp_path / "3.blobs").write_bytes(b"short")
    with pytest.raises(StorageError, match=r"3.blobs: tensor 'w': .*5 bytes, expected 100"):
        spill.restored(sent, lengths, str(tmp_path / "3.blobs"))
    assert not (tmp_path / "3.blobs").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="worker processes are forked on Linux")
def test_a_forked_pack_leaves_no_spill_directory_and_one_without_a_temporary_directory_still_packs(
    tmp_path, monkeypatch
):
    rng = np.random.default_rng(3)
    weights = {
        f"layer{i}.weight": (rng.standard_normal((600, 512)) * 0.02).astype(np.float32) for i in range(4)
    }
    monkeypatch.setenv("KFORMAT_NUMBA", "0")
    created, real = [], spill.tempfile.mkdtemp

    def recording(*args, **kwargs):
        created.append(real(*args, **{**kwargs, "dir": str(tmp_path)}))
        return created[-1]

    monkeypatch.setattr(spill.tempfile, "mkdtemp", recording)
    kformat.pack(weights, tmp_path / "one.kf", "kmeans4", jobs=1)
    kformat.pack(weights, tmp_path / "two.kf", "kmeans4", jobs=2)
    assert len(created) == 1 and not os.path.exists(created[0])  # made, and gone with the pack
    made = []

    def refuse(*args, **kwargs):
        made.append(1)
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(spill.tempfile, "mkdtemp", refuse)
    kformat.pack(weights, tmp_path / "pipe.kf", "kmeans4", jobs=2)
    assert made and forked.FORK_BYTES < 600 * 512 * 4  # (the processes were asked for)
    one = (tmp_path / "one.kf").read_bytes()
    assert (tmp_path / "two.kf").read_bytes() == one and (tmp_path / "pipe.kf").read_bytes() == one


def test_a_directory_left_by_a_killed_pack_is_removed_by_the_next_one(tmp_path, monkeypatch):
    monkeypatch.setattr(spill.tempfile, "tempdir", str(tmp_path))
    mine = temp_prefix(tmp_path / spill.SPILL)  # this process's
    gone = tmp_path / (mine.replace(f"-{os.getpid()}-", "-999999999-") + "abc")  # no such process
    alive = tmp_path / f"{mine}abc"  # this one
    other = tmp_path / f".{spill.SPILL}{TEMP_MARK}notapid"
    for d in (gone, alive, other):
        d.mkdir()
        (d / "1.blobs").write_bytes(b"x")
    made = spill.Spill.made()
    assert made is not None and os.path.basename(made.dir).startswith(mine)
    assert not gone.exists() and alive.exists() and other.exists()
    made.close()
    assert not os.path.exists(made.dir)
