"""pack: source tensors + recipe -> a kformat container (single file or sharded directory).

source ─► plan (recipe) ─► quantize ─► cut into tiles ─► encode planes (threads) ─► sink
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__
from .codecs import get_codec, plane_depth
from .errors import KFormatError, StorageError
from .io import TensorSource
from .quantize import Encoded, encode_tensor
from .recipe import Decision, Recipe, Rule, plan
from .schema import DEFAULT_SHARD_SIZE, Manifest, Quant, Table, TensorEntry, Tile
from .sinks import ShardedSink, SingleFileSink

Progress = Callable[[int, int, str], None]


@dataclass
class PackReport:
    output: Path
    manifest: Manifest
    unmatched_rules: list[str] = field(default_factory=list)


def tile_grid(view: tuple[int, int], tile: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Row-major (row, col, rows, cols) rectangles of a regular grid over the 2-D view."""
    rows, cols = view
    tr, tc = tile
    return [
        (r, c, min(tr, rows - r), min(tc, cols - c))
        for r in range(0, rows, tr)
        for c in range(0, cols, tc)
    ]


def tile_blob(enc: Encoded, codec, rect) -> bytes:
    r, c, h, w = rect
    if enc.codes is not None:
        bits = int(enc.rule.bits)
        return codec.encode_codes(enc.codes[r : r + h, c : c + w], plane_depth(bits), 1 << bits)
    return codec.encode_values(enc.values[r : r + h, c : c + w])


def _table(sink, array: np.ndarray) -> Table:
    data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    return Table(dtype=array.dtype.name, shape=list(array.shape), blob=sink.add(data))


def _storage_name(enc: Encoded) -> str:
    return "uint8" if enc.codes is not None else enc.values.dtype.name


def emit_tensor(sink, pool: ThreadPoolExecutor, name: str, array: np.ndarray, decision: Decision, default_tile) -> TensorEntry:
    rule = decision.rule
    enc = encode_tensor(name, array, rule)
    codec = get_codec(rule.plane_codec)
    tile = tuple(rule.tile or default_tile)
    rects = tile_grid(enc.view, tile)
    blobs = pool.map(lambda rect: tile_blob(enc, codec, rect), rects)
    tiles = [Tile(row=r, col=c, rows=h, cols=w, blob=sink.add(b)) for (r, c, h, w), b in zip(rects, blobs)]
    quant = Quant(
        method=rule.method,
        bits=rule.bits,
        group_rows=enc.group_rows,
        codebook=_table(sink, enc.codebook) if enc.codebook is not None else None,
        scale=_table(sink, enc.scale) if enc.scale is not None else None,
        zero_point=_table(sink, enc.zero_point) if enc.zero_point is not None else None,
    )
    stats = {k: float(v) for k, v in enc.stats.items() if np.isfinite(v)}
    return TensorEntry(
        name=name,
        dtype=array.dtype.name,
        shape=list(array.shape),
        view=enc.view,
        storage=_storage_name(enc),
        depth=plane_depth(int(rule.bits)) if enc.codes is not None else None,
        codec=codec.name,
        tile=tile,
        quant=quant,
        tiles=tiles,
        rule=rule.to_text(),
        reason=decision.reason,
        stats=stats,
    )


def pack(
    source: TensorSource,
    output: str | Path,
    recipe: Recipe,
    *,
    layout: str = "single",
    shard_size: int = DEFAULT_SHARD_SIZE,
    metadata: dict[str, str] | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
    generator: str | None = None,
    assigned: dict[str, tuple[Rule, str]] | None = None,
) -> PackReport:
    """Pack every tensor of `source` by `recipe`; the output appears only when complete.

    `assigned` maps tensor names to (rule, reason) chosen elsewhere (bit allocation); those
    replace the recipe's choice."""
    output = Path(output)
    if source.path is not None and output.resolve() == Path(source.path).resolve():
        raise StorageError(f"output {output} is the input file; choose another path")
    decisions, unmatched = plan(recipe, [(t.name, t.shape, t.dtype) for t in source.tensors()])
    if assigned:
        decisions = [Decision(d.name, *assigned[d.name]) if d.name in assigned else d for d in decisions]
    if layout == "single":
        sink = SingleFileSink(output)
    elif layout == "sharded":
        sink = ShardedSink(output, shard_size)
    else:
        raise KFormatError(f"unknown layout {layout!r} (single or sharded)")
    try:
        entries = []
        total = len(decisions)
        with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
            for i, decision in enumerate(decisions):
                if progress:
                    progress(i, total, decision.name)
                array = source.load(decision.name)
                entries.append(emit_tensor(sink, pool, decision.name, array, decision, recipe.tile))
                del array
        if progress:
            progress(total, total, "")
        manifest = Manifest(
            generator=generator or f"kformat {__version__}",
            layout=sink.layout,
            shards=sink.shards(),
            tensors=entries,
            recipe=recipe,
            metadata=dict(metadata or {}),
        )
        sink.commit(manifest)
    except BaseException:
        sink.abort()
        raise
    return PackReport(output=output, manifest=manifest, unmatched_rules=unmatched)
