"""The progress a terminal shows while a command works."""

import os
import select
import signal
import sys
import time

import numpy as np
import pytest

pty = pytest.importorskip("pty")


def _run_on_a_terminal(args: list[str]) -> bytes:
    """What `python -m kformat ARGS` writes to a pseudo-terminal with no window size (as
    some CI terminals, `docker run -t` before a resize and editors' shells are)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its standard streams are the terminal
        try:
            os.execv(sys.executable, [sys.executable, "-m", "kformat", *args])
        finally:
            os._exit(127)  # (never back into pytest)
    out, deadline = b"", time.monotonic() + 120
    while time.monotonic() < deadline:
        if not select.select([fd], [], [], 1.0)[0]:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    else:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out[-2000:]
    return out


def test_a_bar_is_drawn_on_a_terminal_without_a_size(tmp_path):
    """tqdm took a 0 x 0 terminal for one of -1 rows and drew no bar at all: a pack showed
    nothing until it printed its summary."""
    pytest.importorskip("tqdm")
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "m.npz",
        **{f"l{i}.weight": rng.standard_normal((256, 256)).astype(np.float32) for i in range(4)},
    )
    out = _run_on_a_terminal(["pack", str(tmp_path / "m.npz"), "-o", str(tmp_path / "m.kf"), "-r", "kmeans4"])
    assert b"pack:" in out and b"%|" in out  # the bar
    assert b"packed 4 tensors" in out
