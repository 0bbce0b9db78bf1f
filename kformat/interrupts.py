"""SIGTERM handled as ^C is: the command stops, and a pack in progress removes what it began.

By default SIGTERM ends a process on the spot: a pack left its temporary file behind, and
the worker processes it had forked (kformat.packing.forked) outlived it.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM)."""


_pending = False  # a SIGTERM came within terminate_as_interrupt()


_deferring = 0  # blocks within deferred()


def _raise_terminated(signum, frame) -> None:
    global _pending
    _pending = True
    if not _deferring:
        raise Terminated()


@contextmanager
def deferred() -> Iterator[None]:
    """Within the block a SIGTERM only marks itself, and raises at the block's end: for code
    where an exception would be lost, as in a fork (its at-fork hooks run Python, and an
    exception raised there is printed and dropped)."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    check()


def check() -> None:
    """Raise Terminated if a SIGTERM came and its exception was lost: one raised while an
    at-fork hook or a finalizer runs is printed and dropped (a pack forking its workers
    finished its work after the signal). Long loops call this between their steps."""
    if _pending:
        raise Terminated()


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated in the main thread (elsewhere: unchanged)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _pending
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _pending = False
