#!/usr/bin/env python3
"""`make demo`: the main job end to end on a built-in model.

Makes VGG16-shaped weights (He-init Gaussian, fixed seed; nothing is downloaded), packs them
with the `mobile` preset (first FC layer 4-bit k-means, other FC layers 8-bit k-means,
everything else fp16), inspects, verifies, unpacks, and prints the size table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import kformat
from kformat.summary import format_table, human_bytes
from kformat.synthetic import small_vgg_weights, vgg16_weights


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo-out", help="working directory (default demo-out/)")
    parser.add_argument("--small", action="store_true", help="a VGG16 with every width / 8 (seconds, for CI)")
    parser.add_argument("--recipe", default="mobile", help="preset or recipe file (default mobile)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    step("1. make VGG16-shaped float32 weights (torchvision shapes, He init, seed 0)")
    weights = small_vgg_weights() if args.small else vgg16_weights()
    source = out / "vgg16.npz"
    np.savez(source, **weights)
    params = sum(a.size for a in weights.values())
    print(f"{len(weights)} tensors, {params:,} parameters, {source}: {human_bytes(source.stat().st_size)}")

    step(f"2. kformat pack {source} -o {out / 'vgg16.kf'} --recipe {args.recipe}")
    start = time.perf_counter()
    report = kformat.pack(str(source), out / "vgg16.kf", args.recipe)
    pack_seconds = time.perf_counter() - start
    print(f"packed in {pack_seconds:.1f}s")

    step(f"3. kformat inspect {out / 'vgg16.kf'}")
    summary = kformat.inspect(str(out / "vgg16.kf"))
    print(format_table(summary))

    step(f"4. kformat verify {out / 'vgg16.kf'}")
    problems = kformat.verify(str(out / "vgg16.kf"))
    print("OK: every blob's hash matches and every plane decodes" if not problems else problems)

    step(f"5. kformat unpack {out / 'vgg16.kf'} -o {out / 'vgg16-restored.npz'}")
    kformat.unpack(str(out / "vgg16.kf"), out / "vgg16-restored.npz")
    restored = np.load(out / "vgg16-restored.npz")
    worst = min(
        (10 * np.log10(np.sum(weights[n].astype(np.float64) ** 2) / max(np.sum((weights[n] - restored[n]) ** 2.0), 1e-300)), n)
        for n in weights if weights[n].ndim == 2
    )
    print(f"restored {len(restored.files)} tensors; lowest FC SQNR {worst[0]:.1f} dB ({worst[1]})")

    step("size table")
    f32 = 4 * params
    kf = summary["totals"]["container_bytes"]
    rows = [
        ("float32 weights", f32, 1.0, 32.0),
        (f"kformat ({args.recipe})", kf, f32 / kf, 8 * kf / params),
    ]
    print(f"{'':24s} {'bytes':>12s} {'size':>10s} {'x smaller':>10s} {'bits/weight':>12s}")
    for label, size, ratio, bpw in rows:
        print(f"{label:24s} {size:12,d} {human_bytes(size):>10s} {ratio:10.2f} {bpw:12.2f}")
    if report.unmatched_rules:
        print("warnings:", *report.unmatched_rules, sep="\n  ")
    return 0 if not problems else 1


if __name__ == "__main__":
    raise SystemExit(main())
