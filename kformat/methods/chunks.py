"""Passes over large arrays in fixed chunks, spread over threads when the packer allows.

One tensor often holds most of a model (VGG16's first FC layer: 74% of the weights), so
spreading tensors over workers leaves cores idle; the heavy numpy passes of a fit (binning,
assigning codes) are split instead. Chunk boundaries never depend on the thread count and
results are combined in chunk order, so the output is byte-identical for every `jobs`.
numpy's ufuncs, gathers and bincount release the GIL, so threads scale.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

CHUNK = 1 << 18  # values per chunk: its temporaries stay in cache (3x faster than 4M chunks)

T = TypeVar("T")

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_users = 0
_local = threading.local()  # set in pool threads: nested maps run inline, never deadlock


@contextmanager
def threads(count: int) -> Iterator[None]:
    """Within this block, map_chunks runs on `count` threads (1: in the caller's thread).

    Nested or concurrent blocks share one pool, sized by the first."""
    global _pool, _users
    if count <= 1:
        yield
        return
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(count, thread_name_prefix="kformat-chunk")
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            pool, done = _pool, _users == 0
            if done:
                _pool = None
        if done and pool is not None:
            pool.shutdown(wait=True)


def spans(size: int, chunk: int = CHUNK) -> list[tuple[int, int]]:
    return [(start, min(size, start + chunk)) for start in range(0, size, chunk)]


def map_chunks(fn: Callable[[int, int], T], size: int, chunk: int = CHUNK) -> list[T]:
    """[fn(start, stop) for each chunk of range(size)], in order, on the pool if one is set."""
    parts = spans(size, chunk)
    pool = _pool
    if pool is None or len(parts) < 2 or getattr(_local, "worker", False):
        return [fn(start, stop) for start, stop in parts]  # a chunk's own passes run inline

    def run(span: tuple[int, int]) -> T:
        _local.worker = True
        try:
            return fn(*span)
        finally:
            _local.worker = False

    return list(pool.map(run, parts))
