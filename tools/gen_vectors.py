#!/usr/bin/env python3
"""Regenerate spec/conformance/vectors/: small golden containers and the tensors they decode to.

Run only on purpose (`make conformance`), when the format changes on purpose; tests never
write here. Each vector NAME has vectors/NAME.kf (or vectors/NAME/ for the sharded one); the
tensors it must decode to are raw little-endian files expected/NAME/TENSOR.bin, described in
spec/conformance/vectors.json (dtype, shape, SHA-256), so a reader in any language can check
itself. The source tensors are in vectors/source.npz.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from kformat.api import load_all
from kformat.format.constants import HEADER_SIZE
from kformat.format.header import decode_header, encode_header
from kformat.sources import DictSource
from kformat.recipe import recipe_from_dict
from kformat.packing.writer import pack

SUITE = Path(__file__).resolve().parent.parent / "spec" / "conformance"
VECTOR_DIR = SUITE / "vectors"
EXPECTED_DIR = SUITE / "expected"
INDEX = SUITE / "vectors.json"
GENERATOR = "kformat golden vectors"


def source_tensors() -> dict[str, np.ndarray]:
    """Small, odd-sized tensors so tiles are partial and groups uneven."""
    rng = np.random.default_rng(20261122)
    return {
        "dense.weight": (rng.standard_normal((37, 70)) * 0.1).astype(np.float32),
        "conv.weight": (rng.standard_normal((12, 3, 3, 3)) * 0.2).astype(np.float32),
        "dense.bias": (rng.standard_normal(37) * 0.01).astype(np.float32),
        "counter": np.arange(5, dtype=np.int64),
        "mask": rng.random((4, 4)) > 0.5,
    }


# name -> (recipe, layout)
def rule_recipe(rule: str, **extra) -> dict:
    return {"name": rule, "default": rule, "min_elements": 16, "tile": [16, 32], **extra}


VECTORS: dict[str, tuple[dict, str]] = {
    "kmeans1": (rule_recipe("kmeans:1"), "single"),
    "kmeans2": (rule_recipe("kmeans:2"), "single"),
    "kmeans3": (rule_recipe("kmeans:3"), "single"),
    "kmeans4": (rule_recipe("kmeans:4"), "single"),
    "kmeans8": (rule_recipe("kmeans:8"), "single"),
    "kmeans4_group": (rule_recipe("kmeans:4,group=8"), "single"),
    "kmeans4_scaled": (rule_recipe("kmeans:4,scale=row"), "single"),
    "kmeans3_group_scaled": (rule_recipe("kmeans:3,group=8,scale=row"), "single"),
    "kmeans4_fp32_codebook": (rule_recipe("kmeans:4,codebook=fp32"), "single"),
    "kmeans4_pruned": (rule_recipe("kmeans:4,prune=0.5"), "single"),
    "kmeans4_zstd": (rule_recipe("kmeans:4,codec=zstd"), "single"),
    "kmeans4_raw_plane": (rule_recipe("kmeans:4,codec=raw"), "single"),
    "linear8_row": (rule_recipe("linear:8,row"), "single"),
    "linear4": (rule_recipe("linear:4"), "single"),
    "fp16": (rule_recipe("fp16"), "single"),
    "fp16_zstd": (rule_recipe("fp16,codec=zstd"), "single"),
    "raw": (rule_recipe("raw"), "single"),
    "lossless_floatz": (rule_recipe("raw,codec=floatz"), "single"),
    "tied_kmeans4": (rule_recipe("kmeans:4"), "single"),
    "kmeans4_gap": (rule_recipe("kmeans:4"), "single"),  # its data region after a gap of zeros
    "mobile_sharded": (
        {
            "name": "mobile",
            "default": "fp16",
            "min_elements": 16,
            "tile": [16, 32],
            "rules": [{"match": "*", "ndim": 2, "nth": 0, "rule": "kmeans:4"}],
        },
        "sharded",
    ),
}


def vector_path(name: str) -> str:
    """The vector's path relative to spec/conformance/ (a directory ends with '/')."""
    return f"vectors/{name}/" if VECTORS[name][1] == "sharded" else f"vectors/{name}.kf"


def vector_source(name: str, source: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The tensors a vector packs: the shared source, plus for the lossless vector the dense
    weight in bfloat16 and float16, and for the tied one a second name for the same array."""
    if name == "lossless_floatz":
        from kformat.format.dtypes import numpy_dtype

        dense = source["dense.weight"]
        return {
            **source,
            "dense.bf16": dense.astype(numpy_dtype("bfloat16")),
            "dense.f16": dense.astype(np.float16),
        }
    if name == "tied_kmeans4":
        return {**source, "head.weight": source["dense.weight"]}  # the same array: an alias
    return source


def move_data_region(path: Path, gap: int = 4096) -> None:
    """Put `gap` more zero bytes before the data region (D grows by `gap`): what a writer
    that reserved room for its manifest before the blobs leaves, and readers must accept."""
    data = path.read_bytes()
    header = decode_header(data, str(path))
    body = data[HEADER_SIZE : HEADER_SIZE + header.manifest_length]
    offset = header.data_offset + gap
    zeros = bytes(offset - HEADER_SIZE - len(body))
    path.write_bytes(encode_header(body, offset) + body + zeros + data[header.data_offset :])


def write(name: str, source: dict[str, np.ndarray]) -> Path:
    source = vector_source(name, source)
    recipe, layout = VECTORS[name]
    target = SUITE / vector_path(name)
    if target.is_dir():
        shutil.rmtree(target)
    pack(
        DictSource(source),
        target,
        recipe_from_dict(recipe),
        layout=layout,
        shard_size=2048,
        generator=GENERATOR,
    )
    if name == "kmeans4_gap":
        move_data_region(target)
    return target


def main() -> int:
    VECTOR_DIR.mkdir(parents=True, exist_ok=True)
    source = source_tensors()
    np.savez(VECTOR_DIR / "source.npz", **source)
    if EXPECTED_DIR.exists():
        shutil.rmtree(EXPECTED_DIR)
    index = {}
    for name in VECTORS:
        target = write(name, source)
        tensors = []
        for tensor, array in load_all(str(target)).items():
            data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            out = EXPECTED_DIR / name / f"{tensor}.bin"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
            tensors.append(
                {
                    "name": tensor,
                    "dtype": array.dtype.name,
                    "shape": list(array.shape),
                    "data": str(out.relative_to(SUITE)),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            )
        index[vector_path(name)] = {"recipe": VECTORS[name][0], "tensors": tensors}
        print(f"wrote {target}")
    INDEX.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
