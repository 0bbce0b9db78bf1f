"""Every tensor of a container in file order, the tensors overlapping on the decode threads.

Read one at a time (Container.read_tensor), each tensor ends with a barrier: its last tiles
finish on some threads while the others wait, then the next tensor's output, tables and
first tiles are set up. On VGG16 `mobile` (two decode threads) both threads sat idle 3-13 ms
at each large tensor's end, and the conv layers (three tiles each, 5-7 ms) left one thread
idle for a round per tensor. Here the next tensor's tiles are submitted while the current
one's last tiles decode; tensors are still handed out whole and in order, and an error is
raised for the first tensor it concerns, before any later tensor is handed out.

Memory: besides the tensor being finished, the ones started ahead of it are at most one
tensor, or any run of them totalling OVERLAP_BYTES (a streaming consumer such as unpack
holds at most that much more than when tensors are read one by one).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from ..format.manifest import TensorEntry
from ..heap import for_loading
from . import trim
from .decode import fill_tile
from .stream import BATCH_BYTES

if TYPE_CHECKING:
    from .container import Container

OVERLAP_BYTES = 64 << 20


@dataclass
class _Started:
    name: str
    shape: tuple[int, ...]
    out: np.ndarray
    end: int  # tiles submitted up to and including this tensor's last one


def read_overlapped(
    container: "Container",
    names: list[str],
    *,
    tied: dict[str, list[str]] | None = None,
    output: Callable[[str, TensorEntry], np.ndarray | None] | None = None,
    batch_bytes: Callable[[str], int] | None = None,
    window: int = BATCH_BYTES,
) -> Iterator[tuple[str, np.ndarray]]:
    """(name, values in the tensor's shape) for each of `names` (stored tensors, in the order
    to read them), each followed by its `tied` aliases. `output(name, entry)` gives the array
    a tensor decodes into (its 2-D view's shape, float32 or for lossless rules the stored
    dtype; None, or no `output`: a new one, Container.output); it is called in order, just before the
    tensor's tiles are submitted. Prefetching as Container.prefetching(names, window,
    batch_bytes)."""
    tied = tied or {}
    for_loading(sum(container.output_bytes(container.entry(name)) for name in names))  # (kformat.heap)
    pool = container.decoders()
    in_flight = 2 * container.decode_threads  # tiles
    tiles: deque[Future] = deque()
    started: deque[_Started] = deque()
    submitted = resolved = 0

    def finished() -> Iterator[tuple[str, np.ndarray]]:
        """Hand out the oldest tensors whose every tile is decoded."""
        while started and started[0].end <= resolved:
            done = started.popleft()
            trim.after_tensor(done.out.nbytes)
            array = done.out.reshape(done.shape)
            yield done.name, array
            for alias in tied.get(done.name, ()):  # the same array: tied tensors stay tied
                yield alias, array

    try:
        for name in container.prefetching(names, window, batch_bytes):
            t = container.entry(name)
            nbytes = container.output_bytes(t)
            while len(started) > 1 and sum(s.out.nbytes for s in list(started)[1:]) + nbytes > OVERLAP_BYTES:
                tiles.popleft().result()  # the oldest tensor's tiles first: wait for it
                resolved += 1
                yield from finished()
            out = None if output is None else output(name, t)
            out = container.output(t) if out is None else out
            tables = container.tables(t)
            size = BATCH_BYTES if batch_bytes is None else batch_bytes(name)
            for tile, data, label in container.iter_tiles(name, size):
                region = out[tile.row : tile.row + tile.rows, tile.col : tile.col + tile.cols]
                where = f"{container.source}: {label}"
                tiles.append(pool.submit(fill_tile, t, tile, data, where, tables, region))
                submitted += 1
                while len(tiles) > in_flight:
                    tiles.popleft().result()
                    resolved += 1
                    yield from finished()
            started.append(_Started(name, tuple(t.shape), out, submitted))
            yield from finished()
        while tiles:
            tiles.popleft().result()
            resolved += 1
            yield from finished()
        yield from finished()  # tensors without tiles at the end
    finally:
        for future in tiles:
            future.cancel()
