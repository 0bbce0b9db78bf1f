"""The lazy loader: open a model anywhere, fetch and dequantize weights only as they are used.

    with kformat.open("https://cdn.example.com/vgg16/") as model:
        for name, w in model.stream(fc_names):
            x = w.matmul(x)             # tile by tile, never the whole float32 matrix

Opening reads the header and manifest only. A LazyTensor fetches its blobs in batches of row
bands (the next batch fetched while the current one is decoded), checks each blob's hash, and
decodes one tile at a time into a reused buffer, so `matmul` holds the compressed bytes of
about three batches plus one float32 tile, whatever the layer's size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
import numpy as np

from ..codecs.bitpack import pack_rows, row_bytes
from ..errors import TensorNotFound
from ..format.dtypes import numpy_dtype
from ..format.manifest import Manifest, TensorEntry
from ..methods import QuantizedTensor, get_method
from ..methods.compact import as_columns
from .container import BATCH_BYTES, Container
from .decode import fill_tile
from .overlap import read_overlapped
from .tables import tile_label

__all__ = ["LazyModel", "LazyTensor", "QuantizedTensor", "open_model"]


class _Fallback(Exception):
    """An index the tile-wise path does not take (steps, arrays, too many axes)."""


def _bounds(index, size: int) -> tuple[int, int, bool]:
    """(start, stop, was an integer) of a step-1 slice or an integer along an axis of `size`."""
    if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
        i = int(index) + (size if index < 0 else 0)
        if not 0 <= i < size:
            raise IndexError(f"index {int(index)} is out of bounds for an axis of size {size}")
        return i, i + 1, True
    if isinstance(index, slice) and index.step in (None, 1):
        start, stop, _ = index.indices(size)
        return start, max(start, stop), False
    raise _Fallback


class LazyTensor:
    """One tensor of an open model; nothing is fetched until a method asks for values.

    `dtype` and `nbytes` describe what `numpy()` returns (float32 for quantized and fp16
    tensors, the source dtype for raw ones); `stored_nbytes` is what fetching it costs.
    """

    def __init__(self, container: Container, entry: TensorEntry, batch_bytes: int = BATCH_BYTES):
        self._container = container
        self.entry = entry
        self.batch_bytes = batch_bytes

    def __repr__(self) -> str:
        return f"LazyTensor({self.name!r}, shape={self.shape}, rule={self.rule!r})"

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.entry.shape)

    @property
    def view(self) -> tuple[int, int]:
        """(rows, cols): the 2-D view tiles are cut from and matmul multiplies by."""
        return tuple(self.entry.view)

    @property
    def source_dtype(self) -> np.dtype:
        return numpy_dtype(self.entry.dtype)

    @property
    def lossless(self) -> bool:
        """Whether values come back bit-exact in the source dtype (raw)."""
        return get_method(self.method).lossless

    @property
    def dtype(self) -> np.dtype:
        return self.source_dtype if self.lossless else np.dtype(np.float32)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def stored_nbytes(self) -> int:
        return self.entry.stored_bytes

    @property
    def rule(self) -> str:
        return self.entry.rule

    @property
    def method(self) -> str:
        return self.entry.quant.method

    def numpy(self) -> np.ndarray:
        """The dequantized array (float32, or the source dtype for raw tensors)."""
        return self._container.read_tensor(self.name, batch_bytes=self.batch_bytes)

    def __getitem__(self, key) -> np.ndarray:
        """Values of a slice, fetching and decoding only the tiles it touches.

        `t[a:b]` selects rows of the first axis (any rank); `t[a:b, c:d]` a block of a 2-D
        tensor (integers select one row or column). Steps and fancy indexing fall back to
        slicing the whole array."""
        key = key if isinstance(key, tuple) else (key,)
        rank, cols = len(self.shape), self.view[1]
        try:
            (r0, r1, r_int), rest = _bounds(key[0], self.shape[0] if rank else 1), key[1:]
            if rank == 2 and rest:
                (c0, c1, c_int), rest = _bounds(rest[0], cols), rest[1:]
            else:
                c0, c1, c_int = 0, cols, False
            if rest or rank == 0 or (rank == 1 and len(key) > 1):
                raise _Fallback
        except _Fallback:
            return self.numpy()[key]
        if rank == 1:  # the view is one row: the slice is over its columns
            block = self._block(0, 1, r0, r1)[0]
            return block[0] if r_int else block
        block = self._block(r0, r1, c0, c1)
        if rank > 2:
            block = block.reshape((r1 - r0, *self.shape[1:]))
        if c_int:
            block = block[:, 0]
        return block[0] if r_int else block

    def _block(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Rows [r0, r1) x cols [c0, c1) of the 2-D view, from the tiles that overlap them."""
        c, t = self._container, self.entry
        out = np.empty((r1 - r0, c1 - c0), dtype=self.dtype)
        picked = [
            i
            for i, tile in enumerate(t.tiles)
            if tile.row < r1 and tile.row + tile.rows > r0 and tile.col < c1 and tile.col + tile.cols > c0
        ]
        tables = {} if self.lossless else c.tables(t)
        for start in range(0, len(picked), 64):  # a bounded number of tiles per request
            chunk = picked[start : start + 64]
            datas = c.read_blobs([(t.tiles[i].blob, tile_label(t, i)) for i in chunk])
            for i, data in zip(chunk, datas):
                tile = t.tiles[i]
                plane = np.empty((tile.rows, tile.cols), dtype=self.dtype)
                fill_tile(t, tile, data, f"{c.source}: {tile_label(t, i)}", tables, plane)
                a0, a1 = max(r0, tile.row), min(r1, tile.row + tile.rows)
                b0, b1 = max(c0, tile.col), min(c1, tile.col + tile.cols)
                out[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] = plane[
                    a0 - tile.row : a1 - tile.row, b0 - tile.col : b1 - tile.col
                ]
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        values = self.numpy()
        return values if dtype is None else values.astype(dtype, copy=False)

    def quantized(self, packed: bool = False) -> QuantizedTensor:
        """The compact form: uint8 codes (bit-packed rows with `packed`) plus their tables,
        or fp16/raw values, without ever building float32 values."""
        c, t = self._container, self.entry
        q = t.quant
        rows, cols = t.view
        common = dict(name=t.name, method=q.method, shape=self.shape, view=(rows, cols))
        if t.depth is None:
            values = c.allocate(t, (rows, cols), numpy_dtype(t.storage))
            for tile, plane in c.iter_planes(self.name, self.batch_bytes):
                values[tile.row : tile.row + tile.rows, tile.col : tile.col + tile.cols] = plane
            return QuantizedTensor(**common, values=values, stats=dict(t.stats))
        depth = int(t.depth)
        if packed:
            codes = c.allocate(t, (rows, row_bytes(cols, depth)), np.uint8)
            band = np.empty((t.tile[0], cols), dtype=np.uint8)
        else:
            codes = c.allocate(t, (rows, cols), np.uint8)
        for tile, plane in c.iter_planes(self.name, self.batch_bytes):
            if not packed:
                codes[tile.row : tile.row + tile.rows, tile.col : tile.col + tile.cols] = plane
                continue
            band[: tile.rows, tile.col : tile.col + tile.cols] = plane
            if tile.col + tile.cols == cols:  # tiles are row-major: the band is complete
                codes[tile.row : tile.row + tile.rows] = pack_rows(band[: tile.rows], depth)
        return QuantizedTensor(
            **common,
            bits=q.bits,
            depth=depth,
            group_rows=q.group_rows,
            packed=packed,
            codes=codes,
            tables=c.tables(t),
            stats=dict(t.stats),
        )

    def matmul(self, x) -> np.ndarray:
        """W @ x for the 2-D view W (rows x cols) and x of shape (cols,) or (cols, n).

        Each tile is fetched (in batches, the next one in the background), decoded,
        dequantized into one reused float32 buffer, multiplied and dropped.
        """
        c, t = self._container, self.entry
        rows, cols = t.view
        x2, vector = as_columns(x, cols, self.name)
        out_dtype = np.result_type(self.dtype, x2.dtype)
        out = np.zeros((rows, x2.shape[1]), dtype=out_dtype)
        lossless = self.lossless
        buffer = None if lossless else np.empty((min(t.tile[0], rows), min(t.tile[1], cols)), np.float32)
        tables = {} if lossless else c.tables(t)
        for tile, data, label in c.iter_tiles(self.name, self.batch_bytes):
            if lossless:
                w = c.decode_tile(t, tile, data, label)
            else:  # the fast path of loading: packed codes through a byte table, into the buffer
                w = buffer[: tile.rows, : tile.cols]
                fill_tile(t, tile, data, f"{c.source}: {label}", tables, w)
            target = out[tile.row : tile.row + tile.rows]
            part = x2[tile.col : tile.col + tile.cols]
            if tile.cols == cols:
                np.matmul(w, part, out=target)
            else:
                target += w @ part
        return out[:, 0] if vector else out


