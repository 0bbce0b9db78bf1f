"""verify: every byte of a container is accounted for.

Each file (the single file, or every shard) is read once, front to back, in chunks of about
BATCH_BYTES: every blob's length and SHA-256 are checked and its plane or table decoded; the
bytes between blobs and before the data region must be zero; nothing may follow the last
blob (a shard ends exactly at its manifest length); and a shard's content must hash to the
name it is published under. A chunk that cannot be read is retried blob by blob, so each
failure names its blob.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..errors import KFormatError
from ..format.constants import SHARD_DIR
from ..progress import Tracker
from .decode import decode_plane
from .stream import BATCH_BYTES
from .tables import tile_label

if TYPE_CHECKING:
    from .container import Container


@dataclass(frozen=True)
class Problem:
    """One failed check found by verify: which blob or byte range, and what is wrong."""

    label: str
    message: str


@dataclass
class _File:
    """One file's blobs, where its data region starts, and what its whole content must be."""

    key: str
    label: str
    base: int  # offset of the data region in the file
    items: list  # (BlobRef, label), by offset
    length: int | None = None  # exact size of a shard
    sha256: str | None = None  # a shard's content hash (its name)


def _chunks(items, limit: int):
    chunk, size = [], 0
    for ref, label in items:
        if chunk and size + ref.length > limit:
            yield chunk
            chunk, size = [], 0
        chunk.append((ref, label))
        size += ref.length
    if chunk:
        yield chunk


def _files(container: "Container") -> list[_File]:
    by_shard: dict[int, list] = {}
    for item in sorted(container.blob_labels, key=lambda item: (item[0].shard, item[0].offset)):
        by_shard.setdefault(item[0].shard, []).append(item)
    manifest = container.manifest
    if manifest.layout == "sharded":
        return [
            _File(f"{SHARD_DIR}/{s.name}", f"shard {s.name}", 0, by_shard.get(i, []), s.length, s.sha256)
            for i, s in enumerate(manifest.shards)
        ]
    return [_File(container.key, "file", container.data_offset, by_shard.get(0, []))]


class _Checker:
    def __init__(self, container: "Container", problems: list[Problem]):
        self.container = container
        self.problems = problems
        tile_of, table_of = {}, {}
        for t in container.manifest.tensors:
            for tile in t.tiles:
                tile_of[id(tile.blob)] = (t, tile)
            for which, table in t.quant.named_tables():
                table_of[id(table.blob)] = (t, which)
        self.tile_of, self.table_of = tile_of, table_of

    def blob(self, ref, label: str, data: bytes | None) -> None:
        c = self.container
        try:
            if data is None:
                data = c.blobs.fetch([(ref, label)])[0]
            c.blobs.check(ref, data, label)
            if id(ref) in self.tile_of:
                t, tile = self.tile_of[id(ref)]
                decode_plane(t, tile, data, f"{c.source}: {label}")
            elif id(ref) in self.table_of:
                c.table_cache.decode(*self.table_of[id(ref)], data)
        except KFormatError as exc:
            self.problems.append(Problem(label, str(exc)))

    def zeros(self, f: _File, data: bytes, start: int) -> None:
        """`data` (file bytes from offset `start`) must be all zero."""
        if data.count(0) != len(data):
            first = next(i for i, b in enumerate(data) if b)
            self.problems.append(
                Problem(
                    f"{f.label} bytes {start}..{start + len(data)}",
                    f"padding must be zero: byte {start + first} is {data[first]:#04x}",
                )
            )

    def file(self, f: _File, progress: Callable[[str, int, int], None]) -> None:
        store = self.container.store
        try:
            size = store.size(f.key)
        except KFormatError as exc:
            self.problems.append(Problem(f.label, str(exc)))
            for ref, label in f.items:
                self.blob(ref, label, None)
            return
        end = max((ref.offset + ref.length for ref, _ in f.items), default=0)
        expected = f.length if f.length is not None else f.base + end
        if size < expected:
            self.problems.append(Problem(f.label, f"truncated: {size} bytes, blobs end at {expected}"))
        elif size > expected:
            what = "its manifest length" if f.length is not None else "the last blob"
            extra = f"{size - expected} bytes after {what} (ends at {expected})"
            self.problems.append(Problem(f.label, extra))
        digest = hashlib.sha256() if f.sha256 else None
        position = 0  # bytes of the data region checked so far
        for chunk in _chunks(f.items, BATCH_BYTES):
            stop = chunk[-1][0].offset + chunk[-1][0].length
            progress(chunk[0][1], len(chunk), sum(ref.length for ref, _ in chunk))
            try:  # one request for the chunk and the padding in it
                data = store.read(f.key, f.base + position, f.base + stop)
            except KFormatError:
                digest = None
                for ref, label in chunk:  # blob by blob, to name each failure
                    self.blob(ref, label, None)
                position = stop
                continue
            if digest is not None:
                digest.update(data)
            cursor = position
            for ref, label in chunk:
                self.zeros(f, data[cursor - position : ref.offset - position], f.base + cursor)
                self.blob(ref, label, data[ref.offset - position : ref.offset - position + ref.length])
                cursor = ref.offset + ref.length
            position = stop
        tail_end = min(size, f.length) if f.length is not None else position
        if position < tail_end:  # a shard's bytes after its last blob
            try:
                tail = store.read(f.key, position, tail_end)
                self.zeros(f, tail, position)
                if digest is not None:
                    digest.update(tail)
            except KFormatError as exc:
                self.problems.append(Problem(f.label, str(exc)))
                digest = None
        if digest is not None and size == f.length and digest.hexdigest() != f.sha256:
            altered = f"content hashes to {digest.hexdigest()}, not its name: the shard was altered"
            self.problems.append(Problem(f.label, altered))


def verify(container: "Container", progress: Callable[[int, int, str], None] | None = None) -> list[Problem]:
    """Every problem found; an empty list means the container is intact."""
    problems: list[Problem] = []
    checker = _Checker(container, problems)
    tracker = Tracker(
        progress, len(container.blob_labels), sum(ref.length for ref, _ in container.blob_labels)
    )

    def advance(label: str, count: int, nbytes: int) -> None:
        tracker.start(label)
        tracker.finish_item(nbytes, count)

    if container.manifest.layout == "single" and container.data_offset > container.manifest_end:
        try:  # the padding between the manifest and the data region
            gap = container.store.read(container.key, container.manifest_end, container.data_offset)
            checker.zeros(_File(container.key, "file", 0, []), gap, container.manifest_end)
        except KFormatError as exc:
            problems.append(Problem("file", str(exc)))
    for f in _files(container):
        checker.file(f, advance)
    tracker.close()
    return problems


__all__ = ["Problem", "verify", "tile_label"]
