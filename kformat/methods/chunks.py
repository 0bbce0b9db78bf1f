"""Passes over large arrays in fixed chunks, spread over threads when the packer allows.

One tensor often holds most of a model (VGG16's first FC layer: 74% of the weights), so
spreading tensors over workers leaves cores idle; the heavy numpy passes of a fit (binning,
assigning codes) are split instead. Chunk boundaries never depend on the thread count and
results are combined in chunk order, so the output is byte-identical for every `jobs`.
numpy's ufuncs, gathers and bincount release the GIL, so threads scale.
"""

from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, TypeVar

CHUNK = 1 << 18  # values per chunk: its temporaries stay in cache (3x faster than 4M chunks)

T = TypeVar("T")
A = TypeVar("A")

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_size = 1  # the pool's threads
_users = 0
_local = threading.local()  # set in pool threads: nested maps run inline, never deadlock
_busy = 0  # threads encoding a tensor of their own now (the packer's workers, see occupied())
_elsewhere = 0  # worker processes encoding a tensor for this pack now (see elsewhere())


def _forget_pool_after_fork() -> None:
    """Threads do not survive fork: a child maps and submits inline (the inherited pool would
    queue work for threads it does not have, and wait for ever)."""
    global _pool, _size, _users, _lock, _busy, _elsewhere
    _pool, _size, _users, _lock, _busy, _elsewhere = None, 1, 0, threading.Lock(), 0, 0


os.register_at_fork(after_in_child=_forget_pool_after_fork)


@contextmanager
def threads(count: int) -> Iterator[None]:
    """Within this block, map_chunks runs on `count` threads (1: in the caller's thread).

    Nested or concurrent blocks share one pool, sized by the first."""
    global _pool, _size, _users
    if count <= 1:
        yield
        return
    with _lock:
        if _pool is None:
            _pool, _size = ThreadPoolExecutor(count, thread_name_prefix="kformat-chunk"), count
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


@contextmanager
def occupied() -> Iterator[None]:
    """Mark this thread as encoding a tensor of its own for the block. Helpers (map_helping)
    go only to threads no tensor occupies: when every worker has a tensor, a tensor's passes
    and tiles run in its own thread. Helping then only added runnable threads, and on a
    transformer's many mid-sized matrices (BERT-base shape, 2 jobs) the contention for the
    cores and the GIL cost 13-15% of the pack's time. The long pole too (VGG16's first FC
    layer, started first): it is helped once the other workers run out of tensors. Helped
    all the time, three runnable threads on two cores, VGG16 `q4` and `kmeans4` commands at
    --jobs 2 took 1.05x and 1.09x the time (median of 6 pairs; the same bytes)."""
    global _busy
    with _lock:
        _busy += 1
    try:
        yield
    finally:
        with _lock:
            _busy -= 1


def elsewhere(workers: int) -> None:
    """`workers` of the pack's worker processes are encoding a tensor now: each holds a core,
    as an occupied thread does (kformat.packing.forked)."""
    global _elsewhere
    _elsewhere = workers


def _spare(threads: int) -> int:
    """Threads of `threads` this thread may recruit: those no tensor occupies, here or in a
    worker process, besides the caller's."""
    return threads - max(_busy, 1) - _elsewhere


