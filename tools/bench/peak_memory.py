#!/usr/bin/env python3
"""Peak memory of a real numpy VGG16 forward pass: float32 eager vs kformat eager vs streamed.

The weights are the size benchmark's (VGG16 shapes, He init, seed 0). The forward pass is
examples/numpy_vgg.py: im2col convolutions on a 64x64 input, adaptive average pooling to 7x7,
the FC head. Each variant runs in its own process and reports its peak RSS (ru_maxrss):

  (a) float32 weights loaded eagerly from .npz
  (b) the `mobile` kformat file, every weight dequantized eagerly (kformat.load_all)
  (c) the same file streamed: model.stream() + LazyTensor.matmul, tile by tile
  (d) as (c), from a local nginx over HTTP (skipped without nginx)

Reported: peak RSS above a bare interpreter, the ratio to (a), time to the first layer's
output, the whole pass, bytes read, and the logits' agreement: (c) and (d) against (b) must
agree within 1e-4 relative. Then the dequantization throughput (float32 MB/s produced from
the page-cached file, best of 3).

    python tools/bench/peak_memory.py [--out bench-out] [--small]

Prints a table and writes bench-out/peak_memory.json. One run on a shared machine: compare the
ratios within it, not absolute figures across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path[:0] = [str(REPO / "examples"), str(REPO / "tools")]
from procmem import peak_rss_bytes  # noqa: E402

VARIANTS = {
    "a": "float32 .npz, eager",
    "b": "kformat mobile, eager dequantize",
    "c": "kformat mobile, streamed matmul",
    "d": "kformat mobile, streamed over HTTP",
}
TOLERANCE = 1e-4


# -- one variant, in a child process ------------------------------------------------------------
def run_variant(variant: str, npz: str, model_url: str, logits_out: str) -> dict:
    """Runs in the child: load weights as the variant says, run the forward pass, report."""
    import numpy as np

    import numpy_vgg

    start = time.perf_counter()
    first = {}

    def on_layer(k, layer):
        if k == 0:
            first["seconds"] = time.perf_counter() - start

    image = numpy_vgg.test_image()
    bytes_read = None
    if variant == "a":
        with np.load(npz) as f:
            arrays = {name: f[name] for name in f.files}
        layers = numpy_vgg.plan(arrays)
        logits = numpy_vgg.forward(
            image,
            numpy_vgg.eager_weights(arrays, [layer.name for layer in layers]),
            arrays.__getitem__,
            layers,
            on_layer,
        )
    elif variant == "b":
        import kformat

        arrays = kformat.load_all(model_url)
        layers = numpy_vgg.plan(arrays)
        logits = numpy_vgg.forward(
            image,
            numpy_vgg.eager_weights(arrays, [layer.name for layer in layers]),
            arrays.__getitem__,
            layers,
            on_layer,
        )
    else:
        import kformat

        with kformat.open(model_url) as model:
            layers = numpy_vgg.plan(model)
            logits = numpy_vgg.forward(
                image,
                model.stream([layer.name for layer in layers]),
                lambda name: model[name].numpy(),
                layers,
                on_layer,
            )
            bytes_read = model.bytes_read
    total = time.perf_counter() - start
    np.save(logits_out, logits)
    return {
        "first_layer_s": first["seconds"],
        "total_s": total,
        "peak_rss": peak_rss_bytes(),
        "bytes_read": bytes_read,
    }


def child(variant: str, npz: Path, url: str, logits: Path) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            variant,
            "--npz",
            str(npz),
            "--url",
            url,
            "--logits",
            str(logits),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"variant {variant} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bare_interpreter_rss() -> int:
    """Peak RSS of an interpreter that imports nothing but this script's own imports."""
    out = subprocess.run([sys.executable, __file__, "--bare"], capture_output=True, text=True, check=True)
    return int(out.stdout)


# -- the parent ------------------------------------------------------------------------------------
def prepare(workdir: Path, small: bool) -> tuple[Path, Path, int]:
    """The size benchmark's weights as .npz and packed with `mobile` (cached between runs)."""
    import numpy as np

    import kformat
    from kformat.synthetic import small_vgg_weights, vgg16_weights

    tag = "small-vgg16" if small else "vgg16"
    npz, kf = workdir / f"{tag}.npz", workdir / f"{tag}-mobile.kf"
    weights = None
    if not npz.exists():
        weights = small_vgg_weights() if small else vgg16_weights()
        np.savez(npz, **weights)
    if not kf.exists() or kf.stat().st_mtime < npz.stat().st_mtime:
        print(f"packing {npz} with the mobile preset ...", flush=True)
        kformat.pack(str(npz), kf, "mobile")
    with np.load(npz) as f:
        params = sum(int(np.prod(f[n].shape)) for n in f.files)
    return npz, kf, params


