"""When the packer may read and submit its next tensor: tensors finish out of order, are
written in file order, and only a bounded number are in memory.

A tensor is in memory from its read until it is written: its input while it waits for a
worker or is encoded, then its encoded blobs while it waits for the tensors before it in file
order. The first is what costs (inputs are 2-8x their blobs), so the window counts the
tensors not yet encoded; the second is capped by a byte budget of the bytes they hold (an
Encoded's held_bytes; anything else counts its input size). Counted at their input sizes,
as they were, the finished tensors of a BERT-shaped `q4` pack at two jobs filled the budget
(the largest tensor's bytes, the word embeddings, still being encoded ahead of them in file
order) with a tenth of it held, and the worker processes waited 0.4 s for work. Blocking on
the oldest tensor instead, as the packer used to, left a worker idle behind a long one: on
VGG16 the first FC layer (74% of the weights) is started first, out of file order, and
tensors after it in file order could not start until it was written, though it held one
thread and its passes the others only part of the time.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import FIRST_COMPLETED, wait
from math import inf
from typing import Any, Callable

Pending = deque  # of (future, input bytes), in file order


def make_room(
    pending: Pending, write: Callable[[Any], None], window: int, budget: float, pole: Any = None
) -> None:
    """Write the finished tensors at the head of `pending`, then wait until fewer than `window`
    tensors other than `pole` (the long pole, started first and counted apart) are still being
    encoded and the finished ones waiting to be written hold at most `budget` input bytes.
    write(future) writes the head's tensor, waiting for it if need be (the pole's blobs as they
    come: kformat.packing.streamed). Futures need done() and result(); concurrent ones, to be
    waited on (window counts)."""
    while True:
        while pending and pending[0][0].done():
            write(pending.popleft()[0])
        working = [future for future, _ in pending if future is not pole and not future.done()]
        held = sum(_held(future, size) for future, size in pending if future.done()) if budget < inf else 0
        if len(working) < window and held <= budget:
            return
        if len(working) >= window:
            wait(working, return_when=FIRST_COMPLETED)
        else:  # finished tensors hold too much: they wait on the head, so the head is waited for
            write(pending.popleft()[0])


def _held(future, input_bytes: int) -> int:
    """The bytes a finished tensor holds while it waits: an Encoded's blobs and tables, else its
    input size (a failed one, nothing: it is raised when its turn comes)."""
    if future.exception() is not None:
        return 0
    return getattr(future.result(), "held_bytes", input_bytes)
