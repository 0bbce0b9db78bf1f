"""Tables (codebooks, scales, zero points) of open tensors: decoded once, checked by their
method, kept until the container closes."""

from __future__ import annotations

import threading
from typing import Iterable

import numpy as np

from ..errors import DecodeError
from ..format.manifest import Table, TensorEntry
from ..methods import get_method
from .blobs import BlobReader


def table_array(data: bytes, table: Table) -> np.ndarray:
    return np.frombuffer(data, dtype=np.dtype(table.dtype).newbyteorder("<")).reshape(table.shape)


def tile_label(tensor: TensorEntry, index: int) -> str:
    tile = tensor.tiles[index]
    return (
        f"tensor {tensor.name!r} tile {index} (rows {tile.row}..{tile.row + tile.rows},"
        f" cols {tile.col}..{tile.col + tile.cols})"
    )


class TableCache:
    def __init__(self, blobs: BlobReader):
        self.blobs = blobs
        self._tables: dict[tuple[str, str], np.ndarray] = {}
        self._lock = threading.Lock()

    def decode(self, tensor: TensorEntry, which: str, data: bytes) -> np.ndarray:
        """A table's array from its checked blob; the method refuses values no writer stores."""
        array = table_array(data, tensor.quant.table(which))
        try:
            get_method(tensor.quant.method).check_table(which, array)
        except DecodeError as exc:
            raise DecodeError(f"{self.blobs.source}: tensor {tensor.name!r} {exc}") from None
        return array

    def missing(self, tensor: TensorEntry) -> list[str]:
        return [n for n, _ in tensor.quant.named_tables() if (tensor.name, n) not in self._tables]

    def fetch(self, tensor: TensorEntry, names: list[str], tiles: Iterable[int] = ()) -> list[bytes]:
        """Fetch and cache the named tables, with the given tiles in the same request; the
        tiles' checked blobs are returned."""
        items = [(tensor.quant.table(n).blob, f"tensor {tensor.name!r} {n}") for n in names]
        items += [(tensor.tiles[i].blob, tile_label(tensor, i)) for i in tiles]
        datas = self.blobs.read(items)
        decoded = {(tensor.name, n): self.decode(tensor, n, data) for n, data in zip(names, datas)}
        with self._lock:
            self._tables.update(decoded)
        return datas[len(names) :]

    def get(self, tensor: TensorEntry, which: str) -> np.ndarray:
        key = (tensor.name, which)
        if key not in self._tables:
            self.fetch(tensor, [which])
        return self._tables[key]

    def of(self, tensor: TensorEntry) -> dict[str, np.ndarray]:
        """Every table the tensor's method needs, by name (none for fp16 and raw)."""
        missing = self.missing(tensor)
        if missing:
            self.fetch(tensor, missing)
        return {n: self._tables[(tensor.name, n)] for n, _ in tensor.quant.named_tables()}

    def clear(self) -> None:
        with self._lock:
            self._tables.clear()
