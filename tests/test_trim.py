"""Freed memory goes back to the system after each large tensor a load reads (glibc)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import kformat
from kformat.loading import trim


def test_only_large_tensors_trim(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(trim, "_TRIM", lambda pad: calls.append(pad) or 1)
    monkeypatch.setattr(trim, "TRIM_BYTES", 4096)
    weights = {"small": np.ones(100, np.float32), "large": np.ones((64, 64), np.float32)}
    kformat.pack(weights, tmp_path / "m.kf", "fp16", rules=["large=fp16,tile=16x64"])  # four tiles
    back = kformat.load_all(str(tmp_path / "m.kf"))
    np.testing.assert_array_equal(back["large"], weights["large"])
    assert calls == [0]  # the 16 KiB tensor, not the 400-byte one


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_the_c_library_trim_is_found_and_runs():
    if trim._TRIM is None:
        pytest.skip("this C library has no malloc_trim (musl)")
    assert trim._TRIM(0) in (0, 1)
    trim.after_tensor(trim.TRIM_BYTES)  # callable as the loader calls it
