"""Peak memory of the current process, with the standard library only (so that importing it
does not change what it measures)."""

from __future__ import annotations

import sys


def peak_rss_bytes() -> int:
    """Peak resident memory of this process since it started.

    VmHWM where Linux has it, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so a
    child process would report at least its parent's size at the time of the fork."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
