"""Compiled loops for the codebook fits: C (kformat.methods._kernels, built at install where
a compiler is found), else numba's (the `fast` extra), else the numpy loops of fit_loops.

The C loops (kernels_c) are the first choice: loaded in about a millisecond, they cost
nothing to ask for, so a process uses them from its first fit. The rest of this docstring,
and the thresholds below, are about numba, the fallback where the extension was not built.
KFORMAT_C_KERNELS=0 passes the C loops over (tests compare the three).

A fit's inner loops (a layer of the 1-D k-means programme, Lloyd and entropy-constrained
Lloyd iterations on cell sums) are thousands of numpy calls on arrays of a few dozen values:
the interpreter holds the GIL between them, so with --jobs 2 one thread's fits stall the
other's. kernels_numba compiles the very functions of fit_loops (and the programme's layers,
written for it) into loops that release the GIL, so the output is byte-identical with or
without them (tests compare).

They are not free: importing numba and loading the compiled code from its cache takes
0.5-0.9 s of one core, holding the GIL (numba's import reaches for scipy's BLAS when scipy is
installed), 60 MiB of memory, and about ten seconds the first time ever (compiling; cached
afterwards). A 2-second pack of VGG16 spends about 0.6 s in such loops, and came out slower
with them; a 108M-parameter transformer spends several seconds and packed `mobile` 2x
faster. So a process runs the numpy loops until its threads have spent WARM_AFTER seconds
of CPU in them (CPU, not wall time: at --jobs 2 a loop's wall time includes its waits for the
GIL, and counting those loaded the kernels into 3-second packs that then ran 1.27x slower),
then loads the kernels on a background thread and switches once they are ready; a pack
whose plan holds much fit work starts loading them at its start (expect). Never on load.
KFORMAT_NUMBA=0 keeps the numpy loops; KFORMAT_NUMBA=1 loads the kernels at once (and
waits for them). KFORMAT_NUMBA_LEAN=1 loads numba as if scipy and cffi were not installed
(the command line sets it for its own process; _lean_numba says why).
"""

from __future__ import annotations

import importlib.abc
import os
import sys
import threading
import time
from contextlib import contextmanager
from types import ModuleType
from typing import Iterator

import numpy as np

from . import fit_loops

WARM_AFTER = 1.0  # CPU seconds of numpy fit loops in a process before the kernels are loaded
LOAD_FOR_WORK = 8_000  # Method.fit_work units per core from which a pack loads the kernels at its start
LOAD_FOR_WORK_LEAN = 4_500  # the same where the load is lean (_lean_numba): 0.26 s, not 0.37

_lock = threading.Lock()
_spent = 0.0  # CPU seconds in the numpy loops so far, all threads
_loader: threading.Thread | None = None
_ready: ModuleType | None = None
_awaited = False  # a pack's plan expects enough fit work to wait for the kernels (expect)


def _mode() -> str:
    return os.environ.get("KFORMAT_NUMBA", "auto")


def compiled() -> ModuleType | None:
    """kernels_c, or kernels_numba once it is loaded, else None (neither built nor installed,
    numba not yet worth loading, still loading, or KFORMAT_NUMBA=0)."""
    mode = _mode()
    if mode == "0":
        return None
    in_c = c_loops()
    if in_c is not None:
        return in_c
    if mode == "1" or (_awaited and _loader is not None):
        _start()
        _loader.join()
    return _ready


@contextmanager
def loops(*arrays: np.ndarray) -> Iterator[ModuleType]:
    """The module whose fit_loops functions to run on these arrays: the compiled loops (C or
    numba) when they are loaded and these are what they were compiled for (float64, C order;
    anything else would compile another numba version mid-pack), else fit_loops, timed."""
    ready = _compiled_for(*arrays)
    if ready is not None:
        yield ready
        return
    with timed_numpy_loop():
        yield fit_loops


def _compiled_for(*arrays: np.ndarray) -> ModuleType | None:
    """The compiled loops (C or numba) when they are loaded and the arrays are what they
    were compiled for (float64, C order), else None."""
    ready = compiled()
    if ready is not None and all(a.dtype == np.float64 and a.flags.c_contiguous for a in arrays):
        return ready
    return None


def bincount(index: np.ndarray, weights: np.ndarray | None, bins: int) -> np.ndarray:
    """np.bincount(index, weights, minlength=bins) for indices below `bins`: without the GIL
    once the kernels are loaded (numpy's holds it, and binning a tensor's values was the
    largest GIL-held step of a 2-thread `q4` pack), else numpy's. Same counts, and with
    weights the same sums, added in the same order. Only int32 indices and float64 weights
    (what the histograms pass) take the kernels."""
    ready = compiled()
    if (
        ready is not None
        and index.dtype == np.int32
        and index.ndim == 1
        and index.flags.c_contiguous  # (another layout would compile another version mid-pack)
        and (
            weights is None
            or (weights.dtype == np.float64 and weights.shape == index.shape and weights.flags.c_contiguous)
        )
    ):
        out, ok = ready.count_bins(index, bins) if weights is None else ready.sum_bins(index, weights, bins)
        if ok:
            return out
    return np.bincount(index, weights, minlength=bins)  # (what numpy says of a bad index)


def prefix_sums(points: np.ndarray, weights: np.ndarray, out: np.ndarray) -> None:
    """out[1:, 0] = cumsum(weights), out[1:, 1] = cumsum(weights * points): the cell sums of a
    fit (kmeans_fit.CellSums). numpy's cumsum runs at 2.8 ns a value, eight cycles per
    dependent add, and was a sixth of a BERT-shaped `q4` pack (a prefix of 49K exact points per
    row group); the kernels' loop adds both running sums side by side, without the GIL. Both
    add in order, products rounded first: the same sums to the bit (tests compare)."""
    ready = _compiled_for(points, weights, out)
    if ready is not None:
        ready.prefix_sums(points, weights, out)
        return
    np.cumsum(weights, out=out[1:, 0])
    np.cumsum(weights * points, out=out[1:, 1])


