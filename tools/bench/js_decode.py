#!/usr/bin/env python3
"""kformat.js decode throughput in Node and in Chromium against the Python reader, one model.

The model is the VGG16-shaped one packed with `mobile` (k-means 4- and 8-bit zstd planes,
fp16 zstd planes), or with --small the 1/8-width one. Each reader decodes every tensor to
float32 (best of --repeat runs): Python `kformat.load_all` from the page cache, Node through
kformat.js from the same file, Chromium through kformat.js from a local nginx (playwright-core
drives Debian's Chromium). Prints float32 MB/s and the ratio to Python; writes
bench-out/js_decode.json.

    python tools/bench/js_decode.py [--out bench-out] [--repeat 3] [--small]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO / "examples" / "web"))

import kformat  # noqa: E402
from kformat.synthetic import small_vgg_weights, vgg16_weights  # noqa: E402
from local_nginx import LocalNginx  # noqa: E402
from reader_site import copy_reader  # noqa: E402

TOOL = REPO / "js" / "tools" / "bench_decode.mjs"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    site = (args.out / "js_decode").resolve()
    if site.exists():
        shutil.rmtree(site)
    site.mkdir(parents=True)
    model = site / "mobile.kf"
    kformat.pack(small_vgg_weights() if args.small else vgg16_weights(), model, "mobile")
    (site / "index.html").write_text(f"<!doctype html>{copy_reader(site)}<title>bench</title>")
    for path in [site, *site.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    rows = []
    best = None
    for _ in range(args.repeat):
        start = time.perf_counter()
        arrays = kformat.load_all(str(model))
        best = min(best or 1e9, time.perf_counter() - start)
    produced = sum(a.size * 4 for a in arrays.values())
    rows.append({"reader": "Python kformat.load_all", "seconds": best, "float32_bytes": produced})
    node = shutil.which("node")
    result = subprocess.run(
        [node, str(TOOL), str(model), str(args.repeat)], capture_output=True, text=True, check=True
    )
    rows.append({"reader": "kformat.js, Node (file)", **json.loads(result.stdout)})
    chromium = shutil.which("chromium")
    if chromium:
        with LocalNginx(site) as server:
            result = subprocess.run(
                [
                    node,
                    str(TOOL),
                    server.url("mobile.kf"),
                    str(args.repeat),
                    "--chromium",
                    server.url(""),
                    chromium,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
        rows.append({"reader": "kformat.js, Chromium (local nginx)", **json.loads(result.stdout)})
    base = rows[0]["seconds"]
    print(f"\nmodel: {model.stat().st_size / 2**20:.1f} MiB mobile .kf -> {produced / 2**20:.0f} MiB float32")
    print(f"{'reader':38s} {'seconds':>8s} {'MB/s f32':>9s} {'x Python':>9s}")
    for row in rows:
        row["mb_per_s"] = row["float32_bytes"] / row["seconds"] / 1e6
        row["x_python"] = base / row["seconds"]
        print(f"{row['reader']:38s} {row['seconds']:8.2f} {row['mb_per_s']:9.0f} {row['x_python']:9.2f}")
    (args.out / "js_decode.json").write_text(json.dumps({"rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
