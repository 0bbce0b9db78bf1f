"""A pack imports no more than it uses: numpy's masked arrays (imported by the plain
np.unique and np.median on their first call, 6 ms in every process of a pack) stay out."""

from __future__ import annotations

import subprocess
import sys


def test_packing_k_means_does_not_import_numpy_s_masked_arrays(tmp_path):
    script = f"""
import sys
import numpy as np
import kformat
rng = np.random.default_rng(0)
shapes = {{"a": (256, 300), "b": (64, 64)}}
weights = {{name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}}
for recipe in ("kmeans4", "kmeans2", "mobile", "q4", "q8"):
    kformat.pack(weights, {str(tmp_path / "m.kf")!r}, recipe, jobs=1)
kformat.pack(weights, {str(tmp_path / "t.kf")!r}, "fp16", jobs=1, target_bits=3.5)
print("numpy.ma" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]
