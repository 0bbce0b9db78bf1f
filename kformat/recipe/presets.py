"""Built-in presets, as plain data a Recipe validates."""

from __future__ import annotations

from typing import Any

# Built-in presets. "mobile" is the mixed recipe of the classic iOS classifier: the largest
# fully connected layer 4-bit k-means, the other FC layers 8-bit k-means, everything else
# (convolutions, embeddings, vectors) fp16; layers are told apart by role (recipe/roles.py),
# so on a transformer the embedding tables are not taken for FC layers. Its codebooks are
# fitted entropy-constrained (ecq: at most 0.25 dB below the plain fit for the 4-bit layer,
# 0.5 dB for the 8-bit ones, which stay above 43 dB), and fp16 values are byte-shuffled and
# zstd-compressed: lossless, 16% smaller. Its code planes are zstd rather than PNG: on VGG16
# the same bytes (0.06% fewer), and zstd's Huffman decoding runs 2.5x libdeflate's inflate, so
# a load takes 0.75x the CPU and about 0.85x the time (in-process A/B; load_speed.py went from
# 0.95x to 1.21-1.31x safetensors f32's speed), a pack 0.87x the time, and kformat.js decodes
# it in 0.77x the time in Node, 0.60x in Chromium (zstddec, zstd's decoder in WebAssembly,
# against the platform's inflate).
# See tools/bench/size_quality.py for what each choice buys.
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
    # The deployment presets (q8, q4, mobile) keep their code planes in zstd, for the reasons
    # given for mobile above (BERT-shaped q4: 0.12% smaller, loads in 0.85x the time); the
    # plain kmeans presets keep the format's default, PNG planes an image viewer opens.
    # q8: near-lossless for any architecture. Every weight matrix, convolution and embedding
    # 8-bit k-means with row scales (one codebook for the tensor, each row divided by its RMS,
    # so depthwise kernels and rows of different ranges keep their precision); biases and
    # norms fp16 (lossless, zstd).
    "q8": {
        "name": "q8",
        "default": "fp16,codec=zstd",
        "rules": [
            {"match": "*", "role": role, "rule": "kmeans:8,scale=row,codec=zstd"}
            for role in ("fc", "embedding", "conv", "depthwise")
        ],
    },
    # q4: about 4.3 bits per weight. Weight matrices, convolutions and embeddings 4-bit k-means,
    # a codebook per 64 rows over row-scaled values; depthwise kernels (few parameters, and
    # the first to break) 8-bit scaled; biases and norms fp16.
    "q4": {
        "name": "q4",
        "default": "fp16,codec=zstd",
        "rules": [
            {"match": "*", "role": "depthwise", "rule": "kmeans:8,scale=row,codec=zstd"},
            *(
                {"match": "*", "role": role, "rule": "kmeans:4,group=64,scale=row,codec=zstd"}
                for role in ("fc", "embedding", "conv")
            ),
        ],
    },
    "mobile": {
        "name": "mobile",
        "default": "fp16,codec=zstd",
        "rules": [
            {"match": "*", "role": "fc", "largest": True, "rule": "kmeans:4,ecq=0.25,codec=zstd"},
            {"match": "*", "role": "fc", "rule": "kmeans:8,ecq=0.5,codec=zstd"},
        ],
    },
}
