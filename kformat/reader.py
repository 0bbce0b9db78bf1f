"""Open a container on any fsspec URL and read tensors, tiles and tables from it.

Opening reads the header and manifest only: for a single file one range read of the first
OPEN_READ bytes and a second one only when the manifest is longer; for a sharded directory
one read of manifest.kf. Blobs are read on demand in batches of whole row bands (the next
batch fetched while the current one is decoded), their length and SHA-256 checked before
any decoding.
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator
from pathlib import PurePosixPath

import numpy as np

from .codecs import get_codec
from .dequant import TABLES_OF, dequantize_plane
from .errors import DecodeError, FormatError, IntegrityError, KFormatError, NotFound, StorageError, TensorNotFound
from .header import decode_header, decode_manifest
from .schema import HEADER_SIZE, MANIFEST_NAME, MAX_MANIFEST_BYTES, SHARD_DIR, BlobRef, Manifest, Table, TensorEntry, Tile
from .store import ByteRange, Store
from .validate import validate_manifest

OPEN_READ = 16 << 10  # first read of a single file: the header and, usually, the manifest
BATCH_BYTES = 4 << 20  # tiles fetched per request while streaming: whole row bands, about this much


@dataclass(frozen=True)
class Problem:
    """One failed check found by verify: which blob, and what is wrong."""

    label: str
    message: str


def _table_array(data: bytes, table: Table) -> np.ndarray:
    return np.frombuffer(data, dtype=np.dtype(table.dtype).newbyteorder("<")).reshape(table.shape)


def _pinned_digest(pin: str | None) -> bytes | None:
    if pin is None:
        return None
    try:
        digest = bytes.fromhex(pin)
    except (TypeError, ValueError):
        digest = b""
    if len(digest) != 32:
        raise KFormatError(f"manifest_sha256 must be 64 hex digits, got {pin!r}")
    return digest


class Container:
    """A opened kformat container (single file or sharded directory)."""

    def __init__(self, store: Store, key: str, manifest: Manifest, data_offset: int, blobs):
        self.store = store
        self.key = key  # the single file's key, or the manifest's in a sharded directory
        self.manifest = manifest
        self.manifest_sha256 = ""  # hex digest from the header, set by open()
        self.data_offset = data_offset
        self.blob_labels = blobs
        self.tensors: dict[str, TensorEntry] = {t.name: t for t in manifest.tensors}
        self._tables: dict[str, np.ndarray] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._prefetched: dict[str, tuple[list[list[int]], Future]] = {}
        self._lock = threading.Lock()
        self.closed = False

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, url: str, *, max_manifest: int = MAX_MANIFEST_BYTES, manifest_sha256: str | None = None,
             **storage_options) -> "Container":
        """Open a single file, a sharded directory, or a directory's manifest.kf.

        `manifest_sha256` pins the manifest (the hex digest `kformat inspect` prints): every
        blob's hash is in the manifest, so a pinned manifest makes every byte read trusted.
        Without it the hashes catch corruption, not forgery (spec/FORMAT.md, security model).

        A directory is recognised without reading data: by a trailing "/", or by asking the
        filesystem when that is free (local, memory, object stores). On HTTP, where asking
        would download the URL, a name ending in ".kf" is a file and anything else is tried
        as a file first and then as a directory (one extra request: end directory URLs with
        "/" to save it).
        """
        url = str(url)
        store = Store.from_url(url, **storage_options)
        directory = True if url.endswith("/") else store.is_dir()
        pin = _pinned_digest(manifest_sha256)
        if directory:
            return cls._open_key(store, MANIFEST_NAME, max_manifest, pin)
        if directory is False or PurePosixPath(store.root).name.endswith(".kf"):
            return cls._open_key(store, "", max_manifest, pin)
        try:
            return cls._open_key(store, "", max_manifest, pin)
        except (FormatError, StorageError) as exc:
            if isinstance(exc, FormatError) and "bad magic" not in str(exc):
                raise
            try:
                return cls._open_key(store, MANIFEST_NAME, max_manifest, pin)
            except KFormatError:
                raise exc from None

    @classmethod
    def _open_key(cls, store: Store, key: str, max_manifest: int, pin: bytes | None = None) -> "Container":
        try:
            return cls._open_key_once(store, key, max_manifest, pin)
        except (FormatError, StorageError) as exc:
            # A cached copy cut short by a killed reader looks truncated: drop it, read again.
            if ("truncated" in str(exc) or "bad magic" in str(exc)) and store.evict_cached(key):
                return cls._open_key_once(store, key, max_manifest, pin)
            raise

    @classmethod
    def _open_key_once(cls, store: Store, key: str, max_manifest: int, pin: bytes | None = None) -> "Container":
        source = store.describe(key)
        # A sharded manifest is a file of its own: read it whole, in one request. A single
        # file starts with a guess; the rest of a longer manifest is a second read.
        first = HEADER_SIZE + max_manifest if key == MANIFEST_NAME else OPEN_READ
        head = store.read_prefix(key, first)
        header = decode_header(head, source, max_manifest)
        if pin is not None and header.manifest_sha256 != pin:
            raise IntegrityError(
                f"{source}: manifest SHA-256 is {header.manifest_sha256.hex()}, pinned {pin.hex()}: not the expected model"
            )
        end = HEADER_SIZE + header.manifest_length
        body = head[HEADER_SIZE:end]
        if len(body) < header.manifest_length and len(head) == first:
            try:
                body += store.read(key, len(head), end)
            except StorageError as exc:
                raise FormatError(f"{source}: truncated inside the manifest ({exc})") from None
        manifest = decode_manifest(body, header, source)
        if manifest.layout == "sharded":
            if header.data_offset:
                raise FormatError(f"{source}: a sharded manifest has a data region")
            if key != MANIFEST_NAME or store.root.endswith(MANIFEST_NAME):
                # Opened as the manifest file itself: shards live next to it.
                parent = str(PurePosixPath(store.path(key)).parent)
                url = store.describe(key).rsplit("/", 1)[0]
                store, key = store.child(parent, url), PurePosixPath(store.path(key)).name
        elif not header.data_offset:
            raise FormatError(f"{source}: a single-file container without a data region")
        blobs = validate_manifest(manifest, source)
        container = cls(store, key, manifest, header.data_offset, blobs)
        container.manifest_sha256 = header.manifest_sha256.hex()
        return container

    @property
    def source(self) -> str:
        return self.store.describe(self.key)

    def close(self) -> None:
        """Stop background fetches and drop cached tables; the container is unusable after."""
        self.closed = True
        with self._lock:
            executor, self._executor = self._executor, None
            self._prefetched.clear()
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        self._tables.clear()

    def _check_open(self) -> None:
        if self.closed:
            raise StorageError(f"{self.source}: the model is closed")

    def _background(self) -> ThreadPoolExecutor:
        with self._lock:
            self._check_open()
            if self._executor is None:
                self._executor = ThreadPoolExecutor(2, thread_name_prefix="kformat-fetch")
            return self._executor

    def __enter__(self) -> "Container":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- blobs ---------------------------------------------------------------------------
    def blob_range(self, ref: BlobRef) -> ByteRange:
        if self.manifest.layout == "sharded":
            return ByteRange(f"{SHARD_DIR}/{self.manifest.shards[ref.shard].name}", ref.offset, ref.offset + ref.length)
        start = self.data_offset + ref.offset
        return ByteRange(self.key, start, start + ref.length)

    def check_blob(self, ref: BlobRef, data: bytes, label: str) -> bytes:
        if len(data) != ref.length:
            raise IntegrityError(f"{self.source}: {label}: got {len(data)} bytes, expected {ref.length}")
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            where = self.blob_range(ref)
            raise IntegrityError(
                f"{self.source}: {label}: hash mismatch (bytes {where.start}..{where.end}"
                f" of {where.key or 'the file'}); the blob is corrupted"
            )
        return data

    def read_blobs(self, items: list[tuple[BlobRef, str]]) -> list[bytes]:
        """Fetch several blobs in as few requests as possible, each checked."""
        self._check_open()
        try:
            datas = self.store.read_many([self.blob_range(ref) for ref, _ in items])
        except NotFound as exc:
            raise NotFound(f"{exc} (a shard the manifest lists is missing; was the directory copied whole?)") from None
        return [self.check_blob(ref, data, label) for (ref, label), data in zip(items, datas)]

    def table(self, tensor: TensorEntry, which: str) -> np.ndarray:
        key = f"{tensor.name}\0{which}"
        if key not in self._tables:
            self._fetch_tables(tensor, [which])
        return self._tables[key]

    def tables(self, tensor: TensorEntry) -> dict[str, np.ndarray]:
        """The tables the tensor's method needs, by name (none for fp16 and raw)."""
        return {which: self.table(tensor, which) for which in TABLES_OF.get(tensor.quant.method, ())}

    def _fetch_tables(self, tensor: TensorEntry, names: list[str], tiles: Iterable[int] = ()) -> list[bytes]:
        """Fetch and cache the named tables, with the given tiles in the same request; the
        tiles' blobs are returned."""
        q = tensor.quant
        items = [(getattr(q, n).blob, f"tensor {tensor.name!r} {n}") for n in names]
        items += [(tensor.tiles[i].blob, self.tile_label(tensor, i)) for i in tiles]
        datas = self.read_blobs(items)
        for n, data in zip(names, datas):
            self._tables[f"{tensor.name}\0{n}"] = self.decode_table(tensor, n, data)
        return datas[len(names):]

    def decode_table(self, tensor: TensorEntry, which: str, data: bytes) -> np.ndarray:
        table = _table_array(data, getattr(tensor.quant, which))
        if table.dtype.kind == "f" and not np.isfinite(table).all():
            # Writers never store these (NaN/Inf input is refused), so a reader never serves them.
            raise DecodeError(f"{self.source}: tensor {tensor.name!r} {which} holds NaN or infinite values")
        largest = float(np.abs(table).max()) if which == "scale" and table.size else 0.0
        if largest * 255 > np.finfo(np.float32).max:  # codes times scale must stay finite
            raise DecodeError(f"{self.source}: tensor {tensor.name!r} scale {largest:g} overflows float32")
        return table

    # -- tiles ---------------------------------------------------------------------------
    @staticmethod
    def tile_label(tensor: TensorEntry, index: int) -> str:
        tile = tensor.tiles[index]
        return f"tensor {tensor.name!r} tile {index} (rows {tile.row}..{tile.row + tile.rows}, cols {tile.col}..{tile.col + tile.cols})"

    def decode_tile(self, tensor: TensorEntry, tile: Tile, data: bytes, label: str) -> np.ndarray:
        """A tile's plane: uint8 codes for kmeans/linear, stored values otherwise."""
        codec = get_codec(tensor.codec)
        try:
            if tensor.depth is not None:
                entries = 1 << int(tensor.quant.bits)
                return codec.decode_codes(data, tile.rows, tile.cols, tensor.depth, entries)
            return codec.decode_values(data, tile.rows, tile.cols, np.dtype(tensor.storage))
        except DecodeError as exc:
            raise DecodeError(f"{self.source}: {label}: {exc}") from None

    def dequantize_tile(self, tensor: TensorEntry, tile: Tile, plane: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """float32 values of a decoded tile plane."""
        q = tensor.quant
        return dequantize_plane(q.method, plane, tile.row, q.group_rows, out=out, **self.tables(tensor))

    def entry(self, name: str) -> TensorEntry:
        try:
            return self.tensors[name]
        except KeyError:
            raise TensorNotFound(f"{self.source}: no tensor named {name!r}") from None

    # -- streaming -----------------------------------------------------------------------
    @staticmethod
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

    def _fetch_batch(self, tensor: TensorEntry, batch: list[int]) -> list[bytes]:
        """A batch's tile blobs, with the tensor's tables when not cached yet (one request)."""
        names = TABLES_OF.get(tensor.quant.method, ())
        missing = [n for n in names if f"{tensor.name}\0{n}" not in self._tables]
        return self._fetch_tables(tensor, missing, batch)

    def prefetch(self, name: str, batch_bytes: int = BATCH_BYTES) -> None:
        """Start fetching a tensor's tables and first batch of tiles in the background."""
        tensor = self.entry(name)
        batches = self.tile_batches(tensor, batch_bytes)
        if not batches:
            return
        with self._lock:
            if name in self._prefetched:
                return
        future = self._background().submit(self._fetch_batch, tensor, batches[0])
        with self._lock:
            self._prefetched[name] = (batches, future)

    def discard_prefetch(self, name: str) -> None:
        with self._lock:
            item = self._prefetched.pop(name, None)
        if item is not None:
            item[1].cancel()

    def iter_tiles(self, name: str, batch_bytes: int = BATCH_BYTES) -> Iterator[tuple[Tile, bytes, str]]:
        """(tile, checked blob, label) in stored order; batch k+1 is fetched while the
        caller works on batch k, so at most about three batches are held at once."""
        tensor = self.entry(name)
        with self._lock:
            item = self._prefetched.pop(name, None)
        batches = self.tile_batches(tensor, batch_bytes)
        if item is not None and item[0] == batches:
            pending = item[1]
        elif not batches:
            return
        else:
            pending = self._background().submit(self._fetch_batch, tensor, batches[0])
        try:
            for k, batch in enumerate(batches):
                following = None
                if k + 1 < len(batches):
                    following = self._background().submit(self._fetch_batch, tensor, batches[k + 1])
                datas = pending.result()
                pending = following
                for i, data in zip(batch, datas):
                    yield tensor.tiles[i], data, self.tile_label(tensor, i)
                del datas
        finally:
            if pending is not None:
                pending.cancel()

    def iter_planes(self, name: str, batch_bytes: int = BATCH_BYTES) -> Iterator[tuple[Tile, np.ndarray]]:
        """(tile, decoded plane) in stored order: codes for kmeans/linear, values otherwise."""
        tensor = self.entry(name)
        for tile, data, label in self.iter_tiles(name, batch_bytes):
            yield tile, self.decode_tile(tensor, tile, data, label)

    def read_tensor(self, name: str, out: np.ndarray | None = None, batch_bytes: int = BATCH_BYTES) -> np.ndarray:
        """The whole tensor: float32 for lossy rules, the original dtype for raw ones.

        With `out` (an array of the 2-D view's shape and that dtype) each tile is written
        straight into it, so nothing but one tile is held besides."""
        t = self.entry(name)
        lossless = t.quant.method == "raw"
        if out is None:
            out = np.empty(tuple(t.view), dtype=np.dtype(t.dtype) if lossless else np.float32)
        for tile, plane in self.iter_planes(name, batch_bytes):
            region = out[tile.row : tile.row + tile.rows, tile.col : tile.col + tile.cols]
            if lossless:
                region[...] = plane
            else:
                self.dequantize_tile(t, tile, plane, out=region)
        return out.reshape(t.shape)

    # -- verify --------------------------------------------------------------------------
    def _verify_chunks(self):
        """Blobs in stored order, in chunks of about BATCH_BYTES (per shard or file)."""
        order = sorted(self.blob_labels, key=lambda item: (item[0].shard, item[0].offset))
        by_shard: dict[int, list] = {}
        for item in order:
            by_shard.setdefault(item[0].shard, []).append(item)
        for items in by_shard.values():
            yield from _chunked(items, BATCH_BYTES)

    def verify(self, progress=None) -> list[Problem]:
        """Check every blob's length and hash and that every plane and table decodes; list problems."""
        problems: list[Problem] = []
        if self.manifest.layout == "sharded":
            for shard in self.manifest.shards:
                key = f"{SHARD_DIR}/{shard.name}"
                try:
                    size = self.store.size(key)
                except KFormatError as exc:
                    problems.append(Problem(f"shard {shard.name}", str(exc)))
                    continue
                if size != shard.length:
                    problems.append(Problem(f"shard {shard.name}", f"{size} bytes, manifest says {shard.length}"))
        else:
            try:
                size = self.store.size(self.key)
                ends = [self.data_offset + r.offset + r.length for r, _ in self.blob_labels]
                if ends and size < max(ends):
                    problems.append(Problem("file", f"truncated: {size} bytes, blobs end at {max(ends)}"))
            except KFormatError as exc:
                problems.append(Problem("file", str(exc)))
        tile_of, table_of = {}, {}
        for t in self.manifest.tensors:
            for i, tile in enumerate(t.tiles):
                tile_of[id(tile.blob)] = (t, tile, self.tile_label(t, i))
            for which in TABLES_OF.get(t.quant.method, ()):
                table_of[id(getattr(t.quant, which).blob)] = (t, which)
        total = len(self.blob_labels)
        done = 0
        for chunk in self._verify_chunks():
            if progress:
                progress(done, total, chunk[0][1])
            try:  # one request for the whole chunk; on failure, blob by blob to name each
                datas = self.store.read_many([self.blob_range(ref) for ref, _ in chunk])
            except KFormatError:
                datas = None
            for k, (ref, label) in enumerate(chunk):
                try:
                    data = datas[k] if datas is not None else self.store.read_many([self.blob_range(ref)])[0]
                    self.check_blob(ref, data, label)
                    if id(ref) in tile_of:
                        t, tile, _ = tile_of[id(ref)]
                        self.decode_tile(t, tile, data, label)
                    elif id(ref) in table_of:
                        self.decode_table(*table_of[id(ref)], data)
                except KFormatError as exc:
                    problems.append(Problem(label, str(exc)))
            done += len(chunk)
        if progress:
            progress(total, total, "")
        return problems


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


def open_container(url: str, **storage_options) -> Container:
    return Container.open(url, **storage_options)
