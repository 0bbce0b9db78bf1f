"""VGG16 inference in plain numpy, fed one layer at a time from any weight source.

The network is read off the tensor names (torchvision's `features.N` / `classifier.N`):
3x3 convolutions by im2col, ReLU, 2x2 max pooling where torchvision pools, adaptive average
pooling to 7x7, then the FC head. Weights arrive as a stream of (name, W) where W only has
to offer `matmul(x)` = W2d @ x, so the same code runs on

    * a dict of float32 arrays loaded eagerly      -> `eager_weights(arrays)`
    * a kformat model streamed tile by tile        -> `model.stream(weight_names(model))`

and only the current layer's weights need to exist at any moment.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

_LAYER = re.compile(r"^(features|classifier)\.(\d+)\.weight$")


@dataclass(frozen=True)
class Layer:
    name: str  # the weight tensor's name
    kind: str  # "conv" or "fc"
    pool_after: bool = False  # a 2x2 max pool follows (conv)
    relu: bool = True


def plan(names: Iterable[str]) -> list[Layer]:
    """The layers of a VGG-style model from its tensor names, in execution order."""
    found = sorted(
        ((m.group(1), int(m.group(2)), n) for n in names if (m := _LAYER.match(n))),
        key=lambda item: (item[0] != "features", item[1]),
    )
    convs = [(i, n) for part, i, n in found if part == "features"]
    fcs = [n for part, _, n in found if part == "classifier"]
    if not convs or not fcs:
        raise ValueError("not a VGG-style model: need features.N.weight and classifier.N.weight tensors")
    layers = []
    for k, (index, name) in enumerate(convs):
        following = convs[k + 1][0] if k + 1 < len(convs) else None
        # torchvision: conv at i, ReLU at i+1, then either the next conv at i+2 or a pool at i+2.
        layers.append(Layer(name, "conv", pool_after=following is None or following - index > 2))
    layers += [Layer(name, "fc", relu=k + 1 < len(fcs)) for k, name in enumerate(fcs)]
    return layers


def weight_names(names: Iterable[str]) -> list[str]:
    return [layer.name for layer in plan(names)]


def im2col(x: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (C*9, H*W) patches of a 3x3, padding 1 convolution, in the order of a
    (out, C, 3, 3) weight flattened to (out, C*9)."""
    c, h, w = x.shape
    padded = np.zeros((c, h + 2, w + 2), dtype=x.dtype)
    padded[:, 1:-1, 1:-1] = x
    cols = np.empty((c, 3, 3, h, w), dtype=x.dtype)
    for dy in range(3):
        for dx in range(3):
            cols[:, dy, dx] = padded[:, dy : dy + h, dx : dx + w]
    return cols.reshape(c * 9, h * w)


def max_pool_2x2(x: np.ndarray) -> np.ndarray:
    c, h, w = x.shape
    return x[:, : h - h % 2, : w - w % 2].reshape(c, h // 2, 2, w // 2, 2).max(axis=(2, 4))


def adaptive_avg_pool(x: np.ndarray, size: int = 7) -> np.ndarray:
    """torchvision's AdaptiveAvgPool2d: cell i averages rows floor(i*H/s) .. ceil((i+1)*H/s)."""
    c, h, w = x.shape
    out = np.empty((c, size, size), dtype=x.dtype)
    for i in range(size):
        r0, r1 = (i * h) // size, -((-(i + 1) * h) // size)
        for j in range(size):
            c0, c1 = (j * w) // size, -((-(j + 1) * w) // size)
            out[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return out


class Dense:
    """An in-memory weight with the one method the network needs."""

    def __init__(self, array: np.ndarray):
        self.w = array.reshape(array.shape[0], -1)

    def matmul(self, x: np.ndarray) -> np.ndarray:
        return self.w @ x


def eager_weights(arrays: Mapping[str, np.ndarray], names: Iterable[str]) -> Iterator[tuple[str, Dense]]:
    for name in names:
        yield name, Dense(arrays[name])


def forward(
    image: np.ndarray,
    weights: Iterable[tuple[str, object]],
    bias: Callable[[str], np.ndarray],
    layers: list[Layer],
    on_layer: Callable[[int, Layer], None] | None = None,
) -> np.ndarray:
    """Logits for one (3, H, W) image. `weights` yields (name, W) in the order of `layers`."""
    x = image.astype(np.float32)
    flat = None
    for k, ((name, w), layer) in enumerate(zip(weights, layers, strict=True)):
        if name != layer.name:
            raise ValueError(f"weights arrive out of order: got {name!r}, the network needs {layer.name!r}")
        b = bias(name.removesuffix("weight") + "bias").astype(np.float32)
        if layer.kind == "conv":
            c, h, wd = x.shape
            x = w.matmul(im2col(x)).reshape(-1, h, wd)
            x += b[:, None, None]
            np.maximum(x, 0, out=x)
            if layer.pool_after:
                x = max_pool_2x2(x)
        else:
            if flat is None:
                flat = adaptive_avg_pool(x).reshape(-1)
            flat = w.matmul(flat) + b
            if layer.relu:
                np.maximum(flat, 0, out=flat)
        if on_layer is not None:
            on_layer(k, layer)
    return flat


def test_image(size: int = 64, seed: int = 0) -> np.ndarray:
    """A deterministic (3, size, size) input, roughly ImageNet-normalised."""
    return np.random.default_rng(seed).standard_normal((3, size, size)).astype(np.float32)
