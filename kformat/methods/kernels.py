"""Compiled loops for the codebook fits, when numba is installed (the `fast` extra).

A fit's inner loops (a layer of the 1-D k-means programme, Lloyd and entropy-constrained
Lloyd iterations on cell sums) are thousands of numpy calls on arrays of a few dozen values:
the interpreter holds the GIL between them, so with --jobs 2 one thread's fit stalled the
other's (15-40% of a pack's time at one job was such calls, which capped --jobs 2 near
1.3-1.5x). kernels_numba does the same arithmetic in the same order in compiled loops that
release the GIL, so the output is byte-identical with or without numba. Imported on the first
fit, never on load; KFORMAT_NUMBA=0 keeps the numpy loops.
"""

from __future__ import annotations

import os
import threading
from types import ModuleType

_LOCK = threading.Lock()
_loaded: list[ModuleType | None] = []  # [] before the first try, then [module or None]


def compiled() -> ModuleType | None:
    """kernels_numba, or None when numba is missing or KFORMAT_NUMBA=0."""
    if os.environ.get("KFORMAT_NUMBA", "1") == "0":
        return None
    if not _loaded:
        with _LOCK:
            if not _loaded:
                try:
                    from . import kernels_numba
                except Exception:  # missing, or a numba that does not fit this numpy: numpy loops
                    kernels_numba = None
                _loaded.append(kernels_numba)
    return _loaded[0]
