"""bfloat16 and float8 tensors are stored as they are, bit-exact, with the ml_dtypes extra:
from a dict, from .safetensors and from PyTorch files, back to the same types."""

from __future__ import annotations

import numpy as np
import pytest

import kformat

ml_dtypes = pytest.importorskip("ml_dtypes")
EXTRA = ("bfloat16", "float8_e4m3fn", "float8_e5m2")


def _weights():
    rng = np.random.default_rng(0)
    return {name: rng.standard_normal((48, 40)).astype(np.dtype(name)) for name in EXTRA}


def test_raw_keeps_bfloat16_and_float8_bit_exact(tmp_path):
    weights = _weights()
    report = kformat.pack(weights, tmp_path / "m.kf", "raw")
    assert [(t.dtype, t.storage) for t in report.manifest.tensors] == [(n, n) for n in EXTRA]
    loaded = kformat.load_all(str(tmp_path / "m.kf"))
    for name, array in weights.items():
        assert loaded[name].dtype == array.dtype and loaded[name].tobytes() == array.tobytes()
    assert kformat.verify(str(tmp_path / "m.kf")) == []


def test_a_safetensors_file_round_trips_byte_for_byte(tmp_path):
    from safetensors.numpy import save_file

    save_file(_weights(), str(tmp_path / "in.safetensors"))
    kformat.pack(str(tmp_path / "in.safetensors"), tmp_path / "m.kf", "raw")
    kformat.unpack(str(tmp_path / "m.kf"), tmp_path / "out.safetensors")
    assert (tmp_path / "in.safetensors").read_bytes() == (tmp_path / "out.safetensors").read_bytes()


def test_npz_has_no_bfloat16_so_unpack_widens_exactly(tmp_path):
    weights = _weights()
    kformat.pack(weights, tmp_path / "m.kf", "raw")
    kformat.unpack(str(tmp_path / "m.kf"), tmp_path / "out.npz")
    with np.load(tmp_path / "out.npz") as restored:
        for name, array in weights.items():
            assert restored[name].dtype == np.float32
            assert np.array_equal(restored[name], array.astype(np.float32))


def test_lossy_rules_quantize_bfloat16_and_fp16_refuses_its_outliers_with_raw_as_the_way_out(tmp_path):
    rng = np.random.default_rng(1)
    w = {
        "w": (rng.standard_normal((64, 64)) * 0.05).astype(ml_dtypes.bfloat16),
        "big": (rng.standard_normal((64, 64)) * 1e5).astype(ml_dtypes.bfloat16),
    }
    entries = kformat.pack(w, tmp_path / "q.kf", "kmeans4", rules=["big=raw"]).manifest.tensors
    assert entries[0].rule == "kmeans:4" and entries[0].stats["sqnr_db"] > 19
    assert entries[1].storage == "bfloat16"  # raw keeps bf16: no doubling to float32
    with pytest.raises(kformat.QuantizationError, match="float16 range"):
        kformat.pack(w, tmp_path / "f.kf", "fp16")


def test_pytorch_bfloat16_and_float8_tensors_and_files(tmp_path):
    torch = pytest.importorskip("torch")
    state = {"bf16": torch.randn(8, 8, dtype=torch.bfloat16), "f8": torch.randn(8, 8).to(torch.float8_e4m3fn)}
    torch.save(state, tmp_path / "m.pt")
    for source in (state, str(tmp_path / "m.pt")):
        kformat.pack(source, tmp_path / "t.kf", "raw")
        loaded = kformat.load_all(str(tmp_path / "t.kf"))
        assert loaded["bf16"].dtype == np.dtype("bfloat16")
        assert loaded["bf16"].view(np.int16).tobytes() == state["bf16"].view(torch.int16).numpy().tobytes()
        assert loaded["f8"].view(np.uint8).tobytes() == state["f8"].view(torch.uint8).numpy().tobytes()


def test_unpack_to_pytorch_keeps_bfloat16_and_float8(tmp_path):
    torch = pytest.importorskip("torch")
    weights = _weights()
    kformat.pack(weights, tmp_path / "m.kf", "raw")
    kformat.unpack(str(tmp_path / "m.kf"), tmp_path / "m.pt")
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    assert state["bfloat16"].dtype == torch.bfloat16 and state["float8_e5m2"].dtype == torch.float8_e5m2
    assert state["bfloat16"].view(torch.int16).numpy().tobytes() == weights["bfloat16"].tobytes()
    assert state["float8_e4m3fn"].view(torch.uint8).numpy().tobytes() == weights["float8_e4m3fn"].tobytes()
