import numpy as np
import pytest

import kformat
from kformat.errors import InputError, NotFound
from kformat.sources import open_source


def test_npz_in_and_out(tmp_path, model):
    src = tmp_path / "m.npz"
    np.savez(src, **model)
    kformat.pack(str(src), tmp_path / "m.kf", "raw")
    kformat.unpack(str(tmp_path / "m.kf"), tmp_path / "back.npz")
    back = np.load(tmp_path / "back.npz")
    for name, array in model.items():
        assert back[name].dtype == array.dtype and back[name].tobytes() == array.tobytes()


def test_safetensors_in_and_out(tmp_path, model):
    from safetensors.numpy import load_file, save_file

    src = tmp_path / "m.safetensors"
    save_file(model, str(src))
    kformat.pack(str(src), tmp_path / "m.kf", "mobile")
    kformat.unpack(str(tmp_path / "m.kf"), tmp_path / "back.safetensors")
    back = load_file(str(tmp_path / "back.safetensors"))
    assert set(back) == set(model)
    assert back["fc1.weight"].dtype == np.float32
    assert back["bn.num_batches_tracked"].tobytes() == model["bn.num_batches_tracked"].tobytes()
    rel = np.linalg.norm(back["fc1.weight"] - model["fc1.weight"]) / np.linalg.norm(model["fc1.weight"])
    assert rel < 0.12  # 4-bit k-means: about -20 dB


def test_safetensors_order_is_natural(tmp_path):
    from safetensors.numpy import save_file

    arrays = {f"layer{i}.weight": np.zeros((2, 2), np.float32) for i in (10, 2, 1)}
    save_file(arrays, str(tmp_path / "m.safetensors"))
    names = [t.name for t in open_source(tmp_path / "m.safetensors").tensors()]
    assert names == ["layer1.weight", "layer2.weight", "layer10.weight"]


def test_safetensors_tensors_read_exactly_and_a_file_cut_after_opening_is_an_input_error(tmp_path):
    from safetensors.numpy import save_file

    arrays = {"a": np.arange(12, dtype=np.int16).reshape(3, 4), "b": np.linspace(0, 1, 7).astype(np.float64)}
    save_file(arrays, str(tmp_path / "m.safetensors"), metadata={"k": "v"})
    source = open_source(tmp_path / "m.safetensors")
    for name, array in arrays.items():
        got = source.load(name)
        assert got.dtype == array.dtype and got.shape == array.shape and got.tobytes() == array.tobytes()
    save_file({"b": arrays["b"]}, str(tmp_path / "cut.safetensors"))
    source = open_source(tmp_path / "cut.safetensors")
    size = (tmp_path / "cut.safetensors").stat().st_size
    with open(tmp_path / "cut.safetensors", "r+b") as handle:
        handle.truncate(size - 8)
    with pytest.raises(InputError, match=r"tensor 'b': expected 56 bytes at \d+, got 48"):
        source.load("b")


def test_torch_state_dict(tmp_path, model):
    torch = pytest.importorskip("torch")
    state = {name: torch.from_numpy(array.copy()) for name, array in model.items()}
    state["half"] = torch.randn(64, 64).to(torch.bfloat16)
    torch.save(state, tmp_path / "m.pt")
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pth")
    for path in ("m.pt", "ckpt.pth"):
        kformat.pack(str(tmp_path / path), tmp_path / "m.kf", "raw")
        back = kformat.load_all(str(tmp_path / "m.kf"))
        for name, array in model.items():
            assert back[name].tobytes() == array.tobytes()
        assert np.array_equal(back["half"], state["half"].float().numpy())


class Payload:
    """Any non-tensor class: weights_only loading must refuse to build it."""


