"""Consistency checks of a decoded manifest, before any blob is read.

A manifest that passes guarantees: unique tensor names; each tensor's view matches its shape;
tiles form exactly the regular grid their tile size implies, listed row-major; tables have the shapes their
method, bits and groups imply; blob lengths match fixed-size payloads; every blob lies inside
its shard and no two blobs overlap; shard names are plain content-hash file names; no tile is
larger than MAX_TILE_ELEMENTS or promises more bytes than its codec can inflate from its blob.
"""

from __future__ import annotations

import math
import re

import numpy as np

from .codecs import plane_depth
from .codecs.bitpack import row_bytes
from .errors import FormatError
from .limits import INFLATION_SLACK, MAX_INFLATION, MAX_TENSOR_ELEMENTS, MAX_TILE_ELEMENTS
from .schema import SHARD_SUFFIX, BlobRef, Manifest, TensorEntry

SHARD_NAME = re.compile(r"^[0-9a-f]{64}" + re.escape(SHARD_SUFFIX) + "$")
_VALUE_DTYPES = {"float16", "float32", "float64", "bool", "int8", "int16", "int32", "int64",
                 "uint8", "uint16", "uint32", "uint64"}


def _fail(source: str, what: str) -> FormatError:
    return FormatError(f"{source}: {what}")


