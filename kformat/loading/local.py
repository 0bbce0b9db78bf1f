"""Local files, read the careful way: only regular files, inside their container's directory,
each through one open handle, and refused when they change underneath the reader.

fsspec's local backend reopens a path for every read, so a file replaced during a load gives
a mix of two files, a FIFO blocks forever, and a shard that is a symlink leads anywhere.
Here a path is checked with stat before it is opened (and opened non-blocking, then checked
again on the handle), shards must resolve inside the directory that was opened, and every
read comes from the first handle with its size and identity checked.
"""

from __future__ import annotations

import os
import stat
import threading
import weakref
from dataclasses import dataclass

from ..errors import NotFound, StorageError


def local_path(url: str) -> str | None:
    """The absolute path `url` names when it is a local file or directory (a plain path, "~"
    expanded, or file://), else None (other schemes, chained URLs: fsspec's business)."""
    if "::" in url:
        return None
    if "://" in url:
        scheme, rest = url.split("://", 1)
        if scheme.lower() != "file":
            return None
        url = rest
    return os.path.abspath(os.path.expanduser(url))


@dataclass(frozen=True)
class _Handle:
    fd: int
    identity: tuple[int, int, int, int]  # device, inode, size, mtime (ns)


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


class LocalFiles:
    """Handles on the files below one root (a file, or a container's directory)."""

    def __init__(self, root: str):
        self.root = root
        self._handles: dict[str, _Handle] = {}
        self._lock = threading.Lock()
        # a reader never closed closes its descriptors when it goes, as a file object does
        weakref.finalize(self, _close_handles, self._handles)

    def _check_inside(self, path: str, where: str) -> None:
        if os.path.abspath(path) == os.path.abspath(self.root):
            return
        base = os.path.realpath(self.root)
        real = os.path.realpath(path)
        if real != base and not real.startswith(base.rstrip(os.sep) + os.sep):
            raise StorageError(f"{where}: resolves outside the container's directory; not following it")

    def _open(self, path: str, where: str) -> _Handle:
        self._check_inside(path, where)
        try:
            before = os.stat(path)
            if not stat.S_ISREG(before.st_mode):
                raise StorageError(f"{where}: is {_kind(before.st_mode)}, not a regular file")
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise NotFound(f"{where}: not found") from None
        except OSError as exc:
            raise StorageError(f"{where}: cannot open: {exc.strerror or exc}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            os.close(fd)
            raise StorageError(f"{where}: changed while being opened")
        return _Handle(fd, _identity(st))

    def handle(self, path: str, where: str) -> _Handle:
        with self._lock:
            h = self._handles.get(path)
            if h is None:
                h = self._handles[path] = self._open(path, where)
            return h

    def _check_unchanged(self, path: str, h: _Handle, where: str) -> None:
        try:
            now = _identity(os.stat(path))
        except OSError:
            now = None
        if now != h.identity or _identity(os.fstat(h.fd)) != h.identity:
            raise StorageError(f"{where}: the file changed while being read (replaced, rewritten or removed)")

    def size(self, path: str, where: str) -> int:
        h = self.handle(path, where)
        self._check_unchanged(path, h, where)
        return h.identity[2]

    def read(self, path: str, start: int, end: int, where: str) -> bytes:
        """Bytes [start, end) or fewer at the end of the file; the caller checks the length."""
        h = self.handle(path, where)
        self._check_unchanged(path, h, where)
        end = min(end, h.identity[2])
        parts, offset = [], start
        while offset < end:
            chunk = os.pread(h.fd, min(end - offset, 64 << 20), offset)
            if not chunk:
                break
            parts.append(chunk)
            offset += len(chunk)
        return b"".join(parts)

    def close(self) -> None:
        with self._lock:
            _close_handles(self._handles)


def _close_handles(handles: dict[str, _Handle]) -> None:
    """Close every handle and forget them (the dict stays the reader's: it may open again)."""
    for h in list(handles.values()):
        try:
            os.close(h.fd)
        except OSError:  # (closed already: nothing to release)
            pass
    handles.clear()
