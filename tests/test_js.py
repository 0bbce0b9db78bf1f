"""The JavaScript reader (js/) against the Python reader: the same tensors, bit for bit, for
models packed here with every method, codec and layout; and its own test suite under Node."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import kformat
from kformat.format.dtypes import numpy_dtype
from kformat.synthetic import small_vgg_weights

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / "js"
NODE = shutil.which("node")
sys.path.insert(0, str(ROOT / "examples" / "web"))

from reader_site import missing  # noqa: E402 - the reader's packages not installed in js/

pytestmark = pytest.mark.skipif(
    NODE is None or bool(missing()),
    reason="node and js/node_modules (make test installs them)",
)


def js_tensors(model: Path, out: Path, quantized: bool = False) -> dict:
    args = [NODE, str(JS / "tools" / "dump.mjs"), str(model), str(out)] + (
        ["--quantized"] if quantized else []
    )
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    index = json.loads((out / "index.json").read_text())
    tensors = {}
    for entry in index["tensors"]:
        dtype = numpy_dtype(entry["dtype"])
        data = np.fromfile(out / entry["file"], dtype=dtype.newbyteorder("<")).reshape(entry["shape"])
        tensors[entry["name"]] = (data, entry)
    return tensors


def source_model(rng):
    import ml_dtypes

    weights = small_vgg_weights(seed=7)
    weights["embed.weight"] = (rng.standard_normal((300, 48)) * np.exp(rng.standard_normal((300, 1)))).astype(
        np.float32
    )
    weights["dw.weight"] = (
        rng.standard_normal((12, 1, 3, 3)) * np.exp(rng.standard_normal((12, 1, 1, 1)))
    ).astype(np.float32)
    weights["norm.bf16"] = rng.standard_normal(77).astype(ml_dtypes.bfloat16)
    weights["steps"] = np.arange(5, dtype=np.int64)
    weights["mask"] = rng.random((3, 5)) > 0.5
    return weights


@pytest.mark.parametrize(
    "recipe,rules,layout",
    [
        ("mobile", [], "sharded"),
        ("q4", [], "single"),
        ("q8", [], "single"),
        ("lossless", [], "single"),
        (
            None,
            [
                "classifier.*=kmeans:3,group=8,codec=zstd",
                "features.*=linear:8,row",
                "dw.*=kmeans:2,scale=row",
            ],
            "single",
        ),
        (None, ["*.weight=kmeans:1,codec=raw", "*=fp16,codec=raw"], "sharded"),
    ],
)
def test_js_reads_what_python_reads(tmp_path, recipe, rules, layout):
    weights = source_model(np.random.default_rng(1))
    target = tmp_path / ("model" if layout == "sharded" else "model.kf")
    kformat.pack(weights, target, recipe, rules=rules, layout=layout, shard_size=64 << 10)
    python = kformat.load_all(str(target))
    javascript = js_tensors(target, tmp_path / "js", quantized=True)
    with kformat.open(str(target)) as model:
        assert list(javascript) == list(model.keys())
    for name, expected in python.items():
        got, entry = javascript[name]
        assert got.shape == expected.shape and got.dtype == expected.dtype, name
        assert got.tobytes() == np.ascontiguousarray(expected).tobytes(), (
            f"{name}: JS and Python decode differently"
        )
        if "codes" in entry:
            with kformat.open(str(target)) as model:
                codes = model[name].quantized().codes
            js_codes = np.fromfile(tmp_path / "js" / entry["codes"], dtype=np.uint8).reshape(codes.shape)
            np.testing.assert_array_equal(js_codes, codes)


def test_js_errors_exit_2_with_the_kind(tmp_path):
    bad = tmp_path / "bad.kf"
    bad.write_bytes(b"not a model at all, not even close" * 4)
    result = subprocess.run(
        [NODE, str(JS / "tools" / "dump.mjs"), str(bad), str(tmp_path / "o")], capture_output=True, text=True
    )
    assert result.returncode == 2 and "format: " in result.stderr and "bad magic" in result.stderr
