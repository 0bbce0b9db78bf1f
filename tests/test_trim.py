"""Freed memory goes back to the system every TRIM_BYTES of tensors a load reads (glibc)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import kformat
from kformat.loading import trim


def test_a_trim_comes_every_trim_bytes_of_tensors_read_small_ones_counted_together(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(trim, "_TRIM", lambda pad: calls.append(pad) or 1)
    monkeypatch.setattr(trim, "TRIM_BYTES", 4096)
    monkeypatch.setattr(trim, "_since", 0)
    weights = {"small": np.ones(100, np.float32), "large": np.ones((64, 64), np.float32)}
    weights.update({f"s{i}": np.full(300, i, np.float32) for i in range(4)})  # 1200 bytes each
    kformat.pack(weights, tmp_path / "m.kf", "fp16", rules=["large=fp16,tile=16x64"])  # four tiles
    with kformat.open(str(tmp_path / "m.kf")) as model:
        model["small"].numpy()
        assert calls == []  # 400 bytes: no trim yet
        np.testing.assert_array_equal(model["large"].numpy(), weights["large"])
        assert calls == [0]  # 16 KiB counted: a trim, and the count starts again
        for i in range(3):
            model[f"s{i}"].numpy()
        assert calls == [0]  # 3600 bytes since
        model["s3"].numpy()
        assert calls == [0, 0]  # 4800


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_the_c_library_trim_is_found_and_runs():
    if trim._TRIM is None:
        pytest.skip("this C library has no malloc_trim (musl)")
    assert trim._TRIM(0) in (0, 1)
    trim.after_tensor(trim.TRIM_BYTES)  # callable as the loader calls it


def test_large_outputs_get_mappings_of_their_own_and_small_ones_come_from_numpy(tmp_path):
    import mmap

    from kformat.loading import mapped

    big = mapped.empty((600, 1000), np.float32)  # 2.4 MB
    assert big.shape == (600, 1000) and big.dtype == np.float32 and big.flags.c_contiguous
    assert big.flags.writeable
    big[...] = 3.0
    assert float(big.sum()) == 3.0 * big.size
    small = mapped.empty((10, 10), np.float16)
    assert small.flags.owndata and small.dtype == np.float16
    if mapped._FLAGS is not None:
        owner = big
        while isinstance(owner, np.ndarray):
            owner = owner.base
        assert isinstance(getattr(owner, "obj", owner), mmap.mmap)
    weights = {"w": np.random.default_rng(0).standard_normal((512, 1024)).astype(np.float32)}
    kformat.pack(weights, tmp_path / "m.kf", "raw")
    back = kformat.load_all(str(tmp_path / "m.kf"))["w"]
    np.testing.assert_array_equal(back, weights["w"])
    assert back.flags.writeable and not back.flags.owndata  # from the mapping


def test_a_mapping_the_system_refuses_is_a_limit_error_naming_the_tensor(tmp_path, monkeypatch):
    from kformat.errors import LimitError
    from kformat.loading import mapped

    if mapped._FLAGS is None:
        pytest.skip("no anonymous mappings here (numpy allocates)")
    weights = {"w": np.ones((512, 1024), np.float32)}  # 2 MiB of output: mapped
    kformat.pack(weights, tmp_path / "m.kf", "fp16")

    def refuse(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(mapped.mmap, "mmap", refuse)
    with pytest.raises(LimitError, match=r"tensor 'w': cannot allocate 2097152 bytes"):
        kformat.load_all(str(tmp_path / "m.kf"))
