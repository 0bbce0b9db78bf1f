"""One tensor's CPU work, independent of the output: quantize it, cut it into tiles and
encode them. What a local worker thread, a forked worker process or a Dask task hands back
to the writer (kformat.packing.writer), which only places the blobs and describes them.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from ..codecs import get_codec, plane_depth
from ..format.limits import AMPLIFICATION_SLACK, MAX_AMPLIFICATION
from ..methods import QuantizedTensor, chunks, get_method
from ..recipe import Decision, Rule, tile_for
from .encode import encode_tensor
from .streamed import BlobStream


def tile_grid(view: tuple[int, int], tile: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Row-major (row, col, rows, cols) rectangles of a regular grid over the 2-D view."""
    rows, cols = view
    tr, tc = tile
    return [
        (r, c, min(tr, rows - r), min(tc, cols - c)) for r in range(0, rows, tr) for c in range(0, cols, tc)
    ]


def tile_blob(q: QuantizedTensor, codec, rect) -> bytes:
    r, c, h, w = rect
    if q.codes is not None:
        return codec.encode_codes(q.codes[r : r + h, c : c + w], plane_depth(q.bits), 1 << q.bits)
    return codec.encode_values(q.values[r : r + h, c : c + w])


def _hashed_blob(
    q: QuantizedTensor, codec, item, stream: BlobStream | None = None
) -> tuple[bytes | None, str]:
    """Tile `item` (index, rect)'s blob and its SHA-256, hashed by the thread that made it
    while it is in cache (hashed after the last tile, the long pole's 45 MB took 12 ms at the
    end of a pack). With a `stream` the blob goes there alone (None here): the stream holds it
    until it is written, then lets it go, so a long pole's blobs are not all held at once."""
    index, rect = item
    blob = tile_blob(q, codec, rect)
    digest = hashlib.sha256(blob).hexdigest()
    if stream is not None:
        stream.put(index, blob, digest)
        return None, digest
    return blob, digest


def _hashed(pairs: list[tuple[bytes, str]]) -> tuple[list[bytes], list[str]]:
    return [blob for blob, _ in pairs], [digest for _, digest in pairs]


def stored_bytes(blobs: list[bytes | None], tables: dict[str, np.ndarray]) -> int:
    """What a tensor's tile blobs and tables come to in memory until written (a blob a stream
    writes, None, counts nothing here)."""
    return sum(len(blob) for blob in blobs if blob is not None) + sum(t.nbytes for t in tables.values())


def stored_raw(input_bytes: int, stored: int, exact: bool) -> bool:
    """Whether planes of `stored` bytes (tables included) for `input_bytes` of input compress
    past what a reader accepts from so few bytes (spec/FORMAT.md, limits), so that they are
    stored as they are: a huge constant tensor. Never for an `exact` codec."""
    return not exact and input_bytes > MAX_AMPLIFICATION * stored + AMPLIFICATION_SLACK


@dataclass
class Encoded:
    """A tensor encoded and cut into tile blobs, not yet written: what a worker hands back."""

    name: str
    dtype: str
    shape: list[int]
    view: tuple[int, int]
    rule: Rule
    reason: str
    group_rows: int
    storage: str
    depth: int | None
    codec: str
    tile: tuple[int, int]
    rects: list[tuple[int, int, int, int]]
    blobs: list[bytes]
    digests: list[str]  # each blob's SHA-256, hashed by the worker that made it
    tables: dict[str, np.ndarray]
    stats: dict[str, float]
    weighed: bool = False  # importance weighed its fit (counted where the manifest is written)

    @property
    def held_bytes(self) -> int:
        """The bytes it holds until it is written (kformat.packing.admission)."""
        return stored_bytes(self.blobs, self.tables)


def encode_blobs(
    name: str,
    array: np.ndarray,
    decision: Decision,
    default_tile,
    pool: Executor | None = None,
    importance=None,
    threads: int = 1,
    stream: BlobStream | None = None,
    split: bool = False,
) -> Encoded:
    """The CPU work of one tensor (quantize, encode every tile), independent of the output;
    tiles on `threads` threads, the calling one and `pool`'s (without a pool, the calling
    thread alone), each blob also put in `stream` as it is made (kformat.packing.streamed).
    With `split` (the long pole, or any tensor where tensors are encoded on threads) its row
    groups may be fitted in two processes (split.py)."""
    threads = threads if pool is not None else 1

    def each(fn, items: list) -> list:
        return chunks.map_helping(pool, fn, items, threads)

    rule = decision.rule
    q = encode_tensor(name, array, rule, importance, feedback=True, jobs=threads if split else 1)
    codec = get_codec(rule.plane_codec)
    tile = tile_for(q.view, rule.tile, default_tile)
    rects = tile_grid(q.view, tile)
    method = get_method(rule.method)
    reason = decision.reason
    input_bytes = array.size * (array.dtype.itemsize if method.lossless else 4)

    def tiles_by(codec, stream: BlobStream | None = None) -> tuple[list[bytes], list[str]]:
        return _hashed(each(lambda item: _hashed_blob(q, codec, item, stream), list(enumerate(rects))))

    if stream is not None:  # blobs past the fallback's reach are final (stored only grows)
        exact = codec.exact  # (this codec's: `codec` may become raw below)
        stream.begin(lambda made: not stored_raw(input_bytes, made, exact))
    blobs, digests = tiles_by(codec, stream)
    made = stored_bytes(blobs, q.tables) + (0 if stream is None else stream.made_bytes)
    if stream is not None:  # the blobs the stream will not write (all or none), here again
        blobs = stream.unwritten(len(blobs))
    if stored_raw(input_bytes, made, codec.exact):
        codec = get_codec("raw")
        blobs, digests = tiles_by(codec)
        reason += f"; codec raw: the planes compress past the reader's {MAX_AMPLIFICATION}:1 limit"
    return Encoded(
        name=name,
        dtype=array.dtype.name,
        shape=list(array.shape),
        view=q.view,
        rule=rule,
        reason=reason,
        group_rows=q.group_rows,
        storage="uint8" if method.codes else q.values.dtype.name,
        depth=plane_depth(int(rule.bits)) if method.codes else None,
        codec=codec.name,
        tile=tile,
        rects=rects,
        blobs=blobs,
        digests=digests,
        tables=q.tables,
        stats={k: float(v) for k, v in q.stats.items() if np.isfinite(v)},
        weighed=importance is not None and name in importance.used,
    )