def expect(work: float) -> None:
    """A pack is about to run `work` units of fit loops per core (Method.fit_work over the
    jobs): from load_for_work() on, start loading the kernels now, and let the fits wait for
    them rather than run numpy loops meanwhile (those held the GIL against the loading; reads
    and histograms go on). Waiting for the loops' first second cost the most on a model with
    many codebooks: BERT-base's kmeans8 command spent its 1.1 s of loops before the kernels
    were asked for, then waited for them at exit (3.5 s, against 2.7 s with numpy loops only
    and 2.3 s with kernels from the start). Per core, as the loops run on every core while
    the load (0.35-0.4 s) is waited for before any worker process is forked; whole commands,
    kernels from the start against numpy loops: at one job, all-MiniLM-L6-v2-shaped `q8`
    (9,728 units) 0.88x the time, `mobile` 0.94x; at two, BERT-shaped `kmeans8` and `q8`
    (9,600 a core) 0.97-0.98x, `q4` 0.82x, while MiniLM-shaped `q4` (6,472 a core) took 1.08x
    and `mobile` (6,732) 1.22x. Below it (VGG16's presets: at most 4,096 units, 0.27 s of
    loops) loading costs more than it saves."""
    global _awaited
    if work >= load_for_work() and _mode() == "auto":
        _awaited = True
        _start()


def load_for_work() -> float:
    """The fit work per core from which a pack loads the kernels at its start: less where
    their load will be lean (_lean_numba, or scipy imported already). Whole commands, the
    kernels from the start against numpy loops, with a lean load, at two jobs: MiniLM-shaped
    `q4` (6,472 units a core) 0.815x the time, `mobile` (6,732) 0.98x, `q8` (4,864) 0.94x,
    VGG16's --target-bits 4.5 (5,968) 0.90x; VGG16 `kmeans8` (2,048) 1.14x, and at one job
    (4,096, left under) 1.03x."""
    lean = os.environ.get("KFORMAT_NUMBA_LEAN") == "1" or "scipy" in sys.modules
    return LOAD_FOR_WORK_LEAN if lean else LOAD_FOR_WORK


@contextmanager
def timed_numpy_loop() -> Iterator[None]:
    """Count the CPU time of a numpy fit loop (this thread's); past WARM_AFTER, start loading
    the kernels."""
    start = time.thread_time()
    try:
        yield
    finally:
        global _spent
        _spent += time.thread_time() - start  # (a lost update between threads is harmless)
        if _spent >= WARM_AFTER and _loader is None and _mode() != "0":
            _start()


def settled() -> bool:
    """No load under way: the kernels are loaded, failed to load, or were never started.
    A process forked while they load would have to load them again (kformat.packing.forked)."""
    loader = _loader
    return loader is None or not loader.is_alive()


def _new_lock_after_fork() -> None:
    """A lock another thread held at fork stays held in the child for ever."""
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_after_fork)


_c: ModuleType | bool | None = None  # kernels_c once imported, False where it cannot be


def c_loops() -> ModuleType | None:
    """kernels_c, unless the extension was not built or KFORMAT_C_KERNELS=0: what compiled()
    hands out first, and what work numba has no twin of asks for (kformat.torch_linear's
    product from packed codes), never loading numba."""
    global _c
    if os.environ.get("KFORMAT_C_KERNELS") == "0":
        return None
    if _c is None:
        try:
            from . import kernels_c
        except ImportError:  # (not built: no compiler at install)
            _c = False
        else:
            _c = kernels_c
    return _c or None


def _start() -> None:
    """Start loading numba's kernels on a thread of their own, once per process (never
    where the C loops are there)."""
    global _loader
    if c_loops() is not None:
        return
    with _lock:
        if _loader is None:
            # not a daemon: an exit waits for it rather than stopping numba mid-compile
            _loader = threading.Thread(target=_load, name="kformat-kernels")
            _loader.start()


def _load() -> None:
    global _ready
    try:
        with _lean_numba():
            from . import kernels_numba

            kernels_numba.warm()
    except Exception:  # missing, or a numba that does not fit this numpy: numpy loops
        return
    _ready = kernels_numba


# What numba imports while it loads, for features these kernels never use: scipy (BLAS and
# LAPACK for np.dot and np.linalg in compiled code; scipy.linalg clones numpy's namespace,
# importing numpy.f2py) and cffi (calls into cffi modules; it imports pycparser).
NOT_FOR_NUMBA = ("scipy", "cffi")


class _RefusedToNumba(importlib.abc.MetaPathFinder):
    """Says a NOT_FOR_NUMBA package is missing to an import numba's own code makes; anyone
    else's import of it (another thread's, meanwhile) goes on as usual."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] not in NOT_FOR_NUMBA:
            return None
        frame = sys._getframe(1)
        while frame is not None and frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen")):
            frame = frame.f_back
        if frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] == "numba":
            raise ModuleNotFoundError(f"No module named {name!r} (kformat: not for numba)", name=name)
        return None


@contextmanager
def _lean_numba() -> Iterator[None]:
    """With KFORMAT_NUMBA_LEAN=1, load numba as it loads where scipy and cffi are not
    installed: 0.12 s of its 0.37 s start here, with both installed. That holds for the
    whole process (its compiled code then has no linear algebra and no cffi calls), so only
    a process of kformat's own asks for it (kformat.cli.run); a package already imported
    is used as it is."""
    if os.environ.get("KFORMAT_NUMBA_LEAN") != "1":
        yield
        return
    finder = _RefusedToNumba()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
