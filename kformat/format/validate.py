"""Consistency checks of a decoded manifest, before any blob is read.

A manifest that passes guarantees: every method, codec and must-understand extension is
known to this reader (the registries of kformat.methods and kformat.codecs); unique tensor
names; each tensor's view matches its shape; tiles form exactly the regular grid their tile
size implies, listed row-major; tables have the names and shapes their method, bits and
groups imply; blob lengths match fixed-size payloads; every blob lies inside
its shard and no two blobs overlap; shard names are plain content-hash file names; no tile is
larger than MAX_TILE_ELEMENTS or promises more bytes than its codec can inflate from its blob.
"""

from __future__ import annotations

import math
import re

import numpy as np

from ..codecs import CODECS, get_codec, plane_depth
from ..codecs.bitpack import row_bytes
from ..errors import FormatError, LimitError, VersionError
from ..methods import METHODS, get_method, view_2d
from .constants import FEATURES, SHARD_SUFFIX
from .dtypes import VALUE_DTYPES, itemsize
from .limits import (
    AMPLIFICATION_SLACK,
    INFLATION_SLACK,
    MAX_AMPLIFICATION,
    MAX_RANK,
    MAX_TENSOR_ELEMENTS,
    MAX_TILE_ELEMENTS,
)
from .manifest import BlobRef, Manifest, TensorEntry

SHARD_NAME = re.compile(r"^[0-9a-f]{64}" + re.escape(SHARD_SUFFIX) + "$")


def _fail(source: str, what: str) -> FormatError:
    return FormatError(f"{source}: {what}")


