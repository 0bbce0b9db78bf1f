"""The long pole's blobs written while it encodes (kformat.packing.streamed)."""

import threading
from concurrent.futures import Future

import numpy as np

import kformat
from kformat.format.limits import AMPLIFICATION_SLACK, MAX_AMPLIFICATION
from kformat.packing.encoded import stored_raw
from kformat.packing.streamed import BlobStream


def test_blobs_are_written_in_tile_order_as_they_come_and_the_rest_after_the_tensor():
    stream, future, added = BlobStream(), Future(), []
    stream.begin(lambda made: not stored_raw(1000, made, exact=True))

    def tiles():
        for index in (1, 0, 3):  # made out of order; 2 comes after the tensor is done
            stream.put(index, bytes([index]) * 3, f"d{index}")
        future.set_result("encoded")

    threading.Timer(0.05, tiles).start()
    written = stream.write_while_encoding(lambda blob, digest: added.append((blob, digest)) or digest, future)
    assert written == ["d0", "d1"] and added == [(b"\0" * 3, "d0"), (b"\1" * 3, "d1")]  # 2 is missing


def test_nothing_is_written_while_the_planes_could_still_be_stored_raw():
    """Blobs below (input - slack) / MAX_AMPLIFICATION bytes could still be replaced (a huge
    constant tensor): they wait for the tensor, and are then written whole by emit."""
    stream, future, added = BlobStream(), Future(), []
    input_bytes = AMPLIFICATION_SLACK + 100 * MAX_AMPLIFICATION  # 100 bytes of blobs needed
    stream.begin(lambda made: not stored_raw(input_bytes, made, exact=False))
    stream.put(0, b"x" * 99, "d0")
    future.set_result("encoded")
    assert stream.write_while_encoding(lambda blob, digest: added.append(blob), future) == []
    stream, future = BlobStream(), Future()
    stream.begin(lambda made: not stored_raw(input_bytes, made, exact=False))
    stream.put(1, b"y" * 60, "d1")
    stream.put(0, b"x" * 60, "d0")  # 120 bytes: past the limit, both go
    future.set_result("encoded")
    assert stream.write_while_encoding(lambda blob, digest: digest, future) == ["d0", "d1"]


def _record_streams(monkeypatch) -> list[int]:
    """Threads only (the pole here), and how many blobs each stream wrote, pack by pack."""
    monkeypatch.setenv("KFORMAT_FORK", "0")
    streamed, real = [], BlobStream.write_while_encoding

    def recording(self, *args, **kwargs):
        written = real(self, *args, **kwargs)
        streamed.append(len(written))
        return written

    monkeypatch.setattr(BlobStream, "write_while_encoding", recording)
    return streamed


def test_a_long_pole_at_two_jobs_writes_the_bytes_of_one_even_when_its_planes_go_raw(tmp_path, monkeypatch):
    streamed = _record_streams(monkeypatch)
    rng = np.random.default_rng(2)
    model = {
        "big.weight": (rng.standard_normal((3000, 700)) * 0.02).astype(np.float32),
        "small.weight": (rng.standard_normal((64, 700)) * 0.02).astype(np.float32),
    }
    for rule in ("kmeans:4", "fp16,codec=zstd", "linear:8"):
        kformat.pack(model, tmp_path / "one.kf", "fp16", rules=[f"*={rule},tile=500x700"], jobs=1)
        kformat.pack(model, tmp_path / "two.kf", "fp16", rules=[f"*={rule},tile=500x700"], jobs=2)
        assert (tmp_path / "two.kf").read_bytes() == (tmp_path / "one.kf").read_bytes(), rule
        assert streamed.pop() == 6  # the pole's six tiles went through the stream
    zeros = {"w": np.zeros((4500, 4500), np.float32), "b": np.ones(10, np.float32)}  # past 4096:1
    kformat.pack(zeros, tmp_path / "z1.kf", "fp16", rules=["w=kmeans:1,codec=zstd"], jobs=1)
    report = kformat.pack(zeros, tmp_path / "z2.kf", "fp16", rules=["w=kmeans:1,codec=zstd"], jobs=2)
    assert {t.name: t.codec for t in report.manifest.tensors}["w"] == "raw" and streamed == [0]
    assert (tmp_path / "z2.kf").read_bytes() == (tmp_path / "z1.kf").read_bytes()


