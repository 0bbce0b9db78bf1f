"""Write a file under a temporary name beside its target, then rename it into place.

Every file kformat writes (containers, shards, manifests, unpacked models) goes through
here, so none is ever seen half-written and a failure leaves no temporary behind. A process
killed outright (SIGKILL, power loss) cannot clean up, so temporaries carry their writer's
pid (`.NAME.kformat-PID-RANDOM`) and the next write to the same place sweeps those whose
writer is gone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from ..errors import KFormatError, StorageError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def publishable(path: Path, directory: bool = False) -> None:
    """Give a temporary file (0600) or directory (0700) the usual umask-derived mode, so a
    web server's worker can read what we publish."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_UMASK)


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


TEMP_MARK = ".kformat-"


def temp_prefix(target: Path) -> str:
    """The prefix of this process's temporaries for `target` (for mkstemp and mkdtemp)."""
    return f".{target.name}{TEMP_MARK}{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def sweep_stale(directory: Path, name: str = "*") -> list[Path]:
    """Remove temporaries in `directory` (for target `name`) left by writers that died."""
    removed = []
    for temp in directory.glob(f".{name}{TEMP_MARK}*"):
        pid_text = temp.name.rsplit(TEMP_MARK, 1)[1].split("-", 1)[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        if temp.is_dir() and not temp.is_symlink():
            shutil.rmtree(temp, ignore_errors=True)
        else:
            temp.unlink(missing_ok=True)
        removed.append(temp)
    return removed


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path`, else vanishes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path.parent, path.name)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=".tmp")
    os.close(fd)
    try:
        yield Path(temp)
        publishable(Path(temp))
        os.replace(temp, path)
    finally:
        Path(temp).unlink(missing_ok=True)


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """Like atomic_path, but yield the temporary file open for writing; it is flushed and
    fsynced before the rename."""
    with atomic_path(path) as temp, open(temp, "wb") as out:
        yield out
        out.flush()
        os.fsync(out.fileno())


@contextmanager
def write_errors(target: Path | str, verb: str = "write") -> Iterator[None]:
    """Turn an operating-system error while writing `target` (read-only or full disk, a missing
    or unwritable directory, a special filesystem) into a one-line StorageError naming it."""
    try:
        yield
    except KFormatError:
        raise
    except OSError as exc:
        where = exc.filename or target
        if TEMP_MARK in Path(str(where)).name:  # our own temporary: name what the user asked for
            where = target
        context = "" if str(where) == str(target) else f" (while writing {target})"
        raise StorageError(f"{where}: cannot {verb}: {exc.strerror or exc}{context}") from None


def remove_path(path: Path) -> None:
    """Remove a file or a directory tree, if there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def promote(temp: Path, target: Path) -> None:
    """Move a finished temporary (file or directory) into place; a directory cannot be
    replaced in one rename, so an old one is removed first."""
    if target.is_dir() and not target.is_symlink():
        remove_path(target)
    if temp.is_dir():
        publishable(temp, directory=True)
    os.replace(temp, target)
    fsync_dir(target.parent)
