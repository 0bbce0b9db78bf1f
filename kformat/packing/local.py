"""Tensors encoded on this machine: the local encoder behind `kformat pack --jobs N`."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack

from ..methods import chunks
from ..recipe import Decision
from ..sources import TensorSource
from .encoded import Encoded, encode_blobs
from .forked import ForkedWorkers, enabled as forking
from .streamed import BlobStream


class LocalEncoder:
    """Tensors encoded on this machine's `jobs` threads, at most `jobs` + 1 of them not yet
    encoded at once (one waits for a thread, so a worker that finishes finds the next tensor
    read; finished ones wait for their turn within a byte budget, kformat.packing.admission);
    the passes within one large tensor use the same number of threads (methods.chunks).
    Large tensors go to `jobs` forked processes where the source allows, or beside a long
    pole, which stays here, every other tensor worth it to `jobs` - 1 (kformat.packing.forked).
    A tensor `earlier` containers hold by the same rule is read back from them instead
    (kformat.packing.reuse)."""

    def __init__(self, source: TensorSource, tile, importance, jobs: int, earlier=None):
        self.source, self.tile, self.importance, self.jobs = source, tile, importance, jobs
        self.earlier = earlier
        self.window = jobs + 1
        # large tensors go to worker processes: forkable, several jobs, not an allocation round
        # (see forked.py: allocation's rounds stay on threads)
        self.processes = forking(source, jobs) and earlier is None
        self._stack = ExitStack()

    def __enter__(self) -> "LocalEncoder":
        self.encoders = self._stack.enter_context(ThreadPoolExecutor(self.jobs, "kformat-encode"))
        self.tiles = self._stack.enter_context(ThreadPoolExecutor(self.jobs))
        self._stack.enter_context(chunks.threads(self.jobs))
        self.forked = None
        if self.processes:
            self.forked = ForkedWorkers(self.source, self.tile, self.importance, self.jobs, self.encoders)
            self._stack.callback(self.forked.close)  # (closed first: a dead child's work needs encoders)
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    @property
    def fit_cores(self) -> int:
        """The cores the plan's codebook fits run on side by side: the jobs with worker
        processes, one on threads (fits hold the GIL)."""
        return self.jobs if self.processes else 1

    def no_more(self) -> None:
        """Every tensor has been submitted: worker processes with none left may go."""
        if self.forked is not None:
            self.forked.no_more()

    def submit(self, decision: Decision, critical: bool = False, stream: BlobStream | None = None) -> Future:
        """Encode the tensor on a worker; `critical` (the long pole, submitted first) is
        encoded in this process, the other tensors in one process fewer (forked.py), its
        blobs also put in `stream` as they are made (kformat.packing.streamed)."""
        found = None if self.earlier is None else self.earlier.find(decision)
        if found is not None:
            done: Future = Future()
            done.set_result(found)
            return done
        if critical and self.forked is not None:  # the long pole: here, the rest in the processes
            self.forked.beside_pole(decision.name)
        if self.forked is not None and not critical:
            forked = self.forked.submit(decision)
            if forked is not None:
                return forked
        array = self.source.load(decision.name)  # this process's reads are from this thread only
        work = (decision.name, array, decision, self.tile, self.tiles, self.importance, self.jobs)
        # a pole's row groups, or any tensor's on threads, may be fitted in two processes
        split = self.jobs >= 2 and (critical or self.forked is None)
        future = self.encoders.submit(_occupying, *work, stream=stream, split=split)
        if critical and self.forked is not None:  # its thread then takes queued tensors too
            future.add_done_callback(lambda _: self.forked.pole_done(self.encoders))
        return future


def _occupying(*args, stream: BlobStream | None = None, split: bool = False) -> Encoded:
    """encode_blobs in a worker marked as occupied (methods.chunks: helpers go to free ones)."""
    with chunks.occupied():
        return encode_blobs(*args, stream=stream, split=split)