def _check_tensor(t: TensorEntry, source: str, blobs: list[tuple[BlobRef, str]]) -> None:
    where = f"tensor {t.name!r}"
    if t.dtype not in _VALUE_DTYPES:
        raise _fail(source, f"{where}: unsupported dtype {t.dtype!r}")
    if any(d < 0 for d in t.shape):
        raise _fail(source, f"{where}: negative dimension in shape {t.shape}")
    size = math.prod(t.shape)
    rows, cols = t.view
    if size > MAX_TENSOR_ELEMENTS or rows * cols != size or rows < 0 or cols < 0:
        raise _fail(source, f"{where}: view {rows}x{cols} does not hold shape {t.shape}")
    expected_rows = 1 if len(t.shape) < 2 else t.shape[0]
    if size and rows != expected_rows:
        raise _fail(source, f"{where}: view has {rows} rows, shape {t.shape} implies {expected_rows}")
    q = t.quant
    if q.method in ("kmeans", "linear"):
        if q.bits is None or t.storage != "uint8" or t.depth != plane_depth(q.bits):
            raise _fail(source, f"{where}: code planes need bits, uint8 storage and depth {q.bits and plane_depth(q.bits)}")
        if not 1 <= q.group_rows <= max(rows, 1):
            raise _fail(source, f"{where}: group_rows {q.group_rows} outside 1..{rows}")
        groups = -(-rows // q.group_rows)
        if q.method == "kmeans":
            _check_table(q.codebook, [groups, 1 << q.bits], ("float16", "float32"), f"{where} codebook", source, blobs)
        else:
            _check_table(q.scale, [groups], ("float32",), f"{where} scale", source, blobs)
            _check_table(q.zero_point, [groups], ("uint8",), f"{where} zero_point", source, blobs)
    else:
        want = "float16" if q.method == "fp16" else t.dtype
        if t.depth is not None or q.bits is not None:
            raise _fail(source, f"{where}: {q.method} planes hold values, not codes (bits {q.bits}, depth {t.depth})")
        if t.storage != want or t.codec == "png":
            raise _fail(source, f"{where}: {q.method} planes must be {want} values, not {t.storage} in {t.codec}")
    tr, tc = t.tile
    if tr < 1 or tc < 1:
        raise _fail(source, f"{where}: tile size {t.tile} must be positive")
    expected = -(-rows // tr) * -(-cols // tc) if size else 0
    if len(t.tiles) != expected:
        raise _fail(source, f"{where}: {len(t.tiles)} tiles, the {tr}x{tc} grid over {rows}x{cols} needs {expected}")
    grid_cols = -(-cols // tc) if size else 1
    itemsize = np.dtype(t.storage).itemsize
    for i, tile in enumerate(t.tiles):
        # Tiles are listed row-major, so a reader streams whole row bands in stored order.
        row, col = (i // grid_cols) * tr, (i % grid_cols) * tc
        if (tile.row, tile.col) != (row, col) or tile.rows != min(tr, rows - row) or tile.cols != min(tc, cols - col):
            raise _fail(
                source,
                f"{where} tile {i}: rectangle ({tile.row}, {tile.col}, {tile.rows}x{tile.cols}) is not grid"
                f" cell ({row}, {col}, {min(tr, rows - row)}x{min(tc, cols - col)}); tiles are listed row-major",
            )
        if tile.rows * tile.cols > MAX_TILE_ELEMENTS:
            raise _fail(source, f"{where} tile {i}: {tile.rows}x{tile.cols} exceeds the limit of {MAX_TILE_ELEMENTS} elements per tile")
        # The decoded plane's bytes: packed code rows, or values.
        plane = tile.rows * (row_bytes(tile.cols, t.depth) if t.depth else tile.cols * itemsize)
        if t.codec in MAX_INFLATION:
            if plane > MAX_INFLATION[t.codec] * tile.blob.length + INFLATION_SLACK:
                raise _fail(
                    source,
                    f"{where} tile {i}: a {t.codec} blob of {tile.blob.length} bytes cannot hold a {plane}-byte plane"
                    f" (more than {MAX_INFLATION[t.codec]}:1)",
                )
        if t.codec == "raw" and tile.blob.length != plane:
            raise _fail(source, f"{where} tile {i}: raw blob of {tile.blob.length} bytes, expected {plane}")
        blobs.append((tile.blob, f"{where} tile {i} (rows {tile.row}.., cols {tile.col}..)"))


def _check_table(table, shape, dtypes, what, source, blobs) -> None:
    if table is None:
        raise _fail(source, f"{what} is missing")
    if table.dtype not in dtypes or list(table.shape) != shape:
        raise _fail(source, f"{what}: expected {'/'.join(dtypes)} {shape}, got {table.dtype} {table.shape}")
    want = math.prod(shape) * np.dtype(table.dtype).itemsize
    if table.blob.length != want:
        raise _fail(source, f"{what}: blob of {table.blob.length} bytes, expected {want}")
    blobs.append((table.blob, what))


def validate_manifest(manifest: Manifest, source: str) -> list[tuple[BlobRef, str]]:
    """Raise FormatError on any inconsistency; return every blob with a label for messages."""
    names = set()
    blobs: list[tuple[BlobRef, str]] = []
    for t in manifest.tensors:
        if t.name in names:
            raise _fail(source, f"tensor name {t.name!r} appears twice")
        names.add(t.name)
        _check_tensor(t, source, blobs)
    if manifest.layout == "sharded":
        for shard in manifest.shards:
            if not SHARD_NAME.match(shard.name) or shard.name != shard.sha256 + SHARD_SUFFIX:
                raise _fail(source, f"shard name {shard.name!r} is not <sha256>{SHARD_SUFFIX}")
        limits = [s.length for s in manifest.shards]
    else:
        if manifest.shards:
            raise _fail(source, "a single-file container lists shards")
        limits = None
    by_shard: dict[int, list[tuple[int, int, str]]] = {}
    for ref, label in blobs:
        if limits is not None:
            if ref.shard >= len(limits):
                raise _fail(source, f"{label}: shard {ref.shard} does not exist ({len(limits)} shards)")
            if ref.offset + ref.length > limits[ref.shard]:
                raise _fail(source, f"{label}: bytes {ref.offset}..{ref.offset + ref.length} lie past the end of shard {ref.shard} ({limits[ref.shard]} bytes)")
        elif ref.shard != 0:
            raise _fail(source, f"{label}: refers to shard {ref.shard} in a single file")
        by_shard.setdefault(ref.shard, []).append((ref.offset, ref.offset + ref.length, label))
    for shard, spans in by_shard.items():
        spans.sort()
        for (s0, e0, l0), (s1, e1, l1) in zip(spans, spans[1:]):
            if s1 < e0:
                raise _fail(source, f"{l1} overlaps {l0} (bytes {s1}..{e1} and {s0}..{e0})")
    return blobs
