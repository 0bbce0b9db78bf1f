"""Fetching blobs: where each lives (file or shard), and a length and SHA-256 check of every
blob before anything decodes it."""

from __future__ import annotations

import hashlib

from ..errors import IntegrityError, NotFound
from ..format.constants import SHARD_DIR
from ..format.manifest import BlobRef, Manifest
from .store import ByteRange, Store

Labelled = tuple[BlobRef, str]  # a blob and how messages name it ("tensor 'w' tile 3 ...")


class BlobReader:
    """Reads checked blobs of one container through its store."""

    def __init__(self, store: Store, key: str, manifest: Manifest, data_offset: int):
        self.store = store
        self.key = key  # the single file's key, or the manifest's in a sharded directory
        self.data_offset = data_offset
        self._shards = [s.name for s in manifest.shards] if manifest.layout == "sharded" else None

    @property
    def source(self) -> str:
        return self.store.describe(self.key)

    def blob_range(self, ref: BlobRef) -> ByteRange:
        if self._shards is not None:
            return ByteRange(f"{SHARD_DIR}/{self._shards[ref.shard]}", ref.offset, ref.offset + ref.length)
        start = self.data_offset + ref.offset
        return ByteRange(self.key, start, start + ref.length)

    def check(self, ref: BlobRef, data: bytes, label: str) -> bytes:
        if len(data) != ref.length:
            raise IntegrityError(f"{self.source}: {label}: got {len(data)} bytes, expected {ref.length}")
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            where = self.blob_range(ref)
            raise IntegrityError(
                f"{self.source}: {label}: hash mismatch (bytes {where.start}..{where.end}"
                f" of {where.key or 'the file'}); the blob is corrupted"
            )
        return data

    def fetch(self, items: list[Labelled]) -> list[bytes]:
        """The blobs' bytes, unchecked, in as few requests as possible."""
        try:
            return self.store.read_many([self.blob_range(ref) for ref, _ in items])
        except NotFound as exc:
            raise NotFound(
                f"{exc} (a shard the manifest lists is missing; was the directory copied whole?)"
            ) from None

    def read(self, items: list[Labelled]) -> list[bytes]:
        """Several blobs, each checked, in as few requests as possible."""
        return [self.check(ref, data, label) for (ref, label), data in zip(items, self.fetch(items))]
