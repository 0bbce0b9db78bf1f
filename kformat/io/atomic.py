"""Write a file under a temporary name in its directory, then rename it into place."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path next to `path`; on success it replaces `path`, else vanishes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(temp)
        from ..sinks import publishable

        publishable(Path(temp))
        os.replace(temp, path)
    finally:
        Path(temp).unlink(missing_ok=True)
