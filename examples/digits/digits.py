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
import json
import sys
from pathlib import Path

import numpy as np

import kformat
from kformat.allocate import container_size

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
        torch.nn.Linear(64, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10)
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo-out/digits", help="working directory (default demo-out/digits)")
    parser.add_argument("--epochs", type=int, default=40, help="training epochs (default 40)")
    parser.add_argument("--target-bits", type=float, nargs="+", default=[2.0, 3.0],
                        help="bit allocation targets for the 'allocated' rows, bits per parameter (default 2 3)")
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
    print(f"digits: {len(x_train)} train / {len(x_test)} test images; 64-512-512-10 network, {params:,} parameters;"
          f" float32 test accuracy {f32_acc:.2%}")

    rows = [{"recipe": "float32", "bytes": f32_bytes, "ratio": 1.0, "accuracy": f32_acc, "agreement": 1.0}]
    recipes = list(RECIPES) + [(f"allocated, {bits:g} bits/weight", "fp16", bits) for bits in args.target_bits]
    for label, recipe, rules in recipes:
        path = out / f"digits-{len(rows)}.kf"
        if label.startswith("allocated"):
            kformat.pack(str(source), path, recipe, target_bits=rules)
        else:
            kformat.pack(str(source), path, recipe, rules=rules)
        restored = kformat.load_all(str(path))
        predicted = logits(restored, x_test).argmax(1)
        size = container_size(path)
        rows.append({"recipe": label, "bytes": size, "ratio": f32_bytes / size,
                     "accuracy": float((predicted == y_test).mean()),
                     "agreement": float((predicted == reference).mean()),
                     "rules": sorted({t.rule for t in kformat.open(str(path)).manifest.tensors})})
    print(f"\n{'recipe':34s} {'bytes':>9s} {'x smaller':>9s} {'top-1':>7s} {'vs float32':>10s} {'agrees':>7s}")
    for r in rows:
        r["change"] = r["accuracy"] - f32_acc
        print(f"{r['recipe']:34s} {r['bytes']:9,d} {r['ratio']:9.2f} {r['accuracy']:7.2%} {r['change'] * 100:+9.2f}pp"
              f" {r['agreement']:7.2%}")
    (out / "digits.json").write_text(json.dumps({"test_images": len(x_test), "parameters": params, "rows": rows}, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"\nwrote {out / 'digits.json'} (install the `plot` extra for the plot)")
        return 0
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = "osD^v<>phX*"
    for k, r in enumerate(rows):  # points can coincide: a legend, not labels on the points
        ax.scatter(r["bytes"] / 1024, r["accuracy"] * 100, s=40, marker=markers[k % len(markers)], alpha=0.8,
                   label=f"{r['recipe']} ({r['ratio']:.1f}x)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_xscale("log")
    ax.set_xlabel("container size (KiB, log scale)")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title("digits 64-512-512-10: size vs accuracy per recipe")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "digits.png", dpi=120)
    print(f"\nwrote {out / 'digits.json'} and {out / 'digits.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