def dequant_throughput(kf: Path, repeats: int = 3) -> dict:
    """float32 MB/s of numpy() over every lossy tensor, file page-cached (best of `repeats`)."""
    import kformat

    best = None
    produced = 0
    for _ in range(repeats):
        with kformat.open(str(kf)) as model:
            produced = 0
            start = time.perf_counter()
            for name, tensor in model.stream():
                if tensor.method != "raw":
                    produced += tensor.numpy().nbytes
            seconds = time.perf_counter() - start
        best = seconds if best is None else min(best, seconds)
    return {"float32_bytes": produced, "seconds": best, "mb_per_s": produced / best / 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="bench-out", help="directory for the JSON and the weight files")
    parser.add_argument("--small", action="store_true", help="VGG16 with widths / 8 (a quick smoke run)")
    parser.add_argument(
        "--no-http", action="store_true", help="skip variant (d) even when nginx is installed"
    )
    parser.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--npz", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--logits", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        print(peak_rss_bytes())
        return 0
    if args.child:
        print(json.dumps(run_variant(args.child, args.npz, args.url, args.logits)))
        return 0

    import numpy as np

    workdir = Path(args.out)
    workdir.mkdir(parents=True, exist_ok=True)
    npz, kf, params = prepare(workdir, args.small)
    bare = bare_interpreter_rss()
    results: dict[str, dict] = {}
    urls = {"a": str(npz), "b": str(kf), "c": str(kf)}
    server = None
    if not args.no_http:
        from local_nginx import LocalNginx, NginxUnavailable

        try:
            server = LocalNginx(kf.parent.resolve()).start()
            urls["d"] = server.url(kf.name)
        except NginxUnavailable as exc:
            print(f"skipping (d): {exc}")
    try:
        for variant, url in urls.items():
            print(f"running ({variant}) {VARIANTS[variant]} ...", flush=True)
            logits = workdir / f"logits-{variant}.npy"
            results[variant] = child(variant, npz, url, logits)
            results[variant]["logits"] = np.load(logits)
            if variant == "d" and server is not None:
                results[variant]["nginx_body_bytes"] = sum(
                    e.body_bytes for e in server.requests_since(0) if e.uri.endswith(kf.name)
                )
    finally:
        if server is not None:
            server.stop()

    reference = results["b"]["logits"]
    scale = float(np.abs(reference).max())
    base = results["a"]["peak_rss"] - bare
    rows = []
    for variant, r in results.items():
        above = r["peak_rss"] - bare
        rel = float(np.abs(r["logits"] - reference).max()) / scale
        rows.append(
            {
                "variant": variant,
                "what": VARIANTS[variant],
                "peak_rss_mib": r["peak_rss"] / 2**20,
                "above_bare_mib": above / 2**20,
                "ratio_to_a": above / base,
                "first_layer_s": r["first_layer_s"],
                "total_s": r["total_s"],
                "bytes_read": r["bytes_read"],
                "nginx_body_bytes": r.get("nginx_body_bytes"),
                "max_rel_diff_vs_b": rel,
                "top1": int(np.argmax(r["logits"])),
            }
        )
    throughput = dequant_throughput(kf)

    print(
        f"\nVGG16{' (small)' if args.small else ''}: {params:,} parameters, float32"
        f" {params * 4 / 2**20:.1f} MiB,"
        f" kformat mobile {kf.stat().st_size / 2**20:.1f} MiB; bare interpreter {bare / 2**20:.1f} MiB"
    )
    print(
        f"{'':2s}{'variant':36s} {'peak MiB':>9s} {'above bare':>11s} {'/ (a)':>7s} {'1st layer s':>12s}"
        f" {'total s':>8s} {'read MiB':>9s} {'rel diff vs (b)':>16s}"
    )
    for row in rows:
        read = "" if row["bytes_read"] is None else f"{row['bytes_read'] / 2**20:9.1f}"
        print(
            f"({row['variant']}) {row['what']:36s} {row['peak_rss_mib']:9.1f} {row['above_bare_mib']:11.1f}"
            f" {row['ratio_to_a']:7.3f} {row['first_layer_s']:12.3f} {row['total_s']:8.2f} {read:>9s}"
            f" {row['max_rel_diff_vs_b']:16.2e}"
        )
    print(
        f"dequantization: {throughput['float32_bytes'] / 2**20:.0f} MiB of float32 in"
        f" {throughput['seconds']:.2f} s"
        f" = {throughput['mb_per_s']:.0f} MB/s (page-cached file, best of 3)"
    )
    streamed = [r for r in rows if r["variant"] in ("c", "d")]
    ok_memory = all(r["ratio_to_a"] <= 0.25 for r in streamed)
    ok_logits = all(r["max_rel_diff_vs_b"] <= TOLERANCE for r in streamed)
    print(
        f"streamed peak <= 0.25 x float32 eager: {'yes' if ok_memory else 'NO'};"
        f" streamed logits within {TOLERANCE:g} of eager kformat: {'yes' if ok_logits else 'NO'}"
    )

    report = {
        "benchmark": "peak_memory",
        "small": args.small,
        "parameters": params,
        "float32_bytes": params * 4,
        "kformat_bytes": kf.stat().st_size,
        "bare_interpreter_rss": bare,
        "variants": rows,
        "dequantization": throughput,
        "tolerance": TOLERANCE,
        "streamed_within_quarter": ok_memory,
        "streamed_logits_agree": ok_logits,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "method": "each variant in a fresh process; peak = VmHWM at the end; above bare = minus the VmHWM of"
        " this script started with --bare (stdlib imports only)",
    }
    (workdir / "peak_memory.json").write_text(json.dumps(report, indent=2))
    print(f"\nwrote {workdir / 'peak_memory.json'}")
    return 0 if ok_memory and ok_logits else 1


if __name__ == "__main__":
    raise SystemExit(main())
