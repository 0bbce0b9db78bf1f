#!/usr/bin/env python3
"""`make demo`: the main job end to end on a built-in model.

Makes VGG16-shaped weights (He-init Gaussian, fixed seed; nothing is downloaded), packs them
with the `mobile` preset (first FC layer 4-bit k-means, other FC layers 8-bit k-means,
everything else fp16), inspects, verifies, unpacks, and prints the size table. Then publishes
the packed file as CDN shards, serves them from a local nginx, and runs a numpy VGG16 forward
pass streaming the weights over HTTP, printing bytes fetched and peak memory next to float32.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import kformat
from kformat.summary import format_table, human_bytes
from kformat.synthetic import small_vgg_weights, vgg16_weights

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tools"))
from local_nginx import LocalNginx, NginxUnavailable  # noqa: E402


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
        (
            10
            * np.log10(
                np.sum(weights[n].astype(np.float64) ** 2)
                / max(np.sum((weights[n] - restored[n]) ** 2.0), 1e-300)
            ),
            n,
        )
        for n in weights
        if weights[n].ndim == 2
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
    streamed = stream_over_http(out, source)
    step(
        "8. what quantization costs in accuracy: examples/digits/digits.py (a trained 64-512-512-10 network)"
    )
    digits = subprocess.run(
        [sys.executable, str(HERE / "digits" / "digits.py"), "--out", str(out / "digits")]
    )
    step(
        "9. a second real model: examples/langid/langid_eval.py (py3langid's shipped model on Django's"
        " translations)"
    )
    langid = subprocess.run(
        [sys.executable, str(HERE / "langid" / "langid_eval.py"), "--out", str(out / "langid")]
    )
    return 0 if not problems and streamed and digits.returncode == 0 and langid.returncode == 0 else 1


def run_json(*args: str) -> dict:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def stream_over_http(out: Path, source: Path) -> bool:
    site = out / "www"
    step(f"6. kformat publish {out / 'vgg16.kf'} {site / 'vgg16'}  (the same blobs as CDN shards)")
    kformat.pack(str(out / "vgg16.kf"), site / "vgg16", layout="sharded", shard_size=16 << 20)
    shards = sorted((site / "vgg16" / "shards").iterdir())
    print(f"{len(shards)} shards, e.g. {shards[0].name}; served with examples/nginx/kformat-locations.conf")

    step("7. stream a numpy VGG16 forward pass over HTTP from a local nginx")
    try:
        server = LocalNginx(site).start()
    except NginxUnavailable as exc:
        print(f"skipped: {exc}")
        return True
    try:
        url = server.url("vgg16/")
        print(f"python examples/stream_inference.py {url}")
        remote = run_json(str(HERE / "stream_inference.py"), url, "--json")
        sent = sum(e.body_bytes for e in server.requests_since(0) if e.uri.startswith("/vgg16/"))
    finally:
        server.stop()
    local = run_json(str(HERE / "stream_inference.py"), str(out / "vgg16.kf"), "--json")
    eager = run_json(
        str(HERE.parent / "tools" / "bench" / "peak_memory.py"),
        "--child",
        "a",
        "--npz",
        str(source),
        "--url",
        "-",
        "--logits",
        str(out / "logits-float32.npy"),
    )
    f32 = remote["float32_bytes"]
    print(
        f"nginx sent {sent:,} body bytes in {remote['requests']} requests"
        f" ({sent / f32:.1%} of the float32 weights); top-5 classes {remote['top5']}"
    )
    print(
        f"\n{'forward pass':36s} {'fetched MiB':>12s} {'peak RSS MiB':>13s} {'vs float32':>11s}"
        f" {'seconds':>8s}"
    )
    rows = [
        ("float32 .npz, loaded eagerly", None, eager["peak_rss"], eager["total_s"]),
        ("kformat, streamed from a file", local["bytes_fetched"], local["peak_rss"], local["seconds"]),
        ("kformat, streamed over HTTP", remote["bytes_fetched"], remote["peak_rss"], remote["seconds"]),
    ]
    for label, fetched, peak, seconds in rows:
        got = f"{fetched / 2**20:12.1f}" if fetched is not None else f"{f32 / 2**20:12.1f}"
        print(f"{label:36s} {got} {peak / 2**20:13.1f} {peak / eager['peak_rss']:10.2f}x {seconds:8.2f}")
    same = remote["top5"] == local["top5"]
    print(f"streamed over HTTP and from the file: {'same' if same else 'DIFFERENT'} predictions")
    return same


if __name__ == "__main__":
    raise SystemExit(main())
