#!/usr/bin/env python3
"""Distributed packing on a local Dask cluster: throughput per worker and bytes moved.

Starts `dask scheduler` and `dask worker` processes (one thread each) on 127.0.0.1, packs the
VGG16-shaped model (an .npz on disk, as a shared filesystem would hold it) with `--scheduler`,
and compares with a local pack (--jobs 1) of the same file: seconds, float32 MB/s per worker,
and the bytes that moved (workers read the source; parts go to staging and back once).

    python tools/bench/dask_pack.py [--out bench-out] [--recipe kmeans4] [--workers 2] [--small]

Prints a table and writes bench-out/dask_pack.json.
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
from kformat.synthetic import small_vgg_weights, vgg16_weights

BIN = Path(sys.executable).parent
EXTRA: list[str] = []


def start_cluster(work: Path, workers: int) -> tuple[str, list[subprocess.Popen]]:
    info = work / "scheduler.json"
    info.unlink(missing_ok=True)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    scheduler = subprocess.Popen(
        [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
         "--scheduler-file", str(info)], **quiet,
    )  # fmt: skip
    while not info.exists():
        time.sleep(0.2)
    address = json.loads(info.read_text())["address"]
    pool = subprocess.Popen(
        [str(BIN / "dask"), "worker", address, "--nworkers", str(workers), "--nthreads", "1",
         "--host", "127.0.0.1", "--no-dashboard", *EXTRA], **quiet,
    )  # fmt: skip
    from distributed import Client

    with Client(address) as client:
        client.wait_for_workers(workers, timeout=120)
    return address, [pool, scheduler]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--recipe", default="kmeans4")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    work = (args.out / "dask_pack").resolve()
    work.mkdir(parents=True, exist_ok=True)
    source = work / "model.npz"
    weights = small_vgg_weights() if args.small else vgg16_weights()
    np.savez(source, **weights)
    f32 = sum(a.size * 4 for a in weights.values())
    rows = []
    start = time.perf_counter()
    local = kformat.pack(source, work / "local.kf", args.recipe, jobs=1)
    rows.append({"variant": "local, jobs=1", "workers": 1, "seconds": time.perf_counter() - start})
    for workers in sorted({1, args.workers}):
        address, processes = start_cluster(work, workers)
        try:
            start = time.perf_counter()
            kformat.pack(source, work / "remote.kf", args.recipe, scheduler=address)
            seconds = time.perf_counter() - start
        finally:
            for p in processes:
                p.terminate()
                p.wait()
        same = (work / "remote.kf").read_bytes() == (work / "local.kf").read_bytes()
        rows.append({"variant": f"dask, {workers} worker(s)", "workers": workers, "seconds": seconds,
                     "byte_identical": same})  # fmt: skip
    base = rows[0]["seconds"]
    print(f"\n{args.recipe}: {f32 / 1e6:.0f} MB of float32 in, {local.bytes / 1e6:.1f} MB out")
    print(f"{'variant':22s} {'seconds':>8s} {'x local':>8s} {'MB/s/worker':>12s}  identical")
    for row in rows:
        row["x_local"] = base / row["seconds"]
        row["mb_per_s_per_worker"] = f32 / 1e6 / row["seconds"] / row["workers"]
        print(f"{row['variant']:22s} {row['seconds']:8.2f} {row['x_local']:8.2f} "
              f"{row['mb_per_s_per_worker']:12.1f}  {row.get('byte_identical', '-')}")  # fmt: skip
    moved = {"source_read_by_workers": source.stat().st_size, "parts_written_and_read": local.bytes}
    print(f"bytes moved: workers read {moved['source_read_by_workers'] / 1e6:.0f} MB of source; "
          f"parts {moved['parts_written_and_read'] / 1e6:.1f} MB to staging and back")  # fmt: skip
    (args.out / "dask_pack.json").write_text(
        json.dumps({"recipe": args.recipe, "rows": rows, "moved": moved}, indent=2)
    )
    return 0 if all(r.get("byte_identical", True) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
