"""Built-in presets, as plain data a Recipe validates."""

from __future__ import annotations

from typing import Any

# Built-in presets. "mobile" is the mixed recipe of the classic iOS classifier: the largest
# fully connected layer 4-bit k-means, the other FC layers 8-bit k-means, everything else
# (convolutions, embeddings, vectors) fp16; layers are told apart by role (recipe/roles.py),
# so on a transformer the embedding tables are not taken for FC layers. Its codebooks are
# fitted entropy-constrained (ecq: at most 0.25 dB below the plain fit for the 4-bit layer,
# 0.5 dB for the 8-bit ones, which stay above 43 dB), and fp16 values are byte-shuffled and
# zstd-compressed: lossless, 16% smaller. See tools/bench/size_quality.py for what each choice buys.
PRESETS: dict[str, dict[str, Any]] = {
    "raw": {"name": "raw", "default": "raw"},
    # Every tensor bit-exact in its own dtype, exponents entropy-coded (the floatz codec):
    # bfloat16 about 0.67x of its bytes, float32 0.83x, float16 0.85x on trained weights.
    "lossless": {"name": "lossless", "default": "raw,codec=floatz"},
    "fp16": {"name": "fp16", "default": "fp16,codec=zstd"},
    "int8": {"name": "int8", "default": "linear:8,row"},
    "kmeans8": {"name": "kmeans8", "default": "kmeans:8"},
    "kmeans4": {"name": "kmeans4", "default": "kmeans:4"},
    "kmeans2": {"name": "kmeans2", "default": "kmeans:2"},
    "mobile": {
        "name": "mobile",
        "default": "fp16,codec=zstd",
        "rules": [
            {"match": "*", "role": "fc", "largest": True, "rule": "kmeans:4,ecq=0.25"},
            {"match": "*", "role": "fc", "rule": "kmeans:8,ecq=0.5"},
        ],
    },
}
