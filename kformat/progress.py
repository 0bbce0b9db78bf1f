"""Progress reports from long operations (pack, unpack, verify, publish).

A progress callback is any `callable(done, total, what)`: `done` of `total` items (tensors or
blobs), `what` the one starting. A callback that also has a `bytes(done_bytes, total_bytes)`
method is told the bytes as well, so it can show a rate and an ETA (the command line's bar
does, through tqdm when installed). Library code logs to the "kformat" logger.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from typing import Callable

Progress = Callable[[int, int, str], None]
log = logging.getLogger("kformat")


class Tracker:
    """Counts items and bytes for one operation and forwards them to a callback."""

    def __init__(self, progress: Progress | None, total: int, total_bytes: int | None = None):
        self.progress = progress
        self.total = total
        self.total_bytes = total_bytes
        self.done = 0
        self.done_bytes = 0
        self._bytes = getattr(progress, "bytes", None)
        if self._bytes is not None:
            self._bytes(0, total_bytes)

    def start(self, what: str) -> None:
        """Item `self.done` (named `what`) begins."""
        if self.progress:
            self.progress(self.done, self.total, what)

    def finish_item(self, nbytes: int = 0, count: int = 1) -> None:
        self.done += count
        self.done_bytes += nbytes
        if self._bytes is not None:
            self._bytes(self.done_bytes, self.total_bytes)

    def close(self) -> None:
        if self.progress:
            self.progress(self.total, self.total, "")


class TerminalProgress:
    """Progress on stderr when it is a terminal: a tqdm bar of bytes with rate and ETA (the
    `progress` extra), else one line rewritten in place."""

    def __init__(self, verb: str, enabled: bool | None = None):
        self.verb = verb
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.start = time.monotonic()
        self.bar = None
        self.done_bytes, self.total_bytes = 0, None

    def __call__(self, done: int, total: int, what: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None and self.bar is not False:
            if done >= total:
                self.bar.set_postfix_str(f"{total}/{total}", refresh=False)
                self.bar.close()
                self.bar = None  # a later phase of the same command (allocation's rounds) opens its own
            else:
                self.bar.set_postfix_str(f"{done + 1}/{total} {what[:40]}", refresh=False)
            return
        elapsed = time.monotonic() - self.start
        if done >= total:
            sys.stderr.write(f"\r\033[K{self.verb}: {total}/{total} done in {elapsed:.1f}s\n")
        else:
            sys.stderr.write(f"\r\033[K{self.verb}: {done + 1}/{total}{self._rate(elapsed)} {what[:50]}")
        sys.stderr.flush()

    def bytes(self, done_bytes: int, total_bytes: int | None) -> None:
        """Called by the library with bytes done so far; the first call opens the bar."""
        self.done_bytes, self.total_bytes = done_bytes, total_bytes
        if not self.enabled:
            return
        if self.bar is None:
            try:
                from tqdm import tqdm

                size = shutil.get_terminal_size((100, 24))  # 0 x 0 on a sizeless pty, where tqdm
                self.bar = tqdm(  # took the height for -1 rows and drew nothing
                    desc=self.verb,
                    total=total_bytes,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    ncols=size.columns or 100,
                    nrows=size.lines or 24,
                )
            except ImportError:
                self.bar = False
        if self.bar is not False:
            self.bar.update(done_bytes - self.bar.n)

    def _rate(self, elapsed: float) -> str:
        from .summary import human_bytes

        if not self.total_bytes or not self.done_bytes or elapsed <= 0:
            return ""
        rate = self.done_bytes / elapsed
        eta = (self.total_bytes - self.done_bytes) / rate
        done, total = human_bytes(self.done_bytes), human_bytes(self.total_bytes)
        return f", {done}/{total}, {human_bytes(rate)}/s, ETA {eta:.0f}s"


def configure_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Log lines on stderr, as the command line shows them: warnings by default, what each step
    decides with verbose=1 (INFO), every tensor with verbose=2 (DEBUG), errors only when quiet."""
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("kformat: %(levelname)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