def test_torch_file_with_code_is_refused(tmp_path):
    torch = pytest.importorskip("torch")

    torch.save({"w": torch.zeros(2), "obj": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(InputError, match="evil.pt"):
        open_source(tmp_path / "evil.pt")


def test_bad_inputs(tmp_path):
    with pytest.raises(NotFound):
        open_source(tmp_path / "missing.npz")
    (tmp_path / "m.tflite").write_bytes(b"x")
    with pytest.raises(InputError, match="unknown model file type '.tflite'"):
        open_source(tmp_path / "m.tflite")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a readable .npz"):
        open_source(tmp_path / "bad.npz")
    np.savez(tmp_path / "obj.npz", a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(InputError, match="Python objects"):
        open_source(tmp_path / "obj.npz")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(InputError, match="safetensors"):
        open_source(tmp_path / "bad.safetensors")
    np.savez(tmp_path / "c.npz", a=np.ones(3, np.complex64))
    with pytest.raises(InputError, match="complex64"):
        kformat.pack(str(tmp_path / "c.npz"), tmp_path / "c.kf")
    assert not (tmp_path / "c.kf").exists()


def test_scalars_come_back_as_scalars(tmp_path):
    import numpy as np

    import kformat

    model = {
        "count": np.array(7, np.int64),
        "scale": np.array(1.5, np.float32),
        "w": np.ones((4, 4), np.float32),
    }
    kformat.pack(model, tmp_path / "s.kf", "fp16")
    for name in ("s.npz", "s.safetensors"):
        kformat.unpack(str(tmp_path / "s.kf"), tmp_path / name)
    with np.load(tmp_path / "s.npz") as restored:
        assert restored["count"].shape == () and restored["count"] == 7 and restored["scale"].shape == ()
    from safetensors.numpy import load_file

    assert load_file(str(tmp_path / "s.safetensors"))["count"].shape == ()


def test_unpack_to_pytorch_and_widen_on_request(tmp_path):
    import numpy as np

    torch = pytest.importorskip("torch")
    import kformat
    from kformat.cli import main

    rng = np.random.default_rng(0)
    model = {"w": rng.standard_normal((64, 64)).astype(np.float16), "n": np.arange(4, dtype=np.int64)}
    kformat.pack(model, tmp_path / "m.kf", "raw")
    assert main(["unpack", str(tmp_path / "m.kf"), "-o", str(tmp_path / "m.pt"), "-q"]) == 0
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    assert state["w"].dtype == torch.float16 and np.array_equal(state["w"].numpy(), model["w"])
    assert (
        main(["unpack", str(tmp_path / "m.kf"), "-o", str(tmp_path / "w.npz"), "--dtype", "float32", "-q"])
        == 0
    )
    with np.load(tmp_path / "w.npz") as widened:
        assert widened["w"].dtype == np.float32 and widened["n"].dtype == np.int64
    assert main(["unpack", str(tmp_path / "m.kf"), "-o", str(tmp_path / "x.npz"), "--dtype", "int8"]) == 2


def test_a_filesystem_without_copy_file_range_gets_the_same_file(tmp_path, monkeypatch):
    """The single-file sink appends its spool in the kernel where it can; where the call is
    missing or refused it copies through a buffer, to the same bytes."""
    import os

    rng = np.random.default_rng(3)
    weights = {"a.weight": rng.standard_normal((300, 200)).astype(np.float32), "b": np.arange(7.0)}
    kformat.pack(weights, tmp_path / "kernel.kf", "kmeans4")

    def refuse(*args):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    kformat.pack(weights, tmp_path / "buffered.kf", "kmeans4")
    assert (tmp_path / "kernel.kf").read_bytes() == (tmp_path / "buffered.kf").read_bytes()
    assert kformat.verify(str(tmp_path / "buffered.kf")) == []


@pytest.mark.parametrize("threads", [1, 3])
def test_a_range_read_in_pieces_on_threads_is_the_file_s_bytes_and_a_short_file_says_how_short(
    tmp_path, monkeypatch, threads
):
    from kformat.methods import chunks
    from kformat.sources import reading

    data = np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8).tobytes()
    (tmp_path / "f.bin").write_bytes(data)
    monkeypatch.setattr(reading, "READ_STEP", 1000)  # 10 pieces, on the pool when threads > 1
    with chunks.threads(threads):
        got = reading.read_range(tmp_path / "f.bin", 123, 9_000, "t")
        assert got.dtype == np.uint8 and got.tobytes() == data[123:9123]
        with pytest.raises(InputError, match=r"tensor 't': expected 9000 bytes at 1500, got 8500"):
            reading.read_range(tmp_path / "f.bin", 1500, 9_000, "t")
    with pytest.raises(InputError, match=r"tensor 't': "):
        reading.read_range(tmp_path / "missing.bin", 0, 10, "t")


def test_a_mapped_range_is_the_file_s_bytes_read_only_and_a_short_file_says_how_short(tmp_path, monkeypatch):
    import mmap

    from kformat.sources import reading

    data = (
        np.random.default_rng(1)
        .integers(0, 256, 4 * mmap.ALLOCATIONGRANULARITY + 9_000, dtype=np.uint8)
        .tobytes()
    )
    (tmp_path / "f.bin").write_bytes(data)
    start = mmap.ALLOCATIONGRANULARITY + 123  # not on a page: the mapping starts at the page before
    got = reading.map_range(tmp_path / "f.bin", start, 9_000, "t")
    assert got.dtype == np.uint8 and got.tobytes() == data[start : start + 9_000]
    assert not got.flags.writeable  # the input file is never written through it
    assert reading.map_range(tmp_path / "f.bin", 5, 0, "t").size == 0
    if hasattr(mmap, "MAP_POPULATE"):  # the Linux flags, populated, read the same bytes
        flags = {"flags": mmap.MAP_SHARED | mmap.MAP_POPULATE, "prot": mmap.PROT_READ}
        monkeypatch.setattr(reading, "_READ_ONLY", flags)
    portable = reading.map_range(tmp_path / "f.bin", start, 9_000, "t")
    assert portable.tobytes() == data[start : start + 9_000] and not portable.flags.writeable
    with pytest.raises(InputError, match=rf"tensor 't': expected 9000 bytes at {len(data) - 100}, got 100"):
        reading.map_range(tmp_path / "f.bin", len(data) - 100, 9_000, "t")
    with pytest.raises(InputError, match=r"tensor 't': "):
        reading.map_range(tmp_path / "missing.bin", 0, 10, "t")

    def refuse(*args, **kwargs):
        raise OSError(19, "No such device")  # a filesystem that cannot map

    monkeypatch.setattr(mmap, "mmap", refuse)
    again = reading.map_range(tmp_path / "f.bin", start, 9_000, "t")
    assert again.tobytes() == data[start : start + 9_000] and again.flags.writeable  # read instead


def test_a_safetensors_tensor_at_an_odd_offset_is_copied_to_an_aligned_array(tmp_path):
    from kformat.sources.safetensors import SafetensorsSource

    blob = np.arange(12, dtype=np.float32).reshape(3, 4)
    header = b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
    header += b'"w":{"dtype":"F32","shape":[3,4],"data_offsets":[1,49]}}'
    header += b" " * (-len(header) % 8)
    path = tmp_path / "odd.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\x07" + blob.tobytes())
    got = SafetensorsSource(path).load("w")
    assert got.flags.aligned and np.array_equal(got, blob)
