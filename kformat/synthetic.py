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
