#!/usr/bin/env python3
"""Peak memory of a PyTorch forward pass on an FC-heavy model: float32 vs kformat.

The model is VGG16's classifier head (25088 -> 4096 -> 4096 -> 1000, 123.6M parameters,
He-init, seed 0), run on a batch of 8 (`--batch N`; a first forward, then the best of 5 more). Each
variant runs in a fresh process, builds the module on the meta device (so no weights exist
before loading) and reports the peak RSS added on top of the interpreter with torch imported:

  (a) float32: torch.load of a .pt state dict, load_state_dict(assign=True)
  (b) kformat.torch.load_state_dict from the `mobile` .kf (float32 weights, filled tile by tile)
  (c) kformat.torch.load_quantized: Linear layers keep codes + codebook, dequantized per band

Outputs of (c) are checked against (b) (same quantized weights) within 1e-4 relative. Every
variant runs on one torch thread, or on `--threads N` (0: torch's default, every core); a
QuantizedLinear dequantizes its bands on as many threads as torch may use.

    python tools/bench/torch_memory.py [--out bench-out] [--threads N] [--batch N]

Prints a table and writes bench-out/torch_memory.json (torch_memory_threadsN.json with
--threads N other than 1, _batchN before .json with --batch N other than 8). At batch 1 a
float32 layer is a matrix-vector product that streams its weights from memory, the hardest
case for a layer that dequantizes its own.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO / "examples"))
from procmem import peak_rss_bytes  # noqa: E402

VARIANTS = {
    "a": "float32 state dict (torch.load)",
    "b": "kformat load_state_dict (float32)",
    "c": "kformat load_quantized (codes)",
}
SHAPES = [(4096, 25088), (4096, 4096), (1000, 4096)]
BATCH = 8
FORWARDS = 5  # timed after the first (which also pays for first touches); the best counts
TOLERANCE = 1e-4


def build(torch):
    layers = []
    for k, (out, inp) in enumerate(SHAPES):
        layers.append(torch.nn.Linear(inp, out))
        if k + 1 < len(SHAPES):
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).eval()


def run_child(variant: str, pt: str, kf: str, out: str, threads: int = 1, batch: int = BATCH) -> dict:
    import torch

    import kformat.torch as kt

    if threads > 0:
        torch.set_num_threads(threads)
    base = peak_rss_bytes()
    start = time.perf_counter()
    with torch.device("meta"):
        model = build(torch)
    if variant == "a":
        model.load_state_dict(torch.load(pt, weights_only=True), assign=True)
    elif variant == "b":
        kt.load_state_dict(model, kf)
    else:
        kt.load_quantized(model, kf)
    loaded = time.perf_counter() - start
    x = torch.from_numpy(
        __import__("numpy").random.default_rng(1).standard_normal((batch, SHAPES[0][1]), dtype="float32")
    )
    times = []
    with torch.no_grad():
        for _ in range(1 + FORWARDS):
            t0 = time.perf_counter()
            y = model(x)
            times.append(time.perf_counter() - t0)
    torch.save(y, out)
    return {
        "base_rss": base,
        "peak_rss": peak_rss_bytes(),
        "load_s": loaded,
        "first_forward_s": times[0],
        "forward_s": min(times[1:]),
    }


def threads_label(threads: int, torch) -> str:
    return "one torch thread" if threads == 1 else f"{threads or torch.get_num_threads()} torch threads"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="bench-out")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for every variant (QuantizedLinear dequantizes on as many); 0: torch's"
        " default, every core (default 1)",
    )
    parser.add_argument("--batch", type=int, default=BATCH, help=f"rows of the input (default {BATCH})")
    parser.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--pt", help=argparse.SUPPRESS)
    parser.add_argument("--kf", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child, args.pt, args.kf, args.result, args.threads, args.batch)))
        return 0

    import torch

    import kformat.torch as kt

    workdir = Path(args.out)
    workdir.mkdir(parents=True, exist_ok=True)
    pt, kf = workdir / "fc_head.pt", workdir / "fc_head-mobile.kf"
    if not pt.exists() or not kf.exists():
        torch.manual_seed(0)
        model = build(torch)
        with torch.no_grad():
            for layer in model:
                if isinstance(layer, torch.nn.Linear):
                    torch.nn.init.kaiming_normal_(layer.weight)
        torch.save(model.state_dict(), pt)
        print("packing the FC head with the mobile preset ...", flush=True)
        kt.save(model, kf, recipe="mobile")
        del model
    params = sum(o * i + o for o, i in SHAPES)
    rows = []
    outputs = {}
    for variant, what in VARIANTS.items():
        print(f"running ({variant}) {what} ...", flush=True)
        result = workdir / f"torch-out-{variant}.pt"
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                variant,
                "--pt",
                str(pt),
                "--kf",
                str(kf),
                "--result",
                str(result),
                "--threads",
                str(args.threads),
                "--batch",
                str(args.batch),
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise SystemExit(f"variant {variant} failed:\n{done.stderr}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        outputs[variant] = torch.load(result)
        r.update(variant=variant, what=what, added_mib=(r["peak_rss"] - r["base_rss"]) / 2**20)
        rows.append(r)
    base = rows[0]["added_mib"]
    ref = outputs["b"]
    for r in rows:
        r["ratio_to_a"] = r["added_mib"] / base
        r["forward_ratio_to_a"] = r["forward_s"] / rows[0]["forward_s"]
        r["max_rel_diff_vs_b"] = float((outputs[r["variant"]] - ref).abs().max() / ref.abs().max())
    print(
        f"\nFC head {SHAPES}: {params:,} parameters, float32 {params * 4 / 2**20:.1f} MiB, kformat"
        f" {kf.stat().st_size / 2**20:.1f} MiB; batch {args.batch}, {threads_label(args.threads, torch)}"
    )
    print(
        f"{'variant':40s} {'added peak MiB':>15s} {'/ (a)':>7s} {'load s':>7s} {'1st fwd s':>10s}"
        f" {'forward s':>10s} {'/ (a)':>7s} {'rel diff vs (b)':>16s}"
    )
    for r in rows:
        print(
            f"({r['variant']}) {r['what']:36s} {r['added_mib']:15.1f} {r['ratio_to_a']:7.3f}"
            f" {r['load_s']:7.2f}"
            f" {r['first_forward_s']:10.3f} {r['forward_s']:10.3f} {r['forward_ratio_to_a']:7.2f}"
            f" {r['max_rel_diff_vs_b']:16.2e}"
        )
    ok = rows[2]["max_rel_diff_vs_b"] <= TOLERANCE
    print(f"quantized-layer outputs within {TOLERANCE:g} of the dequantized model: {'yes' if ok else 'NO'}")
    report = {
        "benchmark": "torch_memory",
        "shapes": SHAPES,
        "batch": args.batch,
        "torch_threads": args.threads or torch.get_num_threads(),
        "parameters": params,
        "kformat_bytes": kf.stat().st_size,
        "variants": rows,
        "tolerance": TOLERANCE,
        "agree": ok,
        "method": "fresh process per variant; added peak = VmHWM at the end minus VmHWM after importing"
        " torch",
        "machine": {"python": platform.python_version(), "torch": torch.__version__},
    }
    name = "torch_memory" + ("" if args.threads == 1 else f"_threads{args.threads}")
    name += ("" if args.batch == BATCH else f"_batch{args.batch}") + ".json"
    (workdir / name).write_text(json.dumps(report, indent=2))
    print(f"\nwrote {workdir / name}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
