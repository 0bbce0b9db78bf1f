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

from collections.abc import Iterable, Iterator, Mapping
import numpy as np

from ..codecs.bitpack import pack_rows, row_bytes
from ..errors import TensorNotFound
from ..format.dtypes import numpy_dtype
from ..format.manifest import Manifest, TensorEntry
from ..methods import QuantizedTensor, get_method
from ..methods.compact import as_columns
from .container import BATCH_BYTES, Container
from .decode import fill_tile

__all__ = ["LazyModel", "LazyTensor", "QuantizedTensor", "open_model"]


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
        self._tensors = {t.name: LazyTensor(container, t, batch_bytes) for t in container.manifest.tensors}

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
        try:
            for i, name in enumerate(order):
                if i == 0:
                    self._container.prefetch(name, self._tensors[name].batch_bytes)
                if i + 1 < len(order):
                    self._container.prefetch(order[i + 1], self._tensors[order[i + 1]].batch_bytes)
                yield name, self._tensors[name]
                self._container.discard_prefetch(name)
        finally:
            for name in order:
                self._container.discard_prefetch(name)

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
