"""The accuracy table both real-data examples print: pack per recipe, predict, tabulate, plot.

    rows = evaluate(out, "digits", source, RECIPES, target_bits, f32_bytes, predict, labels, reference)
    print_table(rows, "top-1")
    write_report(out, "digits", {...}, rows, ...)

`predict(path)` returns the packed model's predictions (and a dict of extra fields for its row).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

import kformat
from kformat.packing.allocate import container_size

Recipe = tuple[str, str, list[str]]  # (label, preset, rules)


def evaluate(
    out: Path,
    stem: str,
    source: Path,
    recipes: list[Recipe],
    target_bits: list[float],
    f32_bytes: int,
    predict: Callable[[Path], tuple[np.ndarray, dict]],
    labels: np.ndarray,
    reference: np.ndarray,
) -> list[dict]:
    """Rows of the table: float32 first, then each recipe and each bit-allocation target."""
    f32_acc = float((reference == labels).mean())
    rows = [{"recipe": "float32", "bytes": f32_bytes, "ratio": 1.0, "accuracy": f32_acc, "agreement": 1.0}]
    plans = [(label, preset, {"rules": rules}) for label, preset, rules in recipes]
    plans += [(f"allocated, {bits:g} bits/weight", "fp16", {"target_bits": bits}) for bits in target_bits]
    for label, preset, how in plans:
        path = out / f"{stem}-{len(rows)}.kf"
        started = time.perf_counter()
        kformat.pack(str(source), path, preset, **how)
        packed_in = time.perf_counter() - started
        predicted, extra = predict(path)
        size = container_size(path)
        rows.append(
            {
                "recipe": label,
                "bytes": size,
                "ratio": f32_bytes / size,
                "accuracy": float((predicted == labels).mean()),
                "agreement": float((predicted == reference).mean()),
                "pack_seconds": round(packed_in, 2),
                **extra,
            }
        )
    for r in rows:
        r["change"] = r["accuracy"] - f32_acc
    return rows


def print_table(rows: list[dict], metric: str) -> None:
    width = max(len(r["recipe"]) for r in rows) + 2
    digits = max(len(f"{r['bytes']:,d}") for r in rows)
    print(
        f"\n{'recipe':{width}s} {'bytes':>{digits}s} {'x smaller':>9s} {metric:>8s} {'vs float32':>10s}"
        f" {'agrees':>7s}"
    )
    for r in rows:
        print(
            f"{r['recipe']:{width}s} {r['bytes']:{digits},d} {r['ratio']:9.2f} {r['accuracy']:8.2%}"
            f" {r['change'] * 100:+9.2f}pp {r['agreement']:7.2%}"
        )


def write_report(
    out: Path, stem: str, report: dict, rows: list[dict], *, size_unit: str, ylabel: str, title: str
) -> None:
    """STEM.json, and with matplotlib (the `plot` extra) a size-versus-accuracy plot STEM.png."""
    (out / f"{stem}.json").write_text(json.dumps({**report, "rows": rows}, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"\nwrote {out / f'{stem}.json'} (install the `plot` extra for the plot)")
        return
    scale = {"KiB": 1024, "MiB": 2**20}[size_unit]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = "osD^v<>phX*"
    for k, r in enumerate(rows):  # points can coincide: a legend, not labels on the points
        ax.scatter(
            r["bytes"] / scale,
            r["accuracy"] * 100,
            s=40,
            marker=markers[k % len(markers)],
            alpha=0.8,
            label=f"{r['recipe']} ({r['ratio']:.1f}x)",
        )
    ax.legend(fontsize=7, loc="lower right")
    ax.set_xscale("log")
    ax.set_xlabel(f"container size ({size_unit}, log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=120)
    print(f"\nwrote {out / f'{stem}.json'} and {out / f'{stem}.png'}")
