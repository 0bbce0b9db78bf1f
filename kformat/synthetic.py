"""Built-in example weights: torchvision VGG16 shapes with He-initialised Gaussian values.

Used by `make demo`, the benchmarks and tests, so nothing is ever downloaded. Real trained
weights are not Gaussian, but the shapes (an FC head holding ~90% of the parameters) are what
matter for size, memory and streaming.
"""

from __future__ import annotations

import numpy as np

VGG16_CONVS = [
    (0, 3, 64),
    (2, 64, 64),
    (5, 64, 128),
    (7, 128, 128),
    (10, 128, 256),
    (12, 256, 256),
    (14, 256, 256),
    (17, 256, 512),
    (19, 512, 512),
    (21, 512, 512),
    (24, 512, 512),
    (26, 512, 512),
    (28, 512, 512),
]
VGG16_FCS = [(0, 25088, 4096), (3, 4096, 4096), (6, 4096, 1000)]


def vgg16_shapes(num_classes: int = 1000) -> list[tuple[str, tuple[int, ...]]]:
    shapes = []
    for index, cin, cout in VGG16_CONVS:
        shapes.append((f"features.{index}.weight", (cout, cin, 3, 3)))
        shapes.append((f"features.{index}.bias", (cout,)))
    for index, fin, fout in VGG16_FCS:
        fout = num_classes if index == 6 else fout
        shapes.append((f"classifier.{index}.weight", (fout, fin)))
        shapes.append((f"classifier.{index}.bias", (fout,)))
    return shapes


def he_gaussian(shapes, seed: int = 0) -> dict[str, np.ndarray]:
    """He-init weights (std = sqrt(2 / fan_in)) and small biases, deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes:
        if name.endswith("bias"):
            out[name] = (rng.standard_normal(shape, dtype=np.float32) * 0.01).astype(np.float32)
        else:
            fan_in = int(np.prod(shape[1:]))
            out[name] = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
    return out


def vgg16_weights(seed: int = 0) -> dict[str, np.ndarray]:
    return he_gaussian(vgg16_shapes(), seed)


def small_vgg_weights(seed: int = 0, scale: int = 8, num_classes: int = 10) -> dict[str, np.ndarray]:
    """VGG16's structure with every width divided by `scale` (fast tests)."""
    shapes = []
    for name, shape in vgg16_shapes(num_classes):
        shape = list(shape)
        if name.startswith("features"):
            shape[0] = max(1, shape[0] // scale)
            if len(shape) == 4 and shape[1] != 3:
                shape[1] = max(1, shape[1] // scale)
        else:
            if name == "classifier.0.weight":
                shape = [shape[0] // scale, (512 // scale) * 49]
            elif name.endswith("weight"):
                shape = [shape[0] if name == "classifier.6.weight" else shape[0] // scale, shape[1] // scale]
            elif name != "classifier.6.bias":
                shape[0] //= scale
        shapes.append((name, tuple(shape)))
    return he_gaussian(shapes, seed)


def bert_base_shapes(layers: int = 12, width: int = 768, inner: int = 3072, vocab: int = 30522):
    """BERT-base's tensors (Hugging Face names, no pooler): a 30522-row word embedding, then
    per layer four width x width attention matrices, two width x inner feed-forward ones,
    their biases and two LayerNorms. Unlike VGG16, no tensor dominates: 110M parameters in
    ~200 tensors, the largest (the embedding) a fifth of them."""
    shapes = [
        ("embeddings.word_embeddings.weight", (vocab, width)),
        ("embeddings.position_embeddings.weight", (512, width)),
        ("embeddings.token_type_embeddings.weight", (2, width)),
        ("embeddings.LayerNorm.weight", (width,)),
        ("embeddings.LayerNorm.bias", (width,)),
    ]
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for part in (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
        ):
            shapes += [(p + part + ".weight", (width, width)), (p + part + ".bias", (width,))]
        shapes += [
            (p + "attention.output.LayerNorm.weight", (width,)),
            (p + "attention.output.LayerNorm.bias", (width,)),
        ]
        shapes += [
            (p + "intermediate.dense.weight", (inner, width)),
            (p + "intermediate.dense.bias", (inner,)),
        ]
        shapes += [(p + "output.dense.weight", (width, inner)), (p + "output.dense.bias", (width,))]
        shapes += [(p + "output.LayerNorm.weight", (width,)), (p + "output.LayerNorm.bias", (width,))]
    return shapes


def bert_base_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """BERT-base-shaped weights: matrices Student-t (5 degrees of freedom, the heavier tails of
    trained transformers) at std 0.02 as BERT initialises them, LayerNorm scales 1, biases
    small."""
    return bert_like_weights(bert_base_shapes(), seed)


def minilm_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """all-MiniLM-L6-v2-shaped weights (6 layers, width 384, 22.7M parameters), drawn as
    bert_base_weights draws them. Its word embedding holds 52% of the parameters: a long pole
    beside many small matrices, where VGG16's pole sits beside a few large ones."""
    return bert_like_weights(bert_base_shapes(layers=6, width=384, inner=1536), seed)


def bert_like_weights(shapes, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights for BERT-like `shapes` (see bert_base_weights)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes:
        if len(shape) == 2:
            t = rng.standard_t(5, size=shape).astype(np.float32)
            out[name] = t * np.float32(0.02 / np.sqrt(5 / 3))  # the t(5) variance is 5/3
        elif "LayerNorm.weight" in name:
            out[name] = np.ones(shape, dtype=np.float32)
        else:
            out[name] = (rng.standard_normal(shape, dtype=np.float32) * 0.01).astype(np.float32)
    return out