def row_step(cols: int, values: int = CHUNK) -> int:
    """Rows per chunk of a pass over a (rows, cols) array: about `values` values, one row at least."""
    return max(1, values // max(1, cols))


def spans(size: int, chunk: int = CHUNK) -> list[tuple[int, int]]:
    return [(start, min(size, start + chunk)) for start in range(0, size, chunk)]


TASKS_PER_THREAD = 4  # consecutive chunks go to a thread together: fewer futures, each held the GIL


def map_chunks(fn: Callable[[int, int], T], size: int, chunk: int = CHUNK) -> list[T]:
    """[fn(start, stop) for each chunk of range(size)], in order, on the pool if one is set.

    On the pool, runs of consecutive chunks are one task each (about TASKS_PER_THREAD per
    thread): the chunks and their order are the same, so are the results."""
    parts = spans(size, chunk)
    pool = _pool
    if pool is None or len(parts) < 2 or getattr(_local, "worker", False):
        return [fn(start, stop) for start, stop in parts]  # a chunk's own passes run inline
    per_task = max(1, len(parts) // (TASKS_PER_THREAD * _size))
    runs = [parts[i : i + per_task] for i in range(0, len(parts), per_task)]
    done = map_helping(pool, lambda spans_of_task: [fn(a, b) for a, b in spans_of_task], runs, _size)
    return [result for results in done for result in results]


def map_helping(pool: Executor, fn: Callable[[A], T], items: Sequence[A], threads: int) -> list[T]:
    """[fn(item) for item in items], in order, on `threads` threads: the caller's own and up
    to `threads` - 1 of the pool's, as many as no other tensor occupies (occupied()); the
    caller asks for more between its items as workers free up. Every thread takes the next
    item not yet taken, so the caller works rather than waits, and when the pool is busy with
    another tensor's tasks (a shared pool is FIFO) the caller does its own items instead of
    queueing behind them: on VGG16 a conv layer's tiles waited for the first FC layer's
    hundred, 0.4 s for a 30 ms tensor. Helpers that never started are cancelled. Within an
    item, maps run inline (as on the pool)."""
    if len(items) < 2 or threads < 2:
        return [fn(item) for item in items]
    shared = _Helping(pool, fn, items, threads)
    try:
        shared.drain(recruit=True)
    except BaseException:
        _settle(shared.helpers, quiet=True)
        raise
    _settle(shared.helpers, quiet=False)
    return shared.results


class _Helping:
    """One map_helping call's items, taken by the caller and its helpers. An object, not a
    closure: a closure that submits itself is a reference cycle, which kept fn and the items
    (a tensor's arrays, 400 MB of VGG16's) until the garbage collector's next pass."""

    def __init__(self, pool: Executor, fn: Callable, items: Sequence, threads: int):
        self.pool, self.fn, self.items, self.threads = pool, fn, items, threads
        self.results: list = [None] * len(items)
        self.taken = itertools.count()  # next() on it is atomic under the GIL
        self.failed = threading.Event()
        self.helpers: list[Future] = []
        self.most = min(threads, len(items)) - 1

    def drain(self, recruit: bool = False) -> None:
        was = getattr(_local, "worker", False)
        _local.worker = True
        try:
            while not self.failed.is_set():
                if recruit and len(self.helpers) < min(self.most, _spare(self.threads)):
                    self.helpers.append(self.pool.submit(self.drain))
                i = next(self.taken)
                if i >= len(self.items):
                    return
                self.results[i] = self.fn(self.items[i])
        except BaseException:
            self.failed.set()
            raise
        finally:
            _local.worker = was


def _settle(helpers: list[Future], quiet: bool) -> None:
    """Cancel the helpers that never started, wait for every other one, then raise the first
    error one raised unless `quiet` (the caller's own error comes first). Raising at the first
    failed helper left a later one still at work when the error reached the caller."""
    for helper in helpers:
        helper.cancel()  # (False once started)
    errors = [helper.exception() for helper in helpers if not helper.cancelled()]  # (waits)
    first = next((error for error in errors if error is not None), None)
    if first is not None and not quiet:
        raise first


def submit(fn: Callable[..., T], *args) -> Future:
    """fn(*args) on the pool if one is set (its own maps then run inline), else now: work
    that overlaps the caller's next step (allocation compresses one candidate's planes while
    it encodes the next)."""
    pool = _pool
    if pool is None or getattr(_local, "worker", False):
        done: Future = Future()
        try:
            done.set_result(fn(*args))
        except Exception as exc:  # raised by .result(), as on the pool (callers take results in order)
            done.set_exception(exc)
        return done

    def run() -> T:
        _local.worker = True
        try:
            return fn(*args)
        finally:
            _local.worker = False

    return pool.submit(run)
