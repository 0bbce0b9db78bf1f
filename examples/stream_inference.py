#!/usr/bin/env python3
"""Run a VGG16 in plain numpy with its weights streamed from a kformat model, local or remote.

    python examples/stream_inference.py demo-out/vgg16.kf                  # a local file
    python examples/stream_inference.py http://127.0.0.1:8080/vgg16/       # a published directory
    python examples/stream_inference.py 'simplecache::https://host/vgg16.kf'  # servers without Range

Opening reads the header and manifest only. The layers then arrive one after the other
(`model.stream`, the next layer fetched while the current one computes), and each weight is
applied with `LazyTensor.matmul`: tile by tile, never the whole float32 matrix. At the end it
prints the bytes fetched and this process's peak memory next to the float32 size of the weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy_vgg  # noqa: E402
from procmem import peak_rss_bytes  # noqa: E402

import kformat  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="a .kf file or sharded directory: a path or any fsspec URL")
    parser.add_argument("--size", type=int, default=64, help="input image side in pixels (default 64)")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    args = parser.parse_args()

    start = time.perf_counter()
    with kformat.open(args.model) as model:
        opened = model.bytes_read
        layers = numpy_vgg.plan(model)
        names = [layer.name for layer in layers]
        float32_bytes = sum(t.nbytes for t in model.values())
        timings = []

        def on_layer(k, layer):
            timings.append((layer.name, time.perf_counter() - start, model.bytes_read))
            if not args.json:
                t = model[layer.name]
                print(
                    f"  {layer.name:24s} {str(t.shape):22s} {t.rule:22s} fetched"
                    f" {model.bytes_read / 2**20:7.2f} MiB"
                    f"  at {timings[-1][1]:.2f}s",
                    flush=True,
                )

        if not args.json:
            print(f"opened {model.source}: {len(model)} tensors, read {opened:,} bytes (header and manifest)")
        logits = numpy_vgg.forward(
            numpy_vgg.test_image(args.size), model.stream(names), lambda n: model[n].numpy(), layers, on_layer
        )
        fetched, requests = model.bytes_read, model.requests
    seconds = time.perf_counter() - start
    top = np.argsort(logits)[::-1][:5]
    result = {
        "model": args.model,
        "seconds": seconds,
        "bytes_fetched": fetched,
        "requests": requests,
        "float32_bytes": float32_bytes,
        "peak_rss": peak_rss_bytes(),
        "top5": top.tolist(),
        "logits": logits.tolist(),
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"top-5 classes {top.tolist()} in {seconds:.2f}s")
    print(
        f"fetched {fetched / 2**20:.1f} MiB in {requests} requests; weights as float32 would be"
        f" {float32_bytes / 2**20:.1f} MiB"
    )
    print(f"peak memory of this process: {result['peak_rss'] / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
