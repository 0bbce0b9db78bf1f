"""What a tensor is for, guessed from its name and shape, so presets can say "the fully
connected layers" on any architecture instead of "rank-2 tensors in file order" (which on a
transformer picks the position-embedding table first)."""

from __future__ import annotations

import re
from typing import Literal

Role = Literal["fc", "embedding", "conv", "depthwise", "vector"]
ROLES: tuple[str, ...] = ("fc", "embedding", "conv", "depthwise", "vector")

# Names embedding tables go by in PyTorch, Hugging Face and GGUF checkpoints.
EMBEDDING = re.compile(
    r"(embed|embedding|embeddings|wte|wpe|tok_embeddings|token_embd|lm_head|shared)(\.|_|$)", re.IGNORECASE
)


def role_of(name: str, shape: tuple[int, ...]) -> str:
    """fc (a rank-2 weight that multiplies activations), embedding (a rank-2 lookup table, or
    an output head tied to one), depthwise (a convolution with one input channel per group:
    (channels, 1, kh, kw), tiny rows of very different ranges), conv (other rank 3 and up),
    vector (biases, norms, scalars)."""
    if len(shape) <= 1:
        return "vector"
    if len(shape) >= 3:
        return "depthwise" if shape[1] == 1 else "conv"
    return "embedding" if EMBEDDING.search(name) else "fc"