def test_a_sharded_pack_with_a_long_pole_is_the_same_at_two_jobs(tmp_path, monkeypatch):
    """The pole's streamed blobs cross shard boundaries as any blobs do."""
    monkeypatch.setenv("KFORMAT_FORK", "0")
    rng = np.random.default_rng(4)
    model = {
        "big.weight": (rng.standard_normal((3000, 700)) * 0.02).astype(np.float32),
        "small.weight": (rng.standard_normal((64, 700)) * 0.02).astype(np.float32),
    }
    for jobs in (1, 2):
        kformat.pack(model, tmp_path / f"j{jobs}", "q4", rules=["*=kmeans:4,tile=300x700"], layout="sharded",
                     shard_size=200_000, jobs=jobs)  # fmt: skip
    one = {
        p.relative_to(tmp_path / "j1"): p.read_bytes() for p in (tmp_path / "j1").rglob("*") if p.is_file()
    }
    two = {
        p.relative_to(tmp_path / "j2"): p.read_bytes() for p in (tmp_path / "j2").rglob("*") if p.is_file()
    }
    assert one == two and len(one) > 3  # several shards


def test_a_long_pole_written_while_tensors_are_still_admitted_goes_through_the_stream(tmp_path, monkeypatch):
    """The pole at the head of the file order may be written by admission (done, or waited
    for while finished tensors hold too much), not only after the last tensor is handed out:
    its blobs go through the stream there too, and the bytes are those of one job."""
    from kformat.packing import writer

    streamed = _record_streams(monkeypatch)
    real_room = writer.make_room

    def pole_done_first(pending, write, window, budget, pole=None):
        if pole is not None:
            pole.result()  # the pole finishes while tensors are still being handed out
        real_room(pending, write, window, budget, pole)

    monkeypatch.setattr(writer, "make_room", pole_done_first)
    rng = np.random.default_rng(5)
    model = {
        "big.weight": (rng.standard_normal((3000, 700)) * 0.02).astype(np.float32),
        **{f"small{i}.weight": (rng.standard_normal((64, 700)) * 0.02).astype(np.float32) for i in range(3)},
    }
    kformat.pack(model, tmp_path / "one.kf", "fp16", rules=["*=kmeans:4,tile=500x700"], jobs=1)
    kformat.pack(model, tmp_path / "two.kf", "fp16", rules=["*=kmeans:4,tile=500x700"], jobs=2)
    assert streamed == [6]  # the pole's six tiles, through the stream, from admission
    assert (tmp_path / "two.kf").read_bytes() == (tmp_path / "one.kf").read_bytes()


def test_a_stream_hands_back_what_the_writer_will_not_take():
    """All blobs when their bytes never ruled out the fallback (the writer takes none), None
    for each when they did (it takes them all, and each goes once written)."""
    input_bytes = AMPLIFICATION_SLACK + 100 * MAX_AMPLIFICATION
    stream = BlobStream()
    stream.begin(lambda made: not stored_raw(input_bytes, made, exact=False))
    stream.put(1, b"y" * 40, "d1")
    stream.put(0, b"x" * 40, "d0")
    assert stream.made_bytes == 80
    assert stream.unwritten(2) == [b"x" * 40, b"y" * 40]  # 80 bytes: could go raw, so here
    stream = BlobStream()
    stream.begin(lambda made: not stored_raw(input_bytes, made, exact=False))
    for index in range(3):
        stream.put(index, b"z" * 60, f"d{index}")
    assert stream.unwritten(3) == [None, None, None]


def test_a_long_pole_holds_no_copy_of_the_blobs_its_stream_writes(tmp_path, monkeypatch):
    """The pole's Encoded keeps none of the blobs the stream writes: each is let go once
    written, not held with every other until the pack ends (45 MB for VGG16 `kmeans4`)."""
    _record_streams(monkeypatch)
    handed_back, real = [], BlobStream.unwritten
    monkeypatch.setattr(
        BlobStream, "unwritten", lambda self, n: handed_back.append(real(self, n)) or handed_back[-1]
    )
    rng = np.random.default_rng(3)
    weights = {"pole.weight": rng.standard_normal((2048, 512)).astype(np.float32)}
    weights["small.weight"] = rng.standard_normal((256, 512)).astype(np.float32)
    kformat.pack(weights, tmp_path / "two.kf", "kmeans4", jobs=2, rules=["*=kmeans:4,tile=128x512"])
    assert len(handed_back) == 1 and len(handed_back[0]) == 16 and set(handed_back[0]) == {None}
    kformat.pack(weights, tmp_path / "one.kf", "kmeans4", jobs=1, rules=["*=kmeans:4,tile=128x512"])
    assert (tmp_path / "two.kf").read_bytes() == (tmp_path / "one.kf").read_bytes()
