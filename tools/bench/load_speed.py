#!/usr/bin/env python3
"""Full-model load speed and peak memory: kformat against safetensors, in the same run.

The model is the VGG16-shaped one of size_quality.py (138.4M parameters, He-init, seed 0).
Each variant runs in fresh processes (`--rounds`, the variants in turn), each loading the file
several times from the page cache, and reports the best seconds to turn the file into numpy
arrays, the median of the processes' first loads (an app that loads its model once), the
float32 bytes produced per second, the peak RSS added on top of the interpreter with its
imports, and the whole process's peak RSS (what `/usr/bin/time` would say):

  safetensors f32    safetensors.numpy.load_file of the float32 model
  safetensors f16    the same of the float16 model (widened to float32 by nothing: fp16 arrays)
  kformat mobile     kformat.load_all of the `mobile` .kf (float32 out; fp16 layers widened)
  kformat mobile, 1 thread   the same with one decode thread
  kformat mobile, glibc's defaults   the same with glibc's malloc thresholds as a process
                     starts with (KFORMAT_KEEP_FREED=0; kformat.heap)

    python tools/bench/load_speed.py [--out bench-out] [--repeat 3] [--rounds 3] [--small]

Prints a table and writes bench-out/load_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO / "examples"))

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[4])
from procmem import peak_rss_bytes
variant, path, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3])
if variant.startswith("safetensors"):
    from safetensors.numpy import load_file as load
else:
    import kformat
    import kformat.loading.container as container
    if variant.endswith("1"):
        container.DECODE_THREADS = 1
    load = kformat.load_all
base = peak_rss_bytes()
best = first = None
for _ in range(repeat):
    start = time.perf_counter()
    arrays = load(path)
    seconds = time.perf_counter() - start
    best = seconds if best is None else min(best, seconds)
    first = seconds if first is None else first
    produced = sum(a.size * 4 for a in arrays.values())  # as float32
    del arrays
print(json.dumps({"seconds": best, "first_seconds": first, "float32_bytes": produced,
                  "added_peak": peak_rss_bytes() - base, "process_peak": peak_rss_bytes(),
                  "import_peak": base}))
"""

VARIANTS = {
    "safetensors f32": "f32.safetensors",
    "safetensors f16": "f16.safetensors",
    "kformat mobile": "mobile.kf",
    "kformat mobile, 1 thread": "mobile.kf",
    "kformat mobile, glibc's defaults": "mobile.kf",
}


def prepare(out: Path, small: bool) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    import kformat
    from kformat.synthetic import small_vgg_weights, vgg16_weights

    tag = "small" if small else "full"
    stamp = out / f"load_speed_{tag}.ready"
    if not stamp.exists():  # the weights are fixed by their seed: written once
        weights = small_vgg_weights() if small else vgg16_weights()
        save_file(weights, str(out / "f32.safetensors"))
        save_file({k: v.astype(np.float16) for k, v in weights.items()}, str(out / "f16.safetensors"))
        for other in out.glob("load_speed_*.ready"):
            other.unlink()
        stamp.write_text("")
    # packed by this checkout every time: a .kf kept from older code (its tiles, its codecs)
    # measured that code's file, not this one's
    kformat.pack(str(out / "f32.safetensors"), out / "mobile.kf", "mobile")


def model_dir(out: Path, small: bool) -> Path:
    """bench-out/load_speed/ with the three files the load benchmarks read (the safetensors
    files made once, the .kf packed again)."""
    work = out / "load_speed"
    work.mkdir(parents=True, exist_ok=True)
    prepare(work, small)
    return work


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench-out")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="a scaled-down VGG (quick check)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="fresh processes per variant, the variants in turn: the best load of all counts, and"
        " the median of each process's first load (what an app that loads its model once at start"
        " waits; on this VM, fresh memory's page faults vary from minute to minute)",
    )
    args = parser.parse_args()
    work = model_dir(args.out, args.small)
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, file in VARIANTS.items():
            runs[name].append(_run(name, work / file, args.repeat))
    rows = []
    for name, file in VARIANTS.items():
        result = min(runs[name], key=lambda r: r["seconds"])
        result["first_seconds"] = statistics.median(r["first_seconds"] for r in runs[name])
        result["added_peak"] = max(r["added_peak"] for r in runs[name])
        result["process_peak"] = max(r["process_peak"] for r in runs[name])
        result.update(variant=name, file_bytes=(work / file).stat().st_size)
        rows.append(result)
    reference = rows[0]
    widths, digits = (9, 8, 9, 9, 8, 9, 9, 9, 9, 9), (1, 3, 2, 2, 3, 2, 1, 2, 1, 2)
    print(
        f"{'variant':33s} {'file MiB':>9s} {'seconds':>8s} {'GB/s f32':>9s} {'x st f32':>9s} {'first s':>8s}"
        f" {'x st f32':>9s} {'peak MiB':>9s} {'x st f32':>9s} {'process':>9s} {'x st f32':>9s}"
    )
    for r in rows:
        r["float32_gb_per_s"] = r["float32_bytes"] / r["seconds"] / 1e9
        r["speed_vs_safetensors_f32"] = reference["seconds"] / r["seconds"]
        r["first_speed_vs_safetensors_f32"] = reference["first_seconds"] / r["first_seconds"]
        r["peak_vs_safetensors_f32"] = r["added_peak"] / reference["added_peak"]
        r["process_peak_vs_safetensors_f32"] = r["process_peak"] / reference["process_peak"]
        cells = (
            r["file_bytes"] / 2**20,
            r["seconds"],
            r["float32_gb_per_s"],
            r["speed_vs_safetensors_f32"],
            r["first_seconds"],
            r["first_speed_vs_safetensors_f32"],
            r["added_peak"] / 2**20,
            r["peak_vs_safetensors_f32"],
            r["process_peak"] / 2**20,
            r["process_peak_vs_safetensors_f32"],
        )
        print(f"{r['variant']:33s} " + " ".join(f"{v:{w}.{d}f}" for v, w, d in zip(cells, widths, digits)))
    report = {
        "machine": platform.processor() or platform.machine(),
        "small": args.small,
        "rows": rows,
        "method": f"{args.rounds} fresh processes per variant, the variants in turn; seconds: the best of"
        f" {args.repeat} loads from the page cache in any of them; first: the median of each process's"
        " first load; added peak = peak RSS minus peak RSS after imports; process = the whole"
        " process's peak RSS, interpreter and imports included (the largest of the processes)",
    }
    (args.out / "load_speed.json").write_text(json.dumps(report, indent=2))
    return 0


def _run(name: str, path: Path, repeat: int) -> dict:
    """One fresh process loading `path` `repeat` times."""
    variant = "kformat1" if name.endswith("1 thread") else name
    env = {k: v for k, v in os.environ.items() if k != "KFORMAT_KEEP_FREED"}
    if name.endswith("glibc's defaults"):
        env["KFORMAT_KEEP_FREED"] = "0"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, variant, str(path), str(repeat), str(REPO / "examples")],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(done.stdout)


if __name__ == "__main__":
    sys.exit(main())