def _check_tensor(t: TensorEntry, source: str, blobs: list[tuple[BlobRef, str]]) -> None:
    where = f"tensor {t.name!r}"
    if t.dtype not in VALUE_DTYPES:
        raise _fail(source, f"{where}: unsupported dtype {t.dtype!r}")
    if len(t.shape) > MAX_RANK:
        raise LimitError(f"{source}: {where}: rank {len(t.shape)} exceeds the limit of {MAX_RANK} dimensions")
    if any(d < 0 for d in t.shape):
        raise _fail(source, f"{where}: negative dimension in shape {t.shape}")
    if any(d > MAX_TENSOR_ELEMENTS for d in (*t.shape, *t.view)):
        raise LimitError(
            f"{source}: {where}: a dimension of shape {t.shape} or view {list(t.view)} exceeds"
            f" {MAX_TENSOR_ELEMENTS}"
        )
    size = math.prod(t.shape)  # Python integers: no overflow
    rows, cols = t.view
    if size > MAX_TENSOR_ELEMENTS:
        raise LimitError(f"{source}: {where}: {size} elements exceed the limit of {MAX_TENSOR_ELEMENTS}")
    if rows * cols != size or rows < 0 or cols < 0:
        raise _fail(source, f"{where}: view {rows}x{cols} does not hold shape {t.shape}")
    expected_rows, expected_cols = view_2d(t.shape)
    if rows != expected_rows:
        raise _fail(source, f"{where}: view has {rows} rows, shape {t.shape} implies {expected_rows}")
    if cols != expected_cols:
        raise _fail(source, f"{where}: view has {cols} columns, shape {t.shape} implies {expected_cols}")
    q = t.quant
    try:
        method, codec = get_method(q.method), get_codec(t.codec)
    except VersionError as exc:
        raise VersionError(f"{source}: {where}: {exc}") from None
    if method.codes:
        if q.bits is None or t.storage != "uint8" or t.depth != plane_depth(q.bits):
            raise _fail(
                source,
                f"{where}: code planes need bits, uint8 storage and depth {q.bits and plane_depth(q.bits)}",
            )
        if not codec.supports_codes:
            raise _fail(source, f"{where}: the {codec.name} codec cannot hold code planes")
        if not 1 <= q.group_rows <= max(rows, 1):
            raise _fail(source, f"{where}: group_rows {q.group_rows} outside 1..{rows}")
    else:
        want = method.storage(t.dtype)
        if t.depth is not None or q.bits is not None:
            raise _fail(
                source, f"{where}: {q.method} planes hold values, not codes (bits {q.bits}, depth {t.depth})"
            )
        if t.storage != want or not codec.supports_values:
            raise _fail(
                source, f"{where}: {q.method} planes must be {want} values, not {t.storage} in {t.codec}"
            )
    specs = method.table_specs(q, rows)
    present = sorted(name for name, _ in q.named_tables())
    if present != sorted(spec.name for spec in specs):
        raise _fail(
            source, f"{where}: {q.method} needs tables {[s.name for s in specs]}, the entry has {present}"
        )
    for spec in specs:
        _check_table(q.table(spec.name), list(spec.shape), spec.dtypes, f"{where} {spec.name}", source, blobs)
    tr, tc = t.tile
    if tr < 1 or tc < 1:
        raise _fail(source, f"{where}: tile size {t.tile} must be positive")
    expected = -(-rows // tr) * -(-cols // tc) if size else 0
    if len(t.tiles) != expected:
        raise _fail(
            source, f"{where}: {len(t.tiles)} tiles, the {tr}x{tc} grid over {rows}x{cols} needs {expected}"
        )
    grid_cols = -(-cols // tc) if size else 1
    item = itemsize(t.storage)
    for i, tile in enumerate(t.tiles):
        # Tiles are listed row-major, so a reader streams whole row bands in stored order.
        row, col = (i // grid_cols) * tr, (i % grid_cols) * tc
        if (
            (tile.row, tile.col) != (row, col)
            or tile.rows != min(tr, rows - row)
            or tile.cols != min(tc, cols - col)
        ):
            raise _fail(
                source,
                f"{where} tile {i}: rectangle ({tile.row}, {tile.col}, {tile.rows}x{tile.cols}) is not grid"
                f" cell ({row}, {col}, {min(tr, rows - row)}x{min(tc, cols - col)}); tiles are listed"
                " row-major",
            )
        if tile.rows * tile.cols > MAX_TILE_ELEMENTS:
            raise LimitError(
                f"{source}: {where} tile {i}: {tile.rows}x{tile.cols} exceeds the limit of"
                f" {MAX_TILE_ELEMENTS} elements per tile"
            )
        # The decoded plane's bytes: packed code rows, or values.
        plane = tile.rows * (row_bytes(tile.cols, t.depth) if t.depth else tile.cols * item)
        if codec.exact:
            if tile.blob.length != plane:
                raise _fail(
                    source, f"{where} tile {i}: {t.codec} blob of {tile.blob.length} bytes, expected {plane}"
                )
        elif plane > codec.max_inflation * tile.blob.length + INFLATION_SLACK:
            raise LimitError(
                f"{source}: {where} tile {i}: a {t.codec} blob of {tile.blob.length} bytes cannot hold a"
                f" {plane}-byte plane (more than {codec.max_inflation}:1)"
            )
        blobs.append((tile.blob, f"{where} tile {i} (rows {tile.row}.., cols {tile.col}..)"))
    decoded, stored = decoded_nbytes(t), t.stored_bytes
    if decoded > MAX_AMPLIFICATION * stored + AMPLIFICATION_SLACK:
        raise LimitError(
            f"{source}: {where}: {decoded} bytes of values from {stored} stored bytes"
            f" (more than {MAX_AMPLIFICATION}:1 beyond {AMPLIFICATION_SLACK >> 20} MiB)"
        )


def decoded_nbytes(t: TensorEntry) -> int:
    """Bytes of what the tensor decodes to: float32, or the source dtype when lossless."""
    size = itemsize(t.dtype) if get_method(t.quant.method).lossless else 4
    return math.prod(t.shape) * size


def _check_table(table, shape, dtypes, what, source, blobs) -> None:
    if table is None:
        raise _fail(source, f"{what} is missing")
    if table.dtype not in dtypes or list(table.shape) != shape:
        raise _fail(source, f"{what}: expected {'/'.join(dtypes)} {shape}, got {table.dtype} {table.shape}")
    want = math.prod(shape) * np.dtype(table.dtype).itemsize
    if table.blob.length != want:
        raise _fail(source, f"{what}: blob of {table.blob.length} bytes, expected {want}")
    blobs.append((table.blob, what))


def check_extensions(manifest: Manifest, source: str) -> None:
    """Refuse a file listing a must-understand extension this reader lacks: "method:NAME" and
    "codec:NAME" are known when registered; nothing else is known yet."""
    known = {f"method:{m}" for m in METHODS} | {f"codec:{c}" for c in CODECS} | set(FEATURES)
    unknown = sorted(set(manifest.must_understand) - known)
    if unknown:
        raise VersionError(
            f"{source}: needs extension(s) {', '.join(unknown)} that this reader does not know"
        )


def _check_aliases(manifest: Manifest, names: set[str], source: str) -> None:
    if manifest.aliases and "aliases" not in manifest.must_understand:
        raise _fail(source, "the manifest has aliases but does not list 'aliases' in must_understand")
    for alias, name in manifest.aliases.items():
        if not alias or alias in names:
            raise _fail(source, f"alias {alias!r} is empty or the name of a stored tensor")
        if name not in names:
            raise _fail(source, f"alias {alias!r} names {name!r}, which is not a stored tensor")


def validate_manifest(manifest: Manifest, source: str) -> list[tuple[BlobRef, str]]:
    """Raise FormatError on any inconsistency; return every blob with a label for messages."""
    check_extensions(manifest, source)
    names = set()
    blobs: list[tuple[BlobRef, str]] = []
    for t in manifest.tensors:
        if t.name in names:
            raise _fail(source, f"tensor name {t.name!r} appears twice")
        names.add(t.name)
        _check_tensor(t, source, blobs)
    _check_aliases(manifest, names, source)
    scaled = [t.name for t in manifest.tensors if t.quant.method == "kmeans" and t.quant.scale is not None]
    if scaled and "scaled-codebooks" not in manifest.must_understand:
        raise _fail(
            source,
            f"tensor {scaled[0]!r} has a scaled codebook but 'scaled-codebooks' is not in must_understand",
        )
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
                raise _fail(
                    source,
                    f"{label}: bytes {ref.offset}..{ref.offset + ref.length} lie past the end of shard"
                    f" {ref.shard} ({limits[ref.shard]} bytes)",
                )
        elif ref.shard != 0:
            raise _fail(source, f"{label}: refers to shard {ref.shard} in a single file")
        by_shard.setdefault(ref.shard, []).append((ref.offset, ref.offset + ref.length, label))
    for shard, spans in by_shard.items():
        spans.sort()
        for (s0, e0, l0), (s1, e1, l1) in zip(spans, spans[1:]):
            if s1 < e0:
                raise _fail(source, f"{l1} overlaps {l0} (bytes {s1}..{e1} and {s0}..{e0})")
    return blobs
