#!/usr/bin/env python3
"""Accuracy per byte on a CNN with depthwise separable convolutions (MobileNet-style),
trained here, offline, on scikit-learn's bundled handwritten digits (1,797 8x8 images,
upsampled to 32x32; 1,300 to train, 497 held out), a few seconds on a CPU.

For each recipe the trained state dict is packed, loaded back, and the held-out images
classified; the score is the share of images whose top-1 prediction matches the float
model's, plus the accuracy against the labels. Bit allocation runs at 5 and 4 bits per
weight, with and without importance from calibration images (kformat.torch.calibrate).
Beside top-1 (497 images: one image is 0.2 points) each row reports the relative error of
the logits, ||logits' - logits|| / ||logits||, which resolves differences top-1 cannot.

    python tools/bench/accuracy_depthwise.py [--out bench-out] [--epochs 15]

Prints a table and writes bench-out/accuracy_depthwise.json and, with the `plot` extra, a
size-versus-accuracy plot accuracy_depthwise.png.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


import kformat

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent / "examples"))
from accuracy_table import write_report  # noqa: E402

RECIPES = [
    ("fp16", {"recipe": "fp16"}),
    ("int8 (linear 8-bit per row)", {"recipe": "int8"}),
    ("kmeans8", {"recipe": "kmeans8"}),
    ("q8", {"recipe": "q8"}),
    ("kmeans4", {"recipe": "kmeans4"}),
    ("kmeans:4,group=64", {"recipe": "fp16", "rules": ["*=kmeans:4,group=64"]}),
    ("kmeans:4,row", {"recipe": "fp16", "rules": ["*=kmeans:4,row"]}),
    ("kmeans:4,scale=row", {"recipe": "fp16", "rules": ["*=kmeans:4,scale=row"]}),
    ("q4", {"recipe": "q4"}),
    ("q4 +importance", {"recipe": "q4", "importance": True}),
    *(
        (f"allocated {bits} b/w{' +importance' if calibrated else ''}", options)
        for bits in (6.0, 5.5, 5.0, 4.5)
        for calibrated in (False, True)
        for options in [{"recipe": "fp16", "target_bits": bits, "importance": calibrated}]
    ),
]


def data(torch):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    images = torch.nn.functional.interpolate(images, size=32, mode="bilinear", align_corners=False)
    labels = torch.tensor(digits.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train, test = order[:1300], order[1300:]
    return images[train], labels[train], images[test], labels[test]


def network(torch):
    nn = torch.nn

    def separable(cin, cout, stride):
        return [
            nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),  # depthwise
            nn.BatchNorm2d(cin),
            nn.ReLU(),
            nn.Conv2d(cin, cout, 1, bias=False),  # pointwise
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        ]

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, 1, 1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        *separable(32, 64, 1),
        *separable(64, 128, 2),
        *separable(128, 256, 1),
        *separable(256, 256, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(256, 10),
    )


def train(torch, model, x, y, epochs: int) -> None:
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y))
        for start in range(0, len(y), 64):
            batch = order[start : start + 64]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
    model.eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench-out")
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    import torch

    import kformat.torch as kt

    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = data(torch)
    model = network(torch)
    start = time.perf_counter()
    train(torch, model, x_train, y_train, args.epochs)
    trained = time.perf_counter() - start
    with torch.no_grad():
        logits = model(x_test)
        reference = logits.argmax(1)
    float_accuracy = float((reference == y_test).float().mean())
    params = sum(p.numel() for p in model.parameters())
    print(f"trained in {trained:.1f}s: {params:,} parameters, float accuracy {100 * float_accuracy:.1f}%")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        importance = Path(tmp) / "importance.npz"
        kt.calibrate(model, [x_train[i : i + 100] for i in range(0, 300, 100)], importance)
        for label, options in RECIPES:
            out = Path(tmp) / "m.kf"
            began = time.perf_counter()
            try:
                report = kformat.pack(
                    kt.state_dict_arrays(model),
                    out,
                    options["recipe"],
                    rules=options.get("rules", ()),
                    target_bits=options.get("target_bits"),
                    importance=importance if options.get("importance") else None,
                )
            except kformat.KFormatError as exc:
                print(f"{label:30s} {exc}")
                continue
            seconds = time.perf_counter() - began
            fresh = network(torch)
            kt.load_state_dict(fresh, str(out))
            fresh.eval()
            with torch.no_grad():
                output = fresh(x_test)
                predicted = output.argmax(1)
            weights = sum(a.size for n, a in kt.state_dict_arrays(model).items() if n.endswith("weight"))
            row = {
                "recipe": label,
                "bytes": report.bytes,
                "bits_per_weight": 8 * report.bytes / params,
                "top1_agreement": float((predicted == reference).float().mean()),
                "accuracy": float((predicted == y_test).float().mean()),
                "logits_error": float((output - logits).norm() / logits.norm()),
                "pack_seconds": seconds,
                "weights": weights,
            }
            rows.append(row)
            print(
                f"{label:30s} {row['bytes'] / 1024:8.1f} KiB {row['bits_per_weight']:6.2f} b/w"
                f"  top-1 kept {100 * row['top1_agreement']:5.1f}%  accuracy {100 * row['accuracy']:5.1f}%"
                f"  logits error {row['logits_error']:.3f}"
                f"  pack {seconds:4.1f}s",
                flush=True,
            )
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for r in rows:  # what the size-versus-accuracy plot reads: top-1 predictions kept
        r.update(accuracy=r["top1_agreement"], ratio=4 * params / r["bytes"])
    write_report(
        out_dir,
        "accuracy_depthwise",
        {"params": params, "float_accuracy": float_accuracy, "test_images": len(y_test)},
        rows,
        size_unit="KiB",
        ylabel="top-1 predictions kept (%)",
        title="depthwise separable CNN on digits: size vs predictions kept",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
