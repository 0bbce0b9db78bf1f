"""Streaming a tensor's tiles: fetch batches of whole row bands in stored order, the next
batch in the background while the caller decodes the current one."""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterator

from ..format.manifest import TensorEntry, Tile
from .tables import TableCache, tile_label

BATCH_BYTES = 4 << 20  # tiles fetched per request while streaming: whole row bands, about this much
AHEAD = 2  # batches fetched ahead of the one being decoded


def tile_batches(tensor: TensorEntry, batch_bytes: int = BATCH_BYTES) -> list[list[int]]:
    """Tile indices in fetch batches: whole row bands, each about `batch_bytes` stored."""
    batches: list[list[int]] = []
    current: list[int] = []
    size = 0
    for i, tile in enumerate(tensor.tiles):
        if current and tile.col == 0 and size >= batch_bytes:
            batches.append(current)
            current, size = [], 0
        current.append(i)
        size += tile.blob.length
    if current:
        batches.append(current)
    return batches


class TileStream:
    """Background fetching for one container: prefetch a tensor's first batch (with its
    tables, in the same request), and iterate tiles with one batch fetched ahead."""

    def __init__(self, tables: TableCache, check_open: Callable[[], None]):
        self.tables = tables
        self._check_open = check_open
        self._executor: ThreadPoolExecutor | None = None
        self._prefetched: dict[str, tuple[list[list[int]], Future]] = {}
        self._lock = threading.Lock()

    def _background(self) -> ThreadPoolExecutor:
        with self._lock:
            self._check_open()
            if self._executor is None:
                self._executor = ThreadPoolExecutor(AHEAD + 2, thread_name_prefix="kformat-fetch")
            return self._executor

    def _fetch_batch(self, tensor: TensorEntry, batch: list[int]) -> list[bytes]:
        """A batch's tile blobs, with the tensor's tables when not cached yet (one request)."""
        return self.tables.fetch(tensor, self.tables.missing(tensor), batch)

    def prefetch(self, tensor: TensorEntry, batch_bytes: int = BATCH_BYTES) -> None:
        """Start fetching a tensor's tables and first batch of tiles in the background."""
        batches = tile_batches(tensor, batch_bytes)
        if not batches:
            return
        with self._lock:
            if tensor.name in self._prefetched:
                return
        future = self._background().submit(self._fetch_batch, tensor, batches[0])
        with self._lock:
            self._prefetched[tensor.name] = (batches, future)

    def discard(self, name: str) -> None:
        with self._lock:
            item = self._prefetched.pop(name, None)
        if item is not None:
            item[1].cancel()

    def iter_tiles(
        self, tensor: TensorEntry, batch_bytes: int = BATCH_BYTES
    ) -> Iterator[tuple[Tile, bytes, str]]:
        """(tile, checked blob, label) in stored order; the next AHEAD batches are fetched
        while the caller works on one (requests overlap, so a link with latency stays busy), so
        at most AHEAD + 2 batches are held at once."""
        with self._lock:
            item = self._prefetched.pop(tensor.name, None)
        batches = tile_batches(tensor, batch_bytes)
        if not batches:
            return
        pending: deque[Future] = deque()
        if item is not None and item[0] == batches:
            pending.append(item[1])
        try:
            for k, batch in enumerate(batches):
                while len(pending) < AHEAD + 1 and k + len(pending) < len(batches):
                    pending.append(
                        self._background().submit(self._fetch_batch, tensor, batches[k + len(pending)])
                    )
                datas = pending.popleft().result()
                for i, data in zip(batch, datas):
                    yield tensor.tiles[i], data, tile_label(tensor, i)
                del datas
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
            self._prefetched.clear()
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
