#!/usr/bin/env python3
"""Fuzz the reader with mutated golden vectors: every outcome must be the right tensors or a KFormatError.

Mutations of the golden vectors in spec/conformance/vectors/: flipped bits, random bytes,
truncation, bytes cut out or repeated, splices (one vector's header or manifest with another's
rest), and forgeries whose hashes are made to match (a mutated blob, a manifest field set to
an odd value, and structure-aware edits of several linked fields at once: shape with view
and tiles, method with bits, depth, storage and tables, codec, extensions), which reach the
decoders and consistency checks behind the hashes. Each mutant is opened from
memory and every tensor read. An outcome *escapes* when the reader
raises anything but a KFormatError (a numpy, zlib, msgpack or Pillow error, MemoryError, ...)
or returns tensors that differ from the golden ones.

    python tools/fuzz.py [--seconds 600 | --count N] [--seed S] [--json bench-out/fuzz.json]

Also used by tests/test_fuzz.py (hypothesis, and truncation at every offset).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np

import conformance
import craft
import kformat
from kformat.errors import KFormatError

SUITE = conformance.SUITE


@dataclass(frozen=True)
class Golden:
    name: str
    data: bytes
    tensors: dict[str, np.ndarray]


def load_golden() -> list[Golden]:
    """The single-file golden vectors and the tensors they decode to."""
    out = []
    for rel, case in sorted(conformance.load_index(SUITE, "vectors").items()):
        if rel.endswith(".kf"):
            path = SUITE / rel
            out.append(Golden(path.stem, path.read_bytes(), conformance.expected_tensors(SUITE, case)))
    return out


class Escape(AssertionError):
    """A mutant got something other than the right tensors or a KFormatError out of the reader."""


_memory = fsspec.filesystem("memory")
_counter = 0


def outcome(data: bytes, expected: dict[str, np.ndarray] | None) -> str:
    """'ok' (right tensors), or the KFormatError subclass name; raises Escape otherwise.

    With expected None (a forged file whose hashes match), success must give each tensor the
    shape and dtype its manifest entry promises."""
    global _counter
    _counter += 1
    path = f"/kformat-fuzz/{_counter}.kf"
    _memory.pipe(path, data)
    try:
        got = {}
        with kformat.open(f"memory://{path}") as model:
            for name in model:
                got[name] = model[name].numpy()
                entry = model[name]
                if got[name].shape != tuple(entry.shape) or got[name].dtype != entry.dtype:
                    raise Escape(
                        f"tensor {name!r}: got {got[name].dtype} {got[name].shape}, manifest says"
                        f" {entry.dtype} {tuple(entry.shape)}"
                    )
    except KFormatError as exc:
        return type(exc).__name__
    except Exception as exc:  # noqa: BLE001 - the point: anything else escaped
        raise Escape(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}") from exc
    finally:
        _memory.rm(path)
    if expected is None:
        return "ok (forged)"
    if got.keys() != expected.keys():
        raise Escape(f"returned tensors {sorted(got)}, expected {sorted(expected)}")
    for name, want in expected.items():
        have = got[name]
        same = have.shape == want.shape and np.array_equal(have.astype(np.float64), want.astype(np.float64))
        if not same:
            raise Escape(f"tensor {name!r} came back wrong (shape {have.shape}, expected {want.shape})")
    return "ok"


# -- mutations -------------------------------------------------------------------------------
def flip_bits(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def random_bytes(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    start = rng.randrange(len(out))
    for i in range(start, min(len(out), start + rng.choice((1, 4, 8, 64)))):
        out[i] = rng.randrange(256)
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))]


def cut_or_repeat(data: bytes, rng: random.Random) -> bytes:
    i = rng.randrange(len(data))
    n = rng.choice((1, 3, 16, 64, 500))
    return data[:i] + data[i + n :] if rng.random() < 0.5 else data[:i] + data[i : i + n] + data[i:]


def header_of(data: bytes) -> int:
    """Bytes of header + manifest + padding (where the data region starts)."""
    return int.from_bytes(data[24:32], "little")


def splice(a: Golden, b: Golden, rng: random.Random) -> tuple[bytes, dict[str, np.ndarray]]:
    """One of: a's 64-byte header on b's rest; a's header+manifest on b's data region. The
    right tensors, if any come back, are those of the vector whose manifest is used."""
    if rng.random() < 0.5:
        return a.data[:64] + b.data[64:], b.tensors
    return a.data[: header_of(a.data)] + b.data[header_of(b.data) :], a.tensors


MUTATIONS = {
    "flip_bits": flip_bits,
    "random_bytes": random_bytes,
    "truncate": truncate,
    "cut_or_repeat": cut_or_repeat,
}
BYTE_MUTATIONS = (flip_bits, random_bytes, truncate, cut_or_repeat)
INTERESTING = (
    0,
    1,
    -1,
    2,
    3,
    7,
    8,
    15,
    16,
    17,
    31,
    33,
    64,
    255,
    256,
    4096,
    65535,
    1 << 26,
    1 << 31,
    1 << 32,
    (1 << 63) - 1,
    1 << 64,
    0.5,
    float("nan"),
    "",
    "x",
    "zstd",
    "png",
    "raw",
    "kmeans",
    "float16",
    None,
    [],
    {},
)


def forged_blob(g: Golden, rng: random.Random) -> bytes:
    """A blob mutated and its manifest entry made to match (length, hash): only the decoders
    and the checks after hashing can refuse it."""
    parts = craft.split(g.data)
    refs = [tile["blob"] for t in parts.manifest["tensors"] for tile in t["tiles"]]
    refs += [
        t["quant"][k]["blob"]
        for t in parts.manifest["tensors"]
        for k in ("codebook", "scale", "zero_point")
        if t["quant"].get(k)
    ]
    ref = rng.choice(refs)
    blob = parts.blob(ref)
    parts.replace_blob(ref, rng.choice(BYTE_MUTATIONS)(blob, rng) if blob else bytes([rng.randrange(256)]))
    return craft.assemble(parts)


def _containers(node, out):
    if isinstance(node, dict):
        out.append(node)
        for v in node.values():
            _containers(v, out)
    elif isinstance(node, list):
        out.append(node)
        for v in node:
            _containers(v, out)
    return out


def forged_manifest(g: Golden, rng: random.Random) -> bytes:
    """One manifest field set to an interesting value, deleted, or nudged, with the header's
    hash recomputed: only the schema and consistency checks can refuse it."""
    parts = craft.split(g.data)
    spots = [c for c in _containers(parts.manifest, []) if c]
    node = rng.choice(spots)
    key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
    roll = rng.random()
    if roll < 0.15 and isinstance(node, dict):
        del node[key]
    elif roll < 0.5 and isinstance(node[key], int) and not isinstance(node[key], bool):
        node[key] += rng.choice((-1, 1, -64, 64, 1 << 20))
    else:
        node[key] = rng.choice(INTERESTING)
    try:
        return craft.assemble(parts)
    except (OverflowError, TypeError, ValueError):  # msgpack cannot encode it: a plain bit flip instead
        return flip_bits(g.data, rng)


# -- structure-aware forgeries: several linked fields at once, hashes recomputed ----------------
SHAPES = (
    [],
    [0],
    [1],
    [7],
    [0, 5],
    [5, 0],
    [3, 4],
    [16, 16],
    [37, 70],
    [2, 3, 4],
    [1, 1, 1, 1],
    [1 << 17, 1 << 17],
    [0, 1 << 40],
    [1 << 20, 1 << 20],
    [64] * 8,
    [2] * 40,
    [1 << 62, 0],
)
TILES = ([1, 1], [4, 4], [16, 32], [256, 4096], [1 << 13, 1 << 13], [1 << 16, 1 << 16], [0, 8])
METHODS = ("kmeans", "linear", "fp16", "raw", "sign", "")
CODECS = ("png", "zstd", "raw", "jpeg")
DTYPES = ("float32", "float16", "float64", "int8", "int64", "bool", "bfloat16", "object")


def _view(shape: list[int]) -> list[int]:
    if not shape:
        return [1, 1]
    cols = 1
    for d in shape[1:]:
        cols *= d
    return [1, shape[0]] if len(shape) == 1 else [shape[0], cols]


def _random_blob(parts: craft.Parts, ref: dict, size: int, rng: random.Random) -> None:
    size = max(0, min(size, 1 << 16))
    payload = bytes(rng.randrange(256) for _ in range(min(size, 64))) + bytes(max(0, size - 64))
    parts.replace_blob(ref, payload)


def _regrid(parts: craft.Parts, t: dict, rng: random.Random) -> None:
    """Tiles for the entry's view and tile size (a few, capped), reusing or forging blobs."""
    rows, cols = t["view"]
    tr, tc = t["tile"]
    old = t["tiles"] or [
        {
            "row": 0,
            "col": 0,
            "rows": 1,
            "cols": 1,
            "blob": {"shard": 0, "offset": 0, "length": 0, "sha256": "0" * 64},
        }
    ]
    tiles = []
    if tr > 0 and tc > 0:
        grid_cols = -(-cols // tc)
        for i in range(min(64, -(-rows // tr) * grid_cols)):  # the first cells of the grid, row-major
            r, c = (i // grid_cols) * tr, (i % grid_cols) * tc
            tile = dict(rng.choice(old), row=r, col=c, rows=min(tr, rows - r), cols=min(tc, cols - c))
            tile["blob"] = dict(tile["blob"])
            if rng.random() < 0.3:
                _random_blob(parts, tile["blob"], rng.choice((0, 1, 16, 200, 4096)), rng)
            tiles.append(tile)
    t["tiles"] = tiles


def forged_structure(g: Golden, rng: random.Random) -> bytes:
    """A tensor entry changed in several linked fields at once (shape with its view and tiles,
    method with its bits, depth, storage and tables, codec), hashes recomputed, so the checks
    of shapes, sizes and tables meet consistent-looking lies."""
    parts = craft.split(g.data)
    t = rng.choice(parts.manifest["tensors"])
    q = t["quant"]
    for _ in range(rng.choice((1, 2, 3))):
        edit = rng.randrange(5)
        if edit == 0:  # a new shape, its view, a tile size and the grid
            t["shape"] = list(rng.choice(SHAPES))
            t["view"] = (
                _view(t["shape"]) if rng.random() < 0.8 else rng.choice(([0, 0], [7, 0], [1, 1 << 40]))
            )
            t["tile"] = list(rng.choice(TILES)) if rng.random() < 0.5 else t["tile"]
            q["group_rows"] = max(1, t["view"][0]) if rng.random() < 0.7 else rng.choice((0, 1, 3, 1 << 40))
            _regrid(parts, t, rng)
        elif edit == 1:  # another method, with the fields it needs
            q["method"] = rng.choice(METHODS)
            codes = q["method"] in ("kmeans", "linear")
            q["bits"] = rng.choice((1, 2, 3, 4, 8)) if codes else None
            t["depth"] = {1: 1, 2: 2, 3: 4, 4: 4, 8: 8}[q["bits"]] if codes else None
            t["storage"] = "uint8" if codes else rng.choice(("float16", t["dtype"], "uint8"))
            for name in ("codebook", "scale", "zero_point"):
                q[name] = None
        elif edit == 2:  # tables sized for the method and groups (random contents)
            groups = max(1, -(-t["view"][0] // max(1, q.get("group_rows") or 1)))
            ref = {"shard": 0, "offset": 0, "length": 0, "sha256": "0" * 64}
            if q.get("method") == "linear":
                q["scale"] = {"dtype": "float32", "shape": [groups], "blob": dict(ref)}
                q["zero_point"] = {"dtype": "uint8", "shape": [groups], "blob": dict(ref)}
                _random_blob(parts, q["scale"]["blob"], 4 * groups, rng)
                _random_blob(parts, q["zero_point"]["blob"], groups, rng)
            else:
                entries = 1 << (q.get("bits") or 4)
                q["codebook"] = {
                    "dtype": rng.choice(("float16", "float32")),
                    "shape": [groups, entries],
                    "blob": dict(ref),
                }
                size = groups * entries * (2 if q["codebook"]["dtype"] == "float16" else 4)
                _random_blob(parts, q["codebook"]["blob"], size, rng)
        elif edit == 3:  # codec and dtype
            t["codec"] = rng.choice(CODECS)
            if rng.random() < 0.5:
                t["dtype"] = rng.choice(DTYPES)
        else:  # extensions and tables of unknown methods
            parts.manifest["must_understand"] = rng.choice(([], ["method:sign"], ["codec:png"], ["x"]))
            if rng.random() < 0.5:
                q["tables"] = {
                    "magnitude": {
                        "dtype": "float32",
                        "shape": [t["view"][0]],
                        "blob": {"shard": 0, "offset": 0, "length": 4, "sha256": "0" * 64},
                    }
                }
    try:
        return craft.assemble(parts)
    except (OverflowError, TypeError, ValueError):
        return flip_bits(g.data, rng)


def mutant(golden: list[Golden], rng: random.Random) -> tuple[str, bytes, dict[str, np.ndarray] | None]:
    """(mutation, bytes, the tensors a success must return; None where the mutant's own
    hashes vouch for forged content, so any well-formed result is the file's truth)."""
    roll = rng.random()
    if roll < 0.1:
        a, b = rng.sample(golden, 2)
        data, expected = splice(a, b, rng)
        return "splice", data, expected
    g = rng.choice(golden)
    if roll < 0.25:
        return "forged_blob", forged_blob(g, rng), None
    if roll < 0.4:
        return "forged_manifest", forged_manifest(g, rng), None
    if roll < 0.6:
        return "forged_structure", forged_structure(g, rng), None
    kind = rng.choice(list(MUTATIONS))
    return kind, MUTATIONS[kind](g.data, rng), g.tensors


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=600, help="run this long (default 600)")
    parser.add_argument("--count", type=int, help="stop after this many inputs instead")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--json", default="bench-out/fuzz.json", help="where to write the report")
    args = parser.parse_args()
    golden = load_golden()
    rng = random.Random(args.seed)
    started = time.perf_counter()
    tried, slowest = 0, 0.0
    outcomes: Counter[str] = Counter()
    by_mutation: Counter[str] = Counter()
    escapes: list[dict] = []
    next_report = started + 10
    while True:
        now = time.perf_counter()
        if (args.count is not None and tried >= args.count) or (
            args.count is None and now - started >= args.seconds
        ):
            break
        kind, data, expected = mutant(golden, rng)
        t0 = time.perf_counter()
        try:
            result = outcome(data, expected)
        except Escape as exc:
            result = "ESCAPED"
            path = Path(args.json).parent / f"escape-{len(escapes)}.kf"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            escapes.append({"mutation": kind, "file": str(path), "error": str(exc)[:2000]})
        slowest = max(slowest, time.perf_counter() - t0)
        tried += 1
        outcomes[result] += 1
        by_mutation[kind] += 1
        if now >= next_report:
            print(f"  {tried:,} inputs, {len(escapes)} escaped, {tried / (now - started):.0f}/s", flush=True)
            next_report = now + 10
    elapsed = time.perf_counter() - started
    print(
        f"\nfuzzed {tried:,} mutated golden vectors in {elapsed:.0f} s (seed {args.seed}); slowest input"
        f" {slowest * 1000:.0f} ms"
    )
    print(f"{'outcome':20s} {'inputs':>9s}")
    for name, n in outcomes.most_common():
        print(f"{name:20s} {n:9,d}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(
        f"escaped: {len(escapes)}"
        + ("" if not escapes else f" (first: {escapes[0]['error'].splitlines()[0]})")
    )
    report = {
        "inputs": tried,
        "seconds": round(elapsed, 1),
        "seed": args.seed,
        "escaped": len(escapes),
        "outcomes": dict(outcomes),
        "mutations": dict(by_mutation),
        "slowest_ms": round(slowest * 1000, 1),
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "escapes": escapes,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    return 1 if escapes else 0


if __name__ == "__main__":
    sys.exit(main())
