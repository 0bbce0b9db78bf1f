"""An open container: one object over the jobs of the load journey.

opening (URL, layout, header, manifest, validation) -> blobs (ranges, length and hash
checks) -> tables (decoded once, cached) -> stream (batched tile fetches, prefetch) ->
decode (codec, then method) -> verify. Each job is a module of kformat.loading; this class
holds them together for one file and is what LazyModel, unpack and verify use.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import numpy as np

from ..errors import LimitError, StorageError, TensorNotFound
from ..format.constants import MAX_MANIFEST_BYTES
from ..format.dtypes import numpy_dtype
from ..format.manifest import BlobRef, TensorEntry, Tile
from ..methods import get_method
from . import mapped, trim
from .blobs import BlobReader, Labelled
from .decode import decode_plane, fill_tile
from .overlap import read_overlapped
from .opening import OPEN_READ, Opened, open_url
from .store import ByteRange
from .stream import BATCH_BYTES, TileStream, tile_batches
from .tables import TableCache, tile_label
from .verify import Problem, verify

__all__ = ["BATCH_BYTES", "OPEN_READ", "Container", "Problem", "open_container"]

DECODE_THREADS = min(8, os.cpu_count() or 1)
CHECK_FILES_ABOVE = 64 << 20  # allocations above this first check that the files hold the blobs


PREFETCH_TENSORS = 16


def _checking(container: "Container") -> Callable[[], None]:
    """container._check_open, through a weak reference: the stream the container owns would
    otherwise hold it in a cycle, and an unclosed container's files, manifest and tables
    would wait for the garbage collector."""
    ref = weakref.ref(container)

    def check() -> None:
        alive = ref()
        if alive is not None:
            alive._check_open()

    return check


class Container:
    """An opened kformat container (single file or sharded directory)."""

    def __init__(self, opened: Opened, max_tensor_bytes: int | None = None):
        self.store = opened.store
        self.key = opened.key
        self.manifest = opened.manifest
        self.manifest_sha256 = opened.manifest_sha256
        self.data_offset = opened.data_offset
        self.manifest_end = opened.manifest_end
        self.blob_labels = opened.blobs
        self.tensors: dict[str, TensorEntry] = {t.name: t for t in self.manifest.tensors}
        self.tensors.update({alias: self.tensors[name] for alias, name in self.manifest.aliases.items()})
        self.blobs = BlobReader(self.store, self.key, self.manifest, self.data_offset)
        self.table_cache = TableCache(self.blobs)
        self._stream = TileStream(self.table_cache, _checking(self))
        self.max_tensor_bytes = max_tensor_bytes
        self.decode_threads = DECODE_THREADS
        self._decode_pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._sizes: dict[str, int] = {}
        self.closed = False

    @classmethod
    def open(
        cls,
        url: str,
        *,
        max_manifest: int = MAX_MANIFEST_BYTES,
        manifest_sha256: str | None = None,
        max_tensor_bytes: int | None = None,
        **storage_options,
    ) -> "Container":
        """Open a single file, a sharded directory, or a directory's manifest.kf.

        `manifest_sha256` pins the manifest (the hex digest `kformat inspect` prints): every
        blob's hash is in the manifest, so a pinned manifest makes every byte read trusted.
        Without it the hashes catch corruption, not forgery (spec/FORMAT.md, security model).
        `max_tensor_bytes` refuses to materialise any tensor larger than that (LimitError).
        """
        return cls(open_url(url, max_manifest, manifest_sha256, **storage_options), max_tensor_bytes)

    @property
    def source(self) -> str:
        return self.store.describe(self.key)

    def close(self) -> None:
        """Stop background fetches and drop cached tables; the container is unusable after."""
        self.closed = True
        with self._pool_lock:
            pool, self._decode_pool = self._decode_pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        self._stream.close()
        self.table_cache.clear()
        self.store.close()

    def _check_open(self) -> None:
        if self.closed:
            raise StorageError(f"{self.source}: the model is closed")

    def __enter__(self) -> "Container":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- blobs and tables ------------------------------------------------------------------
    def blob_range(self, ref: BlobRef) -> ByteRange:
        return self.blobs.blob_range(ref)

    def read_blobs(self, items: list[Labelled]) -> list[bytes]:
        """Fetch several blobs in as few requests as possible, each checked."""
        self._check_open()
        return self.blobs.read(items)

    def entry(self, name: str) -> TensorEntry:
        try:
            return self.tensors[name]
        except KeyError:
            raise TensorNotFound(f"{self.source}: no tensor named {name!r}") from None

    def table(self, tensor: TensorEntry, which: str) -> np.ndarray:
        return self.table_cache.get(tensor, which)

    def tables(self, tensor: TensorEntry) -> dict[str, np.ndarray]:
        """The tables the tensor's method needs, by name (none for fp16 and raw)."""
        return self.table_cache.of(tensor)

    # -- tiles -----------------------------------------------------------------------------
    tile_label = staticmethod(tile_label)
    tile_batches = staticmethod(tile_batches)

    def decode_tile(self, tensor: TensorEntry, tile: Tile, data: bytes, label: str) -> np.ndarray:
        """A tile's plane: uint8 codes for code methods, stored values otherwise."""
        return decode_plane(tensor, tile, data, f"{self.source}: {label}")

    def prefetch(self, name: str, batch_bytes: int = BATCH_BYTES) -> None:
        """Start fetching a tensor's tables and first batch of tiles in the background."""
        self._stream.prefetch(self.entry(name), batch_bytes)

    def discard_prefetch(self, name: str) -> None:
        entry = self.tensors.get(name)
        self._stream.discard(entry.name if entry is not None else name)

    def iter_tiles(self, name: str, batch_bytes: int = BATCH_BYTES) -> Iterator[tuple[Tile, bytes, str]]:
        """(tile, checked blob, label) in stored order, one batch fetched ahead."""
        return self._stream.iter_tiles(self.entry(name), batch_bytes)

    def iter_planes(self, name: str, batch_bytes: int = BATCH_BYTES) -> Iterator[tuple[Tile, np.ndarray]]:
        """(tile, decoded plane) in stored order: codes for code methods, values otherwise."""
        tensor = self.entry(name)
        for tile, data, label in self.iter_tiles(name, batch_bytes):
            yield tile, self.decode_tile(tensor, tile, data, label)

    def allocate(self, t: TensorEntry, shape: tuple[int, ...], dtype) -> np.ndarray:
        """An array for (a form of) tensor `t`, only once the file can back it: within the
        reader's `max_tensor_bytes`, and, when large, only if the files really hold the
        tensor's blobs; a failed allocation is a LimitError naming the tensor."""
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        if self.max_tensor_bytes is not None and nbytes > self.max_tensor_bytes:
            raise LimitError(
                f"{self.source}: tensor {t.name!r} needs {nbytes} bytes, more than max_tensor_bytes"
                f" {self.max_tensor_bytes}"
            )
        if nbytes > CHECK_FILES_ABOVE:
            self._check_files_hold(t)
        try:
            return mapped.empty(shape, dtype, defer=self._populating)
        except MemoryError:
            raise LimitError(f"{self.source}: tensor {t.name!r}: cannot allocate {nbytes} bytes") from None

    def _populating(self, populate: Callable[[], None]) -> None:
        """A large output's pages are faulted in on a decode thread (kformat.loading.mapped),
        beside the tiles being decoded: in this thread they held up the next tensor's tiles."""
        self.decoders().submit(populate)

    def _output_dtype(self, t: TensorEntry) -> np.dtype:
        """float32 for lossy rules, the original dtype for lossless ones."""
        return numpy_dtype(t.dtype) if get_method(t.quant.method).lossless else np.dtype(np.float32)

    def output_bytes(self, t: TensorEntry) -> int:
        return math.prod(t.view) * self._output_dtype(t).itemsize

    def output(self, t: TensorEntry) -> np.ndarray:
        """The 2-D array tensor `t` decodes into (allocate's checks apply)."""
        return self.allocate(t, tuple(t.view), self._output_dtype(t))

    def _check_files_hold(self, t: TensorEntry) -> None:
        """The file (or each shard) is long enough for every blob of `t`: a forged manifest
        cannot make a reader allocate for blobs that are not there."""
        ends: dict[str, int] = {}
        for ref in [tile.blob for tile in t.tiles] + [table.blob for _, table in t.quant.named_tables()]:
            where = self.blob_range(ref)
            ends[where.key] = max(ends.get(where.key, 0), where.end)
        for key, end in ends.items():
            if key not in self._sizes:
                self._sizes[key] = self.store.size(key)
            if self._sizes[key] < end:
                raise StorageError(
                    f"{self.store.describe(key)}: {self._sizes[key]} bytes, but tensor {t.name!r} has blobs"
                    f" up to byte {end}; the file is shorter than the manifest says (truncated?)"
                )

    def read_tensor(
        self, name: str, out: np.ndarray | None = None, batch_bytes: int = BATCH_BYTES
    ) -> np.ndarray:
        """The whole tensor: float32 for lossy rules, the original dtype for lossless ones.

        With `out` (an array of the 2-D view's shape and that dtype) each tile is written
        straight into it, so nothing but one tile is held besides."""
        t = self.entry(name)
        if len(t.tiles) != 1:  # on the decode threads, as read_all reads every tensor
            read = read_overlapped(self, [name], output=lambda *_: out, batch_bytes=lambda _: batch_bytes)
            ((_, array),) = read  # (run to its end: its prefetch is discarded there)
            return array
        out = self.output(t) if out is None else out  # one tile: decoded here, no thread hand-off
        tables = self.tables(t)
        for tile, data, label in self.iter_tiles(name, batch_bytes):
            fill_tile(t, tile, data, f"{self.source}: {label}", tables, out)
        trim.after_tensor(out.nbytes)
        return out.reshape(t.shape)

    def decoders(self) -> ThreadPoolExecutor:
        """Tiles decode on every core: zlib, zstd, hashing and numpy release the GIL."""
        with self._pool_lock:
            self._check_open()
            if self._decode_pool is None:
                self._decode_pool = ThreadPoolExecutor(
                    self.decode_threads, thread_name_prefix="kformat-decode"
                )
            return self._decode_pool

    def prefetching(self, names: list[str], window: int, batch_bytes=None) -> Iterator[str]:
        """Each name in order, while the next tensors' tables and first batches are fetched
        in the background: about `window` stored bytes ahead, at least the next tensor and at
        most PREFETCH_TENSORS, so runs of small tensors do not wait on a request each.
        `batch_bytes(name)` gives a tensor's batch size (default BATCH_BYTES)."""
        stored = [self.entry(name).stored_bytes for name in names]
        ahead = -1  # the last tensor whose first batch is on the way
        try:
            for i, name in enumerate(names):
                while (
                    ahead + 1 < len(names)
                    and ahead - i < PREFETCH_TENSORS
                    and (ahead <= i or sum(stored[i + 1 : ahead + 1]) < window)
                ):
                    ahead += 1
                    size = BATCH_BYTES if batch_bytes is None else batch_bytes(names[ahead])
                    self.prefetch(names[ahead], size)
                yield name
                self.discard_prefetch(name)
        finally:
            for name in names:
                self.discard_prefetch(name)

    def read_all(self) -> Iterator[tuple[str, np.ndarray]]:
        """(name, tensor) in file order, the next tensors fetched while the current one decodes
        and started while its last tiles decode (kformat.loading.overlap)."""
        return read_overlapped(self, [t.name for t in self.manifest.tensors], tied=self.manifest.aliases_of())

    def verify(self, progress=None) -> list[Problem]:
        """Check every blob's length and hash and that every plane and table decodes; list problems."""
        return verify(self, progress)


def open_container(url: str, **storage_options) -> Container:
    return Container.open(url, **storage_options)
