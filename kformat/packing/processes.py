"""Forked worker processes for GIL-bound work: bit allocation's weighing (below) and the
encoding of large tensors (kformat.packing.forked).

A large tensor's estimates are a few large numpy passes (its histograms: they release the
GIL and run on the chunk pool's threads) and then the fits of every candidate: thousands of
small numpy calls that hold the GIL, so threads do not run them side by side. The passes
make a Summary of a few MB (kformat.methods.kmeans_allocation), which a worker process
makes and fits itself where it can read the tensor (a forkable source), and else fits
while this one reads the next tensor; batches of small tensors, encoded under every
candidate, are sent whole (kformat.packing.weighing).

Workers are forked (on Linux only, at most one per core, never from a daemonic process),
which needs no import of the caller's __main__ (spawn and forkserver import it again,
running an unguarded script's top level in every worker). Modules whose locks, memo or
thread pool a child inherits reset them at fork (chunks, kernels, kmeans_dp, kmeans_memo);
glibc is loaded before the fork, ^C and SIGTERM are held while it runs, and a worker dies
with its parent. Where workers cannot start, or one dies, the work runs in this process:
the same numbers either way.
"""

from __future__ import annotations

import ctypes
import functools
import importlib._bootstrap as _bootstrap
import multiprocessing
import os
import signal
import sys
import threading
import time
import warnings
import weakref
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

from ..clib import function as c_function
from ..heap import keep_freed_memory
from ..interrupts import deferred
from ..methods import chunks
from ..progress import log

T = TypeVar("T")


@functools.cache
def _c_calls() -> dict[str, Callable | None]:
    """The C library's calls a worker makes, looked up in the parent before it forks: a
    child that looked one up (dlsym) while another of the parent's threads held the
    loader's lock at the fork would wait for ever."""
    return {
        "prctl": c_function("prctl", (ctypes.c_int, ctypes.c_ulong)),
    }


@contextmanager
def worker_processes(count: int, initializer=None, *initargs) -> Iterator[Executor | None]:
    """A pool of `count` forked processes (at most one per core), started now; None for none,
    without fork, or in a daemonic process (a multiprocessing.Pool worker may have none).
    Each runs initializer(*initargs) first: the arguments are inherited, not pickled."""
    count = min(count, os.cpu_count() or 1)
    if (
        count < 1
        or not sys.platform.startswith("linux")  # (fork is unsafe with macOS system libraries)
        or "fork" not in multiprocessing.get_all_start_methods()
        or multiprocessing.current_process().daemon
    ):
        yield None
        return
    pool = None
    try:
        with warnings.catch_warnings():  # (3.12+ warns of fork in a process with threads)
            warnings.simplefilter("ignore", DeprecationWarning)
            pool = ProcessPoolExecutor(
                count,
                mp_context=multiprocessing.get_context("fork"),
                initializer=_start_worker,
                initargs=(os.getpid(), initializer, initargs),
            )
            _c_calls()  # looked up here, not in the children
            _await_imports()
            with _signals_held():
                started = pool.submit(int)  # forks every worker now
            started.result()
    except BaseException as exc:
        if not isinstance(exc, Exception):  # ^C or SIGTERM while forking (held, then delivered)
            if pool is not None:
                _stop(pool)
            raise
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        # no processes here (limits, sandboxes): the same work in this one
        log.info("worker processes did not start (%s): working in this process", exc)
        yield None
        return
    try:
        yield pool
    finally:
        _stop(pool)


_stopping: "weakref.WeakKeyDictionary[Executor, threading.Thread]" = weakref.WeakKeyDictionary()
_stopping_lock = threading.Lock()
STOP_THREAD = "kformat-workers-stop"


def stop_soon(pool: Executor) -> None:
    """Let the workers exit now, in the background: nothing more will be sent to them. Their
    exit (a few milliseconds each, their memory unmapped) then overlaps what the caller still
    does (a pack's long pole, its commit) instead of following it; _stop waits for the rest.
    VGG16 `kmeans4` at --jobs 2: the encoder closed in 0.6 ms after the last tensor, not 6-8."""
    with _stopping_lock:
        if pool not in _stopping:
            thread = threading.Thread(target=pool.shutdown, kwargs={"wait": True}, name=STOP_THREAD)
            thread.start()  # (before it is listed: _shut_down joins what it finds)
            _stopping[pool] = thread


def _stop(pool: Executor) -> None:
    """Stop the workers and wait for the pool's manager thread, ^C or SIGTERM or not. A manager
    thread still running when the interpreter exits closes its wake-up pipe while the exit
    hook of Python 3.11's ProcessPoolExecutor writes to it (EBADF, printed as a traceback
    after `kformat: terminated`): a SIGTERM that arrived as the workers were forked used to
    leave it running (shutdown without waiting), and one during the wait cut the wait short.
    An interrupted wait is finished with ^C and SIGTERM held, then the interrupt goes on.
    A stop begun by stop_soon is waited for first (two shutdowns at once could race)."""
    try:
        _shut_down(pool)
    except BaseException:
        with _signals_held():
            _shut_down(pool)
        raise


