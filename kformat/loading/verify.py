"""verify: every blob's length and hash, and that every plane and table decodes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..errors import KFormatError
from ..format.constants import SHARD_DIR
from .decode import decode_plane
from .stream import BATCH_BYTES
from .tables import tile_label

if TYPE_CHECKING:
    from .container import Container


@dataclass(frozen=True)
class Problem:
    """One failed check found by verify: which blob, and what is wrong."""

    label: str
    message: str


def _chunked(items, limit: int):
    chunk, size = [], 0
    for ref, label in items:
        if chunk and size + ref.length > limit:
            yield chunk
            chunk, size = [], 0
        chunk.append((ref, label))
        size += ref.length
    if chunk:
        yield chunk


def _chunks(blob_labels):
    """Blobs in stored order, in chunks of about BATCH_BYTES (per shard or file)."""
    order = sorted(blob_labels, key=lambda item: (item[0].shard, item[0].offset))
    by_shard: dict[int, list] = {}
    for item in order:
        by_shard.setdefault(item[0].shard, []).append(item)
    for items in by_shard.values():
        yield from _chunked(items, BATCH_BYTES)


def _file_problems(container: "Container") -> list[Problem]:
    """Shards missing or of the wrong size; a single file shorter than its blobs."""
    problems = []
    store, manifest = container.store, container.manifest
    if manifest.layout == "sharded":
        for shard in manifest.shards:
            try:
                size = store.size(f"{SHARD_DIR}/{shard.name}")
            except KFormatError as exc:
                problems.append(Problem(f"shard {shard.name}", str(exc)))
                continue
            if size != shard.length:
                problems.append(Problem(f"shard {shard.name}", f"{size} bytes, manifest says {shard.length}"))
        return problems
    try:
        size = store.size(container.key)
        ends = [container.data_offset + r.offset + r.length for r, _ in container.blob_labels]
        if ends and size < max(ends):
            problems.append(Problem("file", f"truncated: {size} bytes, blobs end at {max(ends)}"))
    except KFormatError as exc:
        problems.append(Problem("file", str(exc)))
    return problems


def verify(container: "Container", progress: Callable[[int, int, str], None] | None = None) -> list[Problem]:
    """Every problem found; an empty list means the container is intact."""
    problems = _file_problems(container)
    blobs, tables = container.blobs, container.table_cache
    tile_of, table_of = {}, {}
    for t in container.manifest.tensors:
        for i, tile in enumerate(t.tiles):
            tile_of[id(tile.blob)] = (t, tile)
        for which, table in t.quant.named_tables():
            table_of[id(table.blob)] = (t, which)
    total = len(container.blob_labels)
    done = 0
    for chunk in _chunks(container.blob_labels):
        if progress:
            progress(done, total, chunk[0][1])
        try:  # one request for the whole chunk; on failure, blob by blob to name each
            datas = blobs.fetch(chunk)
        except KFormatError:
            datas = None
        for k, (ref, label) in enumerate(chunk):
            try:
                data = datas[k] if datas is not None else blobs.fetch([(ref, label)])[0]
                blobs.check(ref, data, label)
                if id(ref) in tile_of:
                    t, tile = tile_of[id(ref)]
                    decode_plane(t, tile, data, f"{container.source}: {label}")
                elif id(ref) in table_of:
                    tables.decode(*table_of[id(ref)], data)
            except KFormatError as exc:
                problems.append(Problem(label, str(exc)))
        done += len(chunk)
    if progress:
        progress(total, total, "")
    return problems


__all__ = ["Problem", "verify", "tile_label"]
