"""What bit allocation keeps of its fits while it runs, so that later fits find it: seeds
of the exact programme by the content of the merged histogram they seed, and whole tensors'
histograms by the tensor's name (kformat.methods.kmeans_fit, kformat.packing.allocate)."""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterator

import numpy as np

from .histogram import Histogram


class _Memo:
    """Seeds by (k, the merged points' bytes) and whole tensors' histograms by name, kept
    while `remembered_seeds` is active."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.found: dict[tuple[int, bytes], np.ndarray] = {}
        self.histograms: dict[tuple, Histogram] = {}  # a named tensor's, by (name, weighted, shape)
        self.bytes = 0  # of the seeds and histograms kept: at most MEMO_BYTES, later ones are not kept


MEMO_BYTES = 32 << 20  # a model's every candidate fit keeps far less; a cap for huge ones


_MEMO = _Memo()


def _new_memo_after_fork() -> None:  # its lock may have been held when this process forked
    global _MEMO
    _MEMO = _Memo()


os.register_at_fork(after_in_child=_new_memo_after_fork)


@contextmanager
def remembered_seeds() -> Iterator[None]:
    """Keep every seed computed meanwhile, so a later fit of the same merged histogram and
    k reuses it. Bit allocation computes the seeds of many tensors' histograms in one batch
    first (much fewer numpy passes than one by one: 3.7x at k = 32 over MiniLM's 39
    matrices), then encodes each candidate, whose fits find them here. The key is the
    content of the merged points, so a fit never gets another histogram's seed."""
    with _MEMO.lock:
        _MEMO.users += 1
    try:
        yield
    finally:
        with _MEMO.lock:
            _MEMO.users -= 1
            if not _MEMO.users:
                _MEMO.found.clear()
                _MEMO.histograms.clear()
                _MEMO.bytes = 0


def seeds_kept() -> dict:
    """The seeds remembered so far (a copy): what a worker process that weighed a tensor hands
    back, so that this process's encodes find them (keep_seeds)."""
    with _MEMO.lock:
        return dict(_MEMO.found)


def keep_seeds(found: dict) -> None:
    """Remember seeds computed elsewhere (seeds_kept), while remembered_seeds is on."""
    with _MEMO.lock:
        if not _MEMO.users:
            return
        for key, seed in found.items():
            if _MEMO.bytes + seed.nbytes > MEMO_BYTES:
                break
            if key not in _MEMO.found:
                seed.setflags(write=False)  # shared by every fit that finds it
                _MEMO.found[key] = seed
                _MEMO.bytes += seed.nbytes + 64


def remember_histogram(key: tuple, hist: Histogram) -> None:
    """Keep a whole tensor's histogram under `key` (its name, whether importance-weighted, its
    shape: kmeans_allocation.whole_key) while remembered_seeds is on: allocation's weighing reads it, and the
    pack of the chosen rule finds it instead of reading the tensor again (one source, so a
    name stands for the same values throughout)."""
    size = hist.points.nbytes + hist.counts.nbytes
    with _MEMO.lock:
        if _MEMO.users and key not in _MEMO.histograms and _MEMO.bytes + size <= MEMO_BYTES:
            _MEMO.histograms[key] = hist
            _MEMO.bytes += size


def histograms_kept() -> dict:
    """The whole tensors' histograms remembered so far (a copy): what a worker process that
    summarized tensors hands back, for this process's encodes (keep_histograms)."""
    with _MEMO.lock:
        return dict(_MEMO.histograms)


def keep_histograms(found: dict) -> None:
    """Remember whole tensors' histograms made elsewhere (histograms_kept)."""
    for key, hist in found.items():
        remember_histogram(key, hist)


def remembered_histogram(key: tuple) -> Histogram | None:
    with _MEMO.lock:
        return _MEMO.histograms.get(key) if _MEMO.users else None


def active() -> bool:
    return _MEMO.users > 0


def known_seeds(keys: list) -> list:
    """The seeds remembered under `keys` (None where there is none)."""
    with _MEMO.lock:
        return [_MEMO.found.get(key) for key in keys]
