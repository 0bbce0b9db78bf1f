"""A long pole's row groups fitted in two processes: this one and one forked for the purpose.

A k-means tensor of many small row groups is hundreds of fits of a few dozen numpy calls
each, which hold the GIL: threads do not run them side by side, so such a pole (the word
embedding of a MiniLM-shaped model under a group rule: 477 groups, 0.31 s) ran on one core
while the other tensors were long done. Its groups divide (kformat.methods.kmeans_groups):
a child forked with the encoder in hand fits runs of them from the last one down, writing
its codes straight into memory both processes share and handing back only its codebook
rows and sums, while this process fits them from the first one up, until the two meet.
Shared out as each is free, not in halves: this process also has the other tensors and the
tiles, and its half had taken as long as the whole (MiniLM-shaped allocation: 0.30 s for
238 groups, the child's 239 long done; shared, 180 and 297 in 0.245 s). The parts are put
together in group order: the same bytes.

The local encoder asks for it for the long pole, and for every tensor where the tensors
are encoded on threads (bit allocation's rounds, sources that cannot be forked): BERT-
shaped --target-bits 4.5 at two jobs took 0.945x the time, its word embedding (22% of the
weights, no long pole) 0.48 s in its round against 0.82 s. Only where it pays: two or more
jobs, enough fit work (SPLIT_WORK) to cover the fork and the child's start, and no fit
kernels loading (a child forked meanwhile would run without them). KFORMAT_FORK=0 keeps it
in this process, as it does every tensor. A child that dies costs time, never the result:
its groups are fitted here.
"""

from __future__ import annotations

import mmap
import os
import threading

import numpy as np

from ..methods import Method, QuantizedTensor, kernels
from ..progress import log
from .processes import run, worker_processes

SPLIT_WORK = 2_000  # Method.fit_work units from which a pole's groups are split
RUNS = 16  # at least this many runs of groups to share out, where there are as many groups
# one tensor split at a time: another thread's tensor meanwhile is encoded whole (two
# children beside this process's threads would be more runnable processes than cores)
_one_at_a_time = threading.Lock()

_shared = None  # the child's (encoder, runs, marks), inherited at the fork (_adopt)


def _adopt(encoder, runs, marks) -> None:
    global _shared
    _shared = (encoder, runs, marks)


def _child_runs() -> list:
    encoder, runs, marks = _shared
    return _take_runs(encoder, runs, marks, from_end=True)


def _take_runs(encoder, runs: list[tuple[int, int]], marks: np.ndarray, from_end: bool) -> list:
    """Fit runs of groups until meeting the other process: this one from the first run up,
    the child from the last down. Each says in `marks` (shared: [the parent's latest run,
    the child's]) which run it starts, and stops at one the other has started. Both may
    start the same run as they meet (the same codes written twice, one part kept); none
    is left out, as a stale mark only shows less of the other's progress."""
    parts = []
    for i in range(len(runs) - 1, -1, -1) if from_end else range(len(runs)):
        if not claim(marks, i, from_end):
            break
        parts.append(encoder.run(*runs[i]))
    return parts


def claim(marks: np.ndarray, i: int, from_end: bool) -> bool:
    """Say that run i starts here, unless the other process has started it or one past it."""
    if (i <= marks[0]) if from_end else (i >= marks[1]):
        return False
    marks[1 if from_end else 0] = i
    return True


def _runs(encoder) -> list[tuple[int, int]]:
    """The runs of groups to share out: the encoder's batches, or RUNS runs where those are
    fewer (a run never holds more histograms than a batch)."""
    if len(encoder.batches) >= RUNS:
        return list(encoder.batches)
    step = -(-encoder.groups // RUNS)
    return [(g, min(encoder.groups, g + step)) for g in range(0, encoder.groups, step)]


def shared_array(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An array in anonymous shared memory: a child forked after it was made writes where
    this process reads."""
    count = int(np.prod(shape))
    size = max(1, count * np.dtype(dtype).itemsize)
    return np.frombuffer(mmap.mmap(-1, size), dtype=dtype, count=count).reshape(shape)


def worth_splitting(method: Method, view: tuple[int, int], rule, jobs: int) -> bool:
    return jobs >= 2 and os.environ.get("KFORMAT_FORK") != "0" and method.fit_work(view, rule) >= SPLIT_WORK


def encode_split(method: Method, name: str, w: np.ndarray, rule, weights=None) -> QuantizedTensor | None:
    """method.encode(name, w, rule, weights) with its row groups shared out between this
    process and a forked one as each is free; None where the rule's groups do not divide,
    there are fewer than two, or the fit kernels are still loading (the caller encodes it
    whole)."""
    kernels.compiled()  # (waits for them where the pack asked for them)
    if not kernels.settled() or not _one_at_a_time.acquire(blocking=False):
        return None
    try:
        return _encode_split(method, name, w, rule, weights)
    finally:
        _one_at_a_time.release()


def _encode_split(method: Method, name: str, w: np.ndarray, rule, weights) -> QuantizedTensor | None:
    encoder = method.group_encoder(name, w, rule, weights, codes=shared_array(w.shape, np.uint8))
    if encoder is None or encoder.groups < 2:
        return None
    runs = _runs(encoder)
    marks = shared_array((2,), np.int64)
    marks[:] = (-1, len(runs))
    with worker_processes(1, _adopt, encoder, runs, marks) as pool:
        if pool is None:  # (no processes here: the whole tensor in this one)
            return encoder.whole()
        done: set[int] = set()

        def missing() -> list:  # (the child died: the runs this process did not make)
            return [encoder.run(*run) for run in runs if run[0] not in done]

        theirs = run(pool, _child_runs, here=missing)
        mine = _take_runs(encoder, runs, marks, from_end=False)
        done.update(part.first for part in mine)
        found = theirs()
    parts = {part.first: part for part in found + mine}  # (one of a run both made)
    log.debug(
        "%s: %d of %d row groups fitted in a forked process",
        name,
        sum(p.stop - p.first for p in found),
        encoder.groups,
    )
    return encoder.finish(list(parts.values()))
