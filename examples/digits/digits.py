#!/usr/bin/env python3
"""What quantization costs in accuracy: a 64-512-512-10 network on scikit-learn's digits.

Trains a small FC-heavy network (PyTorch, CPU, fixed seed, a few seconds) on the handwritten
digits bundled with scikit-learn (1797 8x8 images; a fixed stratified 70/30 split; nothing is
downloaded), packs it under several recipes, and evaluates each packed model on the test set
with a numpy forward pass over the dequantized weights:

    recipe  bytes  x smaller  top-1 accuracy  change vs float32  top-1 agreement with float32

It also writes digits.json and, when matplotlib is installed (the `plot` extra), a
size-versus-accuracy plot digits.png.

    python examples/digits/digits.py [--out demo-out/digits] [--epochs 40]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from accuracy_table import evaluate, print_table, write_report  # noqa: E402

import kformat  # noqa: E402

RECIPES = [
    ("fp16", "fp16", []),
    ("int8", "int8", []),
    ("kmeans8", "kmeans8", []),
    ("kmeans4", "kmeans4", []),
    ("kmeans2", "kmeans2", []),
    ("kmeans2 per group of 64 rows", "fp16", ["*.weight=kmeans:2,group=64"]),
    ("mobile", "mobile", []),
]
SEED = 0


def load_data():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    return train_test_split(x, digits.target, test_size=0.3, random_state=SEED, stratify=digits.target)


def train(x_train, y_train, epochs: int) -> dict[str, np.ndarray]:
    import torch

    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 512),
        torch.nn.ReLU(),
        torch.nn.Linear(512, 512),
        torch.nn.ReLU(),
        torch.nn.Linear(512, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    x, y = torch.from_numpy(x_train), torch.from_numpy(y_train).long()
    generator = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 64):
            batch = order[start : start + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
    return {name: value.detach().numpy().copy() for name, value in model.state_dict().items()}


def logits(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The network in numpy: Linear-ReLU-Linear-ReLU-Linear."""
    h = x
    for k in (0, 2, 4):
        h = h @ weights[f"{k}.weight"].T + weights[f"{k}.bias"]
        if k != 4:
            h = np.maximum(h, 0)
    return h


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", default="demo-out/digits", help="working directory (default demo-out/digits)"
    )
    parser.add_argument("--epochs", type=int, default=40, help="training epochs (default 40)")
    parser.add_argument(
        "--target-bits",
        type=float,
        nargs="+",
        default=[2.0, 3.0],
        help="bit allocation targets for the 'allocated' rows, bits per parameter (default 2 3)",
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    x_train, x_test, y_train, y_test = load_data()
    weights = train(x_train, y_train, args.epochs)
    source = out / "digits-float32.npz"
    np.savez(source, **weights)
    params = sum(a.size for a in weights.values())
    f32_bytes = 4 * params
    reference = logits(weights, x_test).argmax(1)
    f32_acc = float((reference == y_test).mean())
    print(
        f"digits: {len(x_train)} train / {len(x_test)} test images; 64-512-512-10 network, {params:,}"
        " parameters;"
        f" float32 test accuracy {f32_acc:.2%}"
    )

    def predict(path: Path) -> tuple[np.ndarray, dict]:
        with kformat.open(str(path)) as packed:
            rules = sorted({t.rule for t in packed.manifest.tensors})
        return logits(kformat.load_all(str(path)), x_test).argmax(1), {"rules": rules}

    rows = evaluate(out, "digits", source, RECIPES, args.target_bits, f32_bytes, predict, y_test, reference)
    print_table(rows, "top-1")
    write_report(
        out,
        "digits",
        {"test_images": len(x_test), "parameters": params},
        rows,
        size_unit="KiB",
        ylabel="test top-1 accuracy (%)",
        title="digits 64-512-512-10: size vs accuracy per recipe",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
