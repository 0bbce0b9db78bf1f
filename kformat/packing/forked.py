"""Large tensors read and encoded in forked worker processes, beside the packer's threads.

Threads share one GIL. A k-means fit is hundreds of small numpy calls per codebook that
hold it, so on a model of many mid-sized matrices two threads fitting side by side wait for
each other: a BERT-shaped `q4` pack (1,773 row-group codebooks) ran 1.22x faster at
`--jobs 2` than at 1, where two processes ran 1.85x (pack_speed.py --ceiling). So, with
`jobs` >= 2, the local encoder hands each tensor of FORK_BYTES or more to one of `jobs`
forked processes:

- the child reads the tensor itself (the source is `forkable`: in-memory arrays, inherited
  copy-on-write; safetensors, read by offset through descriptors of its own), so reads run
  side by side too, and only the encoded tensor comes back: its tile blobs and tables, the
  bytes the file will hold, the blobs through a file rather than the result pipe
  (kformat.packing.spill);
- small tensors stay in this process, not worth a round trip;
- a pack with a long pole (a tensor of a third of the model or more, started first)
  encodes the pole in this process and the other tensors of POLE_FORK_BYTES or more in
  `jobs` - 1 processes. On threads beside it, the others' fits held the GIL the pole's
  passes wait for between their numpy calls: VGG16's first FC layer (74% of the weights)
  took 2.2x as long to fit `mobile` beside a thread fitting the second, 1.03x beside a
  process doing so. A tensor in a process counts as a busy worker (methods.chunks), so the
  pole recruits helpers only once the processes run out of tensors: helpers beside the
  children (three runnable on two cores) had made VGG16's bit allocation 1.4x slower.
  `kformat.pack` of VGG16's safetensors file at `--jobs 2` (imports excluded) took 0.89x
  the time on `mobile`, 0.87x on `q4`, 0.94x on `int8`, 0.97x on `kmeans8` and 1.01x on
  `kmeans4` (medians of 4 alternating runs);
- bit allocation's packing rounds (packs that reuse `earlier` ones) stay on threads: their
  fits start from the seeds and histograms weighing remembered, and with children a BERT-
  shaped --target-bits 4.5 command took 1.04x the time;
- the processes are forked once the fit kernels are settled (methods.kernels): forked
  while numba loads, each child would load it again, 0.5-0.9 s of CPU each. Until then
  tensors go to threads. (Forked at once, each child loading the kernels itself, BERT-
  shaped `q4` and `kmeans8` commands took 1.36x and 1.25x the time.);
- a child that dies costs time, never the result: its tensor is encoded in this process;
- tensors wait in a queue of this class until a process is free, and once the long pole is
  done this process takes queued ones too (`pole_done`): its thread would otherwise idle
  while the processes worked through the queue. An all-MiniLM-L6-v2-shaped `mobile` pack at
  two jobs (its pole, the word embedding, fp16 and done in tens of milliseconds; 34 fits
  after it) took 0.82 s against 1.14 s with numpy loops (as without the `fast` extra), this
  process taking 17 of them; with the compiled loops the fits are short and it gains little.
  On VGG16 the process is on its last tensor when the pole is done: the same time.

The output is byte-identical: the same encode_blobs, and the writer places the results in
file order as before. KFORMAT_FORK=0 keeps every tensor on threads. Linux only (fork).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import Executor, Future
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack
from typing import Callable

import numpy as np

from ..methods import chunks, kernels
from ..progress import log
from ..recipe import Decision
from ..sources import TensorSource
from .encoded import Encoded, encode_blobs
from .processes import InHand, stop_soon, worker_processes
from .spill import Spill, restored, spilled

FORK_BYTES = 1 << 20  # smaller tensors (biases, norms) are encoded in this process
POLE_FORK_BYTES = 1 << 14  # the same, beside a long pole: small fits go to the processes too

_source: TensorSource | None = None  # a child's source and importance (set by _adopt)
_importance = None


def enabled(source: TensorSource, jobs: int) -> bool:
    """Whether a pack of `source` on `jobs` workers may use worker processes."""
    return jobs >= 2 and bool(getattr(source, "forkable", False)) and os.environ.get("KFORMAT_FORK") != "0"


class ForkedWorkers:
    """`jobs` forked processes encoding the large tensors of one pack, forked on first use."""

    def __init__(self, source: TensorSource, tile, importance, jobs: int, fallback: Executor):
        self.source, self.tile, self.importance, self.jobs = source, tile, importance, jobs
        self.fallback = fallback  # where a dead child's tensor is encoded instead
        self.sizes = {t.name: int(np.prod(t.shape)) * np.dtype(t.dtype).itemsize for t in source.tensors()}
        self._stack = ExitStack()
        self._pool: Executor | None = None
        self._spill: Spill | None = None
        self._usable = True
        self.sent = 0  # tensors handed to the processes
        self.taken = 0  # queued tensors this process took once the pole was done
        self._closing = False
        self._in_hand = InHand(jobs)  # the tensors they hold, for the chunk helpers
        self.smallest = FORK_BYTES  # tensors of fewer bytes are encoded in this process
        self._queue: deque[tuple[Decision, Future]] = deque()  # waiting for a free worker
        self._lock = threading.Lock()
        self._running = 0  # tensors in the processes now
        self._here: Executor | None = None  # this process's thread, once the pole is done
        self._here_busy = False
        self._last_sent = False  # no tensor comes after those submitted (no_more)

    def close(self) -> None:
        self._closing = True  # a child that dies from now on (^C, an error) is not made up for
        with self._lock:  # (a failing pack: what never started is dropped)
            dropped, self._queue = list(self._queue), deque()
        for _, outcome in dropped:
            outcome.cancel()
        self._stack.close()
        chunks.elsewhere(0)
        if self.sent or self.taken:
            log.debug(
                "%d tensors handed out: %d read and encoded in %d worker processes, %d in this"
                " process once the long pole was done",
                self.sent + self.taken,
                self.sent,
                self.jobs,
                self.taken,
            )

    def submit(self, decision: Decision) -> Future | None:
        """The tensor's Encoded from a worker process (or, once the pole is done, this
        process's thread, whichever is free first), or None: encode it here (too small, the
        kernels still loading, or no processes)."""
        if not self._usable or self.sizes.get(decision.name, 0) < self.smallest:
            return None
        if self._pool is None and not self._start():
            return None
        outcome: Future = Future()
        with self._lock:
            self._queue.append((decision, outcome))
        self._dispatch()
        return outcome

    def pole_done(self, here: Executor) -> None:
        """The long pole is encoded: from now on `here` (its thread) takes queued tensors too."""
        with self._lock:
            self._here = here
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand queued tensors to free processes, then to this process's free thread; once the
        processes are gone (a child died), to the fallback threads. (Also called from a
        child's done callback, on the pool's manager thread: submitting from there is safe,
        it holds no lock of the pool's while callbacks run.)"""
        while True:
            with self._lock:
                if not self._queue:
                    return
                if not self._usable:
                    route = "fallback"
                elif self._running < self.jobs:
                    self._running += 1
                    self.sent += 1
                    route = "child"
                elif self._here is not None and not self._here_busy:
                    self._here_busy = True
                    self.taken += 1
                    route = "here"
                else:
                    return
                decision, outcome = self._queue.popleft()
            if route == "child":
                self._send(decision, outcome)
            elif route == "here":
                self._take_here(self._here, decision, outcome)
            else:
                self._retry_here(decision, outcome)

    def _send(self, decision: Decision, outcome: Future) -> None:
        path = self._spill.next_path() if self._spill is not None else None
        try:
            child = self._pool.submit(_encode_in_child, decision, self.tile, path)
        except (BrokenProcessPool, RuntimeError) as exc:
            self._usable = False
            with self._lock:
                self.sent -= 1
            if self._closing:
                _settle(outcome, exc)
            else:
                self._retry_here(decision, outcome)
            self._child_done()
            return
        self._in_hand.track(child)  # (counted off before _relay runs)
        child.add_done_callback(lambda done: self._relay(done, outcome, decision, path))
        child.add_done_callback(lambda _: self._child_done())

    def _child_done(self) -> None:
        with self._lock:
            self._running -= 1
        self._dispatch()
        self._stop_when_idle()

    def no_more(self) -> None:
        """No tensor is submitted after those already: once the processes have none left,
        they may go (processes.stop_soon), while this process still works."""
        self._last_sent = True
        self._stop_when_idle()

    def _stop_when_idle(self) -> None:
        with self._lock:
            idle = self._last_sent and self._running == 0 and not self._queue and not self._closing
        if idle and self._pool is not None:
            stop_soon(self._pool)

    def _take_here(self, here: Executor, decision: Decision, outcome: Future) -> None:
        """A queued tensor encoded on this process's free thread (the source reads by offset,
        from any thread: it is forkable)."""

        def encode() -> None:
            try:
                with chunks.occupied():
                    _settle(outcome, lambda: _encode_here(self.source, decision, self.tile, self.importance))
            finally:
                with self._lock:
                    self._here_busy = False
                self._dispatch()

        try:
            here.submit(encode)
        except RuntimeError as exc:  # the pack is shutting down
            with self._lock:
                self._here_busy = False
            _settle(outcome, exc)

    def _relay(self, done: Future, outcome: Future, decision: Decision, path: str | None) -> None:
        """Pass on a child's result (its blobs from the spill file) or error; if the child
        died, encode the tensor here."""
        if done.cancelled():  # the pack is failing: its pending work is dropped
            outcome.cancel()
            return
        error = done.exception()
        if not isinstance(error, BrokenProcessPool):
            _settle(outcome, (lambda: restored(*done.result(), path)) if error is None else error)
            return
        self._usable = False
        if self._closing:
            _settle(outcome, error)
            return
        log.info("%s: a worker process died; encoding it in this process", decision.name)
        self._retry_here(decision, outcome)

    def _retry_here(self, decision: Decision, outcome: Future) -> None:
        """A tensor no process can take, encoded on the fallback threads instead."""
        try:
            again = self.fallback.submit(_encode_here, self.source, decision, self.tile, self.importance)
        except RuntimeError as exc:  # the pack is shutting down
            _settle(outcome, exc)
            return
        again.add_done_callback(lambda retried: _settle(outcome, retried.exception() or retried.result))

    def _start(self) -> bool:
        """Fork the processes unless the kernels are loading; whether there are some now."""
        if self._pool is None and self._usable and kernels.settled():
            self._spill = Spill.made()
            if self._spill is not None:
                self._stack.callback(self._spill.close)  # (after the processes have stopped)
            self._pool = self._stack.enter_context(
                worker_processes(self.jobs, _adopt, self.source, self.importance)
            )
            self._usable = self._pool is not None
        return self._pool is not None

    def beside_pole(self, pole: str) -> None:
        """A long pole is encoded in this process: the processes, one fewer than the jobs, take
        every other tensor worth a round trip, fits above all, so that this process's
        interpreter is the pole's alone (see the module's docstring). They are forked now
        (unless the kernels are loading), before the pole's thread starts, so that no thread
        of the pack is at work at the fork (one could be mid-import: processes.py). The
        same pack time as forking at the next tensor (6 alternating runs of 3 presets).
        Nothing is forked when no other tensor is worth a process (a lone tensor)."""
        self.jobs = self._in_hand.workers = max(1, self.jobs - 1)
        self.smallest = POLE_FORK_BYTES
        if any(size >= self.smallest for name, size in self.sizes.items() if name != pole):
            self._start()


def _settle(outcome: Future, result: Callable[[], Encoded] | BaseException) -> None:
    """Settle `outcome` with result() or the error, whichever: an error raised in a done
    callback would be logged and dropped, and the pack would wait for ever."""
    if not isinstance(result, BaseException):
        try:
            outcome.set_result(result())
            return
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting pack as it is
            result = exc
    outcome.set_exception(result)


def _adopt(source: TensorSource, importance) -> None:
    """A child's start: the source and importance, inherited from the fork (not pickled)."""
    global _source, _importance
    _source, _importance = source, importance


def _encode_in_child(decision: Decision, tile, path: str | None) -> tuple[Encoded, list[int] | None]:
    """The tensor encoded, its blobs written to `path` if any (kformat.packing.spill)."""
    return spilled(_encode_here(_source, decision, tile, _importance), path)


def _encode_here(source: TensorSource, decision: Decision, tile, importance) -> Encoded:
    """Read and encode one tensor on the calling thread (its tiles and passes too)."""
    return encode_blobs(decision.name, source.load(decision.name), decision, tile, importance=importance)