class LazyModel(Mapping[str, LazyTensor]):
    """A read-only mapping of tensor name -> LazyTensor over an open container.

    Iteration is in file order. Close it (or use `with`) to stop background fetches.
    """

    def __init__(self, container: Container, batch_bytes: int = BATCH_BYTES):
        self._container = container
        stored = {t.name: LazyTensor(container, t, batch_bytes) for t in container.manifest.tensors}
        aliases = container.manifest.aliases  # a tied tensor is the same LazyTensor as its original
        self._tensors = {n: stored[aliases.get(n, n)] for n in container.manifest.names()}

    @classmethod
    def open(cls, url: str, *, batch_bytes: int = BATCH_BYTES, **storage_options) -> "LazyModel":
        return cls(Container.open(url, **storage_options), batch_bytes)

    def __repr__(self) -> str:
        return f"LazyModel({self.source!r}, {len(self)} tensors)"

    # -- Mapping ---------------------------------------------------------------------------
    def __getitem__(self, name: str) -> LazyTensor:
        try:
            return self._tensors[name]
        except KeyError:
            raise TensorNotFound(f"{self.source}: no tensor named {name!r}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    # -- what it is --------------------------------------------------------------------------
    @property
    def aliases(self) -> dict[str, str]:
        """Tied tensors: alias name -> the stored tensor it shares (the same LazyTensor)."""
        return dict(self._container.manifest.aliases)

    @property
    def source(self) -> str:
        return self._container.source

    @property
    def manifest(self) -> Manifest:
        return self._container.manifest

    @property
    def manifest_sha256(self) -> str:
        """The manifest's digest: pass it as `manifest_sha256=` to accept only this model."""
        return self._container.manifest_sha256

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.manifest.metadata)

    @property
    def bytes_read(self) -> int:
        """Bytes fetched from the store so far (header and manifest included)."""
        return self._container.store.bytes_read

    @property
    def requests(self) -> int:
        return self._container.store.requests

    @property
    def container(self) -> Container:
        return self._container

    # -- streaming ---------------------------------------------------------------------------
    def stream(self, names: Iterable[str] | None = None) -> Iterator[tuple[str, LazyTensor]]:
        """(name, tensor) in file order (or in the order of `names`), with the next tensor's
        tables and first batch of tiles fetched in the background while the caller works on
        the current one."""
        order = list(self._tensors) if names is None else list(names)
        for name in order:
            self[name]  # unknown names fail before anything is fetched
        batches = {name: self._tensors[name].batch_bytes for name in order}
        for name in self._container.prefetching(order, 2 * BATCH_BYTES, batches.get):
            yield name, self._tensors[name]

    def read(
        self, names: Iterable[str], output: Callable[[str], np.ndarray | None] | None = None
    ) -> Iterator[tuple[str, np.ndarray]]:
        """(name, values in the tensor's shape) for tensors `names`, in this order, the
        next tensors' tiles decoding while the current one's last ones finish
        (kformat.loading.overlap). `output(name)` gives the array a tensor decodes into: its
        2-D view's shape, float32 (the stored dtype for lossless rules), C order; None (or
        no `output`) for a new one. It is called in order, before any of the tensor's tiles is decoded."""
        order = list(names)
        for name in order:
            self[name]  # unknown names fail before anything is fetched
        batches = {name: self._tensors[name].batch_bytes for name in order}
        provide = None if output is None else (lambda name, entry: output(name))
        return read_overlapped(
            self._container, order, output=provide, batch_bytes=batches.get, window=2 * BATCH_BYTES
        )

    # -- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        self._container.close()

    @property
    def closed(self) -> bool:
        return self._container.closed

    def __enter__(self) -> "LazyModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_model(url: str, *, batch_bytes: int = BATCH_BYTES, **storage_options) -> LazyModel:
    """Open a kformat model lazily on any fsspec URL (exported as `kformat.open`).

    Reads the header and manifest only. `storage_options` go to fsspec (e.g. headers,
    client_kwargs, anon=True for s3). Chained URLs work: 'simplecache::https://...' downloads
    each file once into a local cache, the way out for servers that ignore Range.
    """
    return LazyModel.open(url, batch_bytes=batch_bytes, **storage_options)
