#!/usr/bin/env python3
"""Time from a URL to a model ready for its first forward pass, over a rate-limited link.

The VGG16-shaped model is served by the local nginx (examples/nginx rules) behind a small
proxy that stands for a CDN link: every byte of every connection shares one token bucket of
`--rate` MB/s, so opening more connections buys nothing. Each variant runs in a fresh process:

  safetensors f32 / f16   the whole file fetched over HTTP (fsspec ranged reads), then
                          safetensors.numpy.load of the bytes
  kformat mobile, eager   every tensor fetched and dequantized (LazyModel.read, load_all's
                          overlapped reader)
  kformat mobile, lazy    kformat.open(url) and the first layer's weights: the forward pass can
                          start while the rest streams in (cold), then the rest of the model

Each runs cold (nothing cached on this side of the link) and, with a warm cache, the way an
app's second start goes: the same URL under fsspec's `filecache::` with a cache directory
that a first run through the cache filled (its time is given too), then a fresh process timed
reading it again. Warm, the link carries nothing; the cache's bytes on disk are given.

    python tools/bench/link_speed.py [--rate 50] [--out bench-out] [--small] [--cold-only]

Prints a table and writes bench-out/link_speed.json. The proxy is Python and runs on the same
machine, so on a 2-core box it competes with the reader for CPU: kformat, which decodes while
it downloads, pays for that more than safetensors, which only copies bytes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO / "tools" / "bench"))

from local_nginx import LocalNginx  # noqa: E402
from load_speed import model_dir  # noqa: E402


class Bucket:
    """A token bucket shared by every connection: `rate` bytes per second in all."""

    def __init__(self, rate: float):
        self.rate = rate
        self.next_free = time.monotonic()
        self.lock = threading.Lock()

    def spend(self, n: int) -> None:
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_free)
            self.next_free = start + n / self.rate
            wait = self.next_free - now
        if wait > 0:
            time.sleep(wait)


def proxy(upstream: str, bucket: Bucket) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def _forward(self, method: str) -> None:
            headers = {k: v for k, v in self.headers.items() if k.lower() == "range"}
            headers["Accept-Encoding"] = "identity"  # the link carries the bytes as stored
            request = urllib.request.Request(upstream + self.path, headers=headers, method=method)
            try:
                reply = urllib.request.urlopen(request, timeout=60)
            except urllib.error.HTTPError as exc:
                reply = exc
            with reply:
                self.send_response(reply.status)
                for key in ("Content-Length", "Content-Range", "Content-Type", "Accept-Ranges"):
                    if reply.headers.get(key):
                        self.send_header(key, reply.headers[key])
                self.end_headers()
                if method == "HEAD":
                    return
                try:
                    while chunk := reply.read(64 << 10):
                        bucket.spend(len(chunk))
                        self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):  # the client had what it wanted
                    self.close_connection = True  # (fsspec's size probe reads a GET's headers only)

        def do_GET(self) -> None:
            self._forward("GET")

        def do_HEAD(self) -> None:
            self._forward("HEAD")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


CHILD = r"""
import json, sys, time
variant, url, cache = sys.argv[1], sys.argv[2], sys.argv[3]
start = time.perf_counter()
result = {}
options = {}
if cache:  # an app's local cache of what it fetched: fsspec's filecache, in `cache`
    url, options = f"filecache::{url}", {"filecache": {"cache_storage": cache}}
if variant.startswith("safetensors"):
    import fsspec
    from safetensors.numpy import load
    with fsspec.open(url, "rb", **(options or {"block_size": 16 << 20})) as f:
        data = f.read()
    arrays = load(data)
    result["bytes"] = len(data)
else:
    import kformat
    if variant.endswith("eager"):
        with kformat.open(url, **options) as model:
            arrays = dict(model.read(list(model)))  # as load_all: tensors overlap on the decode threads
            result["bytes"] = model.bytes_read
    else:
        with kformat.open(url, **options) as model:
            for i, (name, tensor) in enumerate(model.stream()):
                tensor.numpy()
                if i == 0:
                    result["first_layer_s"] = time.perf_counter() - start
            result["bytes"] = model.bytes_read
            result["requests"] = model.requests
result["seconds"] = time.perf_counter() - start
print(json.dumps(result))
"""

VARIANTS = {
    "safetensors f32": "f32.safetensors",
    "safetensors f16": "f16.safetensors",
    "kformat mobile, eager": "mobile.kf",
    "kformat mobile, lazy": "mobile.kf",
}


def run(variant: str, url: str, cache: Path | None) -> dict:
    """One fresh process reading `url` as `variant` (through `cache` when given)."""
    command = [sys.executable, "-c", CHILD, variant, url, str(cache) if cache else ""]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def cache_bytes(cache: Path) -> int:
    return sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50.0, help="link speed in MB/s (default 50)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-out")
    parser.add_argument("--small", action="store_true", help="a scaled-down VGG (quick check)")
    parser.add_argument("--cold-only", action="store_true", help="no warm-cache runs")
    args = parser.parse_args()
    work = model_dir(args.out, args.small)
    rows = []
    with LocalNginx(work) as nginx:
        server = proxy(nginx.url().rstrip("/"), Bucket(args.rate * 1e6))
        base = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            for name, file in VARIANTS.items():
                size = (work / file).stat().st_size
                cold = run(name, f"{base}/{file}", None)
                rows.append({**cold, "variant": name, "cache": "cold", "file_bytes": size})
                if args.cold_only:
                    continue
                cache = work / "cache" / name.replace(" ", "_").replace(",", "")
                shutil.rmtree(cache, ignore_errors=True)
                filling = run(name, f"{base}/{file}", cache)  # the first start, through the cache
                row = run(name, f"{base}/{file}", cache)
                row.update(variant=name, cache="warm", file_bytes=size)
                row.update(filling_s=filling["seconds"], cache_bytes=cache_bytes(cache))
                rows.append(row)
                shutil.rmtree(cache, ignore_errors=True)
        finally:
            server.shutdown()
    print(f"link: {args.rate:g} MB/s shared by all connections (nginx behind a token-bucket proxy)")
    header = f"{'variant':24s} {'cache':>5s} {'MiB read':>9s} {'ready s':>8s} {'x st f16':>9s}"
    print(header + f" {'first layer s':>14s} {'filling s':>10s} {'cache MiB':>10s}")
    for r in rows:
        f16 = next(x for x in rows if x["variant"] == "safetensors f16" and x["cache"] == r["cache"])
        r["vs_safetensors_f16"] = r["seconds"] / f16["seconds"]
        first = f"{r['first_layer_s']:14.2f}" if "first_layer_s" in r else f"{'-':>14s}"
        cells = f"{r['bytes'] / 2**20:9.1f} {r['seconds']:8.2f} {r['vs_safetensors_f16']:9.2f}"
        warm = f"{r['filling_s']:10.2f} {r['cache_bytes'] / 2**20:10.1f}" if r["cache"] == "warm" else ""
        print(f"{r['variant']:24s} {r['cache']:>5s} {cells} {first} {warm}")
    (args.out / "link_speed.json").write_text(json.dumps({"rate_mb_s": args.rate, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(120)
    sys.exit(main())