def _shut_down(pool: Executor) -> None:
    me = threading.current_thread()
    with _stopping_lock:
        stopping = _stopping.get(pool)
        _stopping[pool] = me  # a stop_soon from now on (a child's last callback) has nothing to do
    if stopping is not None and stopping is not me:
        stopping.join()
    pool.shutdown(wait=True, cancel_futures=True)


IMPORT_WAIT = 5.0  # seconds to wait for other threads' imports to end before a fork


def _await_imports() -> None:
    """Wait (up to IMPORT_WAIT s) until no other thread is importing a module. A child forked
    while another thread of the parent was importing (numpy imports numpy.ma at the first
    np.unique: the long pole's fit, beside the fork) found that module's lock held by a
    thread it does not have, and waited for ever at its own first np.unique, and the pack
    with it. An import that starts after the wait is the child's to drop
    (_forget_imports_under_way)."""
    deadline = time.monotonic() + IMPORT_WAIT
    while _imports_held() and time.monotonic() < deadline:
        time.sleep(0.001)


def _module_locks() -> list[tuple[str, object]]:
    """(module, its import lock) for every import lock the interpreter holds now: importlib's
    internals, so none where they differ."""
    return [(name, ref()) for name, ref in list(getattr(_bootstrap, "_module_locks", {}).items())]


def _imports_held() -> list[str]:
    """Modules whose import lock a thread other than this one holds."""
    me = threading.get_ident()
    return [name for name, lock in _module_locks() if getattr(lock, "owner", None) not in (None, me)]


def _forget_imports_under_way() -> None:
    """In a child, before anything else: a module another thread of the parent was importing
    at the fork (begun after _await_imports, or longer than it waits) is dropped with its
    lock, so that this process imports it afresh rather than wait for a thread it does not
    have. Nothing imports in the child yet, so any lock held, or mid-update, is such a one."""
    for name, lock in _module_locks():
        raw = [getattr(lock, part, None) for part in ("lock", "wakeup")]
        if getattr(lock, "owner", None) is None and not any(r is not None and r.locked() for r in raw):
            continue
        _bootstrap._module_locks.pop(name, None)
        module = sys.modules.get(name)
        if getattr(getattr(module, "__spec__", None), "_initializing", False):
            del sys.modules[name]


PR_SET_PDEATHSIG = 1  # prctl: the signal a process gets when its parent dies
HELD = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def _signals_held() -> Iterator[None]:
    """^C and SIGTERM wait while the workers are forked, then arrive: raised within the fork
    (in logging's at-fork hook), their exception was printed and dropped. The mask holds
    them from this thread; a SIGTERM another thread takes is deferred (kformat.interrupts)."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
    try:
        with deferred():
            yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _start_worker(parent: int, initializer, initargs) -> None:
    """A worker's first step: die with the parent, keep freed memory for reuse, then
    initializer(*initargs). A worker holds the write end of its siblings' task queue (forked
    from the same parent), so when the parent was killed (SIGKILL, the OOM killer) the
    workers waited for tasks for ever. A worker is a fresh process whose every page is new:
    glibc's default mapped each large temporary afresh (faulted in, unmapped); keeping freed
    memory took a BERT-shaped `q4` command at --jobs 2 from 2.53 s to 2.43 s (system time 0.74
    -> 0.59 s), and MiniLM-shaped --target-bits 4.5's weighing to 0.983x the time."""
    prctl = _c_calls()["prctl"]
    if prctl is not None:  # (Linux)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)
    _forget_imports_under_way()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # (not the parent's handler: a killed worker dies)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)  # held while it was forked
    keep_freed_memory()
    if initializer is not None:
        initializer(*initargs)


class InHand:
    """The tasks the worker processes hold now, told to the chunk helpers as busy workers
    (chunks.elsewhere): a process at work holds a core, as a thread with a tensor of its own
    does, so that this process's large passes are not split onto it as well. For the pack's
    tensors (forked.py) and weighing's fits alike; weighing took the same time either way
    (VGG16 at two jobs, 0.58 s): its passes' extra CPU at two jobs is the shared memory bus."""

    def __init__(self, workers: int):
        self.workers = workers
        self._held = 0
        self._lock = threading.Lock()

    def track(self, future: Future) -> None:
        """Count the future's task until it is done (or failed, or cancelled)."""
        self._change(+1)
        future.add_done_callback(lambda _: self._change(-1))

    def _change(self, by: int) -> None:
        with self._lock:
            self._held += by
            chunks.elsewhere(min(self._held, self.workers))  # (the rest wait in the queue)


def run(
    processes: Executor | None,
    fn: Callable[..., T],
    *args,
    in_hand: InHand | None = None,
    here: Callable[..., T] | None = None,
) -> Callable[[], T]:
    """fn(*args) in a worker process when there is a pool, else here; a callable that returns
    its result. A pool that broke (a worker killed) costs time, never the result: fn runs here
    (or `here`, what fn does in a worker, for this process). `in_hand` counts the task while
    a process holds it."""
    future: Future | None = None
    if processes is not None:
        try:
            future = processes.submit(fn, *args)
        except (BrokenProcessPool, RuntimeError):
            future = None
        if future is not None and in_hand is not None:
            in_hand.track(future)

    def result() -> T:
        if future is not None:
            try:
                return future.result()
            except BrokenProcessPool:
                log.info("a worker process died: estimating in this process")
        return (here or fn)(*args)

    return result
