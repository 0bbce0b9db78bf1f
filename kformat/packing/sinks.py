"""Where packed blobs go, atomically: one .kf file, or a sharded directory for CDNs.

A sink hands out BlobRefs as blobs arrive and writes the manifest last. Nothing appears at
the destination until `commit`: a single file is assembled under a temporary name in the
destination directory and renamed into place; a sharded directory's shards are immutable
files named by their content hash and the manifest is renamed into place last. `abort`
removes everything this run created, so a failed pack leaves no partial output.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from pathlib import Path

from .atomic import atomic_file, fsync_dir, publishable, sweep_stale, temp_prefix
from ..errors import StorageError
from ..format.constants import ALIGNMENT, HEADER_SIZE, MANIFEST_NAME, SHARD_DIR, SHARD_SUFFIX
from ..format.header import encode_header, encode_manifest
from ..format.manifest import BlobRef, Manifest, Shard


def _pad(n: int, alignment: int = ALIGNMENT) -> int:
    return (-n) % alignment


def _copy_rest(source, out) -> None:
    """Append `source` from its position to `out`: in the kernel where it can (no copy through
    user memory), else through a buffer."""
    out.flush()
    copied = 0
    try:
        while step := os.copy_file_range(source.fileno(), out.fileno(), 1 << 30):
            copied += step
    except (AttributeError, OSError):  # no copy_file_range here, or not between these files
        if copied:
            raise
        shutil.copyfileobj(source, out, 1 << 20)
    out.seek(0, os.SEEK_END)


SYNC_STEP = 16 << 20  # blob bytes written between background syncs of a file written in place
WASTE_DIVISOR = 1024  # a reserved gap of zeros may cost at most 1/1024 of the blob bytes


class SingleFileSink:
    """Blobs go to a temporary file beside the output; commit puts the header and manifest
    in front and renames it into place.

    With `reserve` (room for header and manifest guessed before the blobs, a multiple of
    4096) the blobs are written at that offset of the file that becomes the output, synced
    in the background every SYNC_STEP bytes, and the commit only writes the header and
    manifest in front of them: no copy of the blobs, and the final fsync finds little left
    to write. When the manifest does not fit, or the gap left would cost more than
    1/WASTE_DIVISOR of the blobs' bytes (small files), the commit writes the minimal layout
    (D = 64 + M rounded up to 64) to a second file instead, copying the blobs in the kernel.
    Without `reserve`, that is always the way."""

    layout = "single"

    def __init__(self, path: str | Path, reserve: int = 0):
        self.path = Path(path)
        if self.path.is_dir():
            raise StorageError(f"{self.path} is a directory: give a file name (or write a sharded directory)")
        if reserve % 4096:
            raise ValueError(f"reserve {reserve} is not a multiple of 4096")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(self.path.parent, self.path.name)
        self._spool = tempfile.NamedTemporaryFile(
            dir=self.path.parent, prefix=temp_prefix(self.path), suffix=".blobs", delete=False
        )
        self._reserve = reserve
        self._spool.seek(reserve)
        self._offset = 0
        self._synced = 0  # blob bytes handed to the last background sync
        self._syncing: threading.Thread | None = None
        self.committed = False

    def add(self, blob: bytes, digest: str | None = None) -> BlobRef:
        """Append a blob (`digest`: its SHA-256 when the caller has it already)."""
        pad = _pad(self._offset)
        if pad:
            self._spool.write(b"\0" * pad)
            self._offset += pad
        digest = digest or hashlib.sha256(blob).hexdigest()
        ref = BlobRef(offset=self._offset, length=len(blob), sha256=digest)
        self._spool.write(blob)
        self._offset += len(blob)
        if self._reserve and self._offset - self._synced >= SYNC_STEP and not self._sync_running():
            self._spool.flush()  # what the kernel has is written to disk while we go on
            self._synced = self._offset
            self._syncing = threading.Thread(target=_sync_quietly, args=(self._spool.fileno(),), daemon=True)
            self._syncing.start()
        return ref

    def _sync_running(self) -> bool:
        return self._syncing is not None and self._syncing.is_alive()

    def _sync_done(self) -> None:
        if self._syncing is not None:
            self._syncing.join()
            self._syncing = None

    def shards(self) -> list[Shard]:
        return []

    def commit(self, manifest: Manifest) -> None:
        body = encode_manifest(manifest)
        self.manifest_sha256 = hashlib.sha256(body).hexdigest()
        data_offset = HEADER_SIZE + len(body)
        data_offset += _pad(data_offset)
        self._spool.flush()
        self._sync_done()
        room = self._reserve
        if room and data_offset <= room and (room - data_offset) * WASTE_DIVISOR <= self._offset:
            self._commit_in_place(body)
            return
        self._spool.seek(room)
        with atomic_file(self.path) as out:
            out.write(encode_header(body, data_offset))
            out.write(body)
            out.write(b"\0" * (data_offset - HEADER_SIZE - len(body)))
            _copy_rest(self._spool, out)
            self.total_bytes = out.tell()
        fsync_dir(self.path.parent)
        self.committed = True
        self._drop_spool()

    def _commit_in_place(self, body: bytes) -> None:
        """Header and manifest at the front of the blobs' own file (the gap up to the data
        region stays a hole of zeros), then the file becomes the output."""
        self._spool.seek(0)
        self._spool.write(encode_header(body, self._reserve) + body)
        self._spool.flush()
        os.fsync(self._spool.fileno())
        self.total_bytes = self._reserve + self._offset
        self._spool.close()
        publishable(Path(self._spool.name))
        os.replace(self._spool.name, self.path)
        self.committed = True
        fsync_dir(self.path.parent)

    def abort(self) -> None:
        """Drop what a failed pack wrote; nothing once committed (the output is whole)."""
        if self.committed:
            return
        self._sync_done()
        self._drop_spool()

    def _drop_spool(self) -> None:
        self._spool.close()
        Path(self._spool.name).unlink(missing_ok=True)


def _sync_quietly(fd: int) -> None:
    """fdatasync, for speed only: the commit's fsync is what makes the file durable (and says
    so if it cannot); a file closed meanwhile is no longer this thread's business."""
    try:
        _DATASYNC(fd)
    except OSError:
        pass


_DATASYNC = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


class ShardedSink:
    """Blobs fill shards of at most `shard_size` bytes (a larger blob gets a shard alone)."""

    layout = "sharded"

    def __init__(self, directory: str | Path, shard_size: int):
        if shard_size < ALIGNMENT:
            raise StorageError(f"shard size {shard_size} is too small (at least {ALIGNMENT} bytes)")
        self.final_dir = Path(directory)
        if self.final_dir.exists() and not self.final_dir.is_dir():
            raise StorageError(f"{self.final_dir} exists and is not a directory")
        self._fresh = not self.final_dir.exists()
        if self._fresh:
            self.final_dir.parent.mkdir(parents=True, exist_ok=True)
            sweep_stale(self.final_dir.parent, self.final_dir.name)
            self.dir = Path(tempfile.mkdtemp(dir=self.final_dir.parent, prefix=temp_prefix(self.final_dir)))
        else:
            self.dir = self.final_dir
        (self.dir / SHARD_DIR).mkdir(exist_ok=True)
        sweep_stale(self.dir / SHARD_DIR)
        self.shard_size = shard_size
        self._shards: list[Shard] = []
        self._current = bytearray()
        self._created: list[Path] = []
        self.committed = False

    def add(self, blob: bytes, digest: str | None = None) -> BlobRef:
        """Append a blob (`digest`: its SHA-256 when the caller has it already)."""
        pad = _pad(len(self._current))
        if self._current and len(self._current) + pad + len(blob) > self.shard_size:
            self._seal()
            pad = 0
        self._current += b"\0" * pad
        ref = BlobRef(
            shard=len(self._shards),
            offset=len(self._current),
            length=len(blob),
            sha256=digest or hashlib.sha256(blob).hexdigest(),
        )
        self._current += blob
        return ref

    def _seal(self) -> None:
        digest = hashlib.sha256(self._current).hexdigest()
        name = f"{digest}{SHARD_SUFFIX}"
        target = self.dir / SHARD_DIR / name
        if not (target.exists() and target.stat().st_size == len(self._current)):
            with atomic_file(target) as out:
                out.write(self._current)
            self._created.append(target)
        self._shards.append(Shard(name=name, length=len(self._current), sha256=digest))
        self._current = bytearray()

    def shards(self) -> list[Shard]:
        if self._current:
            self._seal()
        return list(self._shards)

    def commit(self, manifest: Manifest) -> None:
        body = encode_manifest(manifest)
        self.manifest_sha256 = hashlib.sha256(body).hexdigest()
        with atomic_file(self.dir / MANIFEST_NAME) as out:
            out.write(encode_header(body, 0))
            out.write(body)
        self.total_bytes = HEADER_SIZE + len(body) + sum(s.length for s in self._shards)
        fsync_dir(self.dir / SHARD_DIR)
        if self._fresh:
            publishable(self.dir, directory=True)
            os.replace(self.dir, self.final_dir)
        self.committed = True
        fsync_dir(self.final_dir)

    def abort(self) -> None:
        """Drop what a failed pack wrote; nothing once committed (its shards are the output's)."""
        if self.committed:
            return
        if self._fresh:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            for path in self._created:
                path.unlink(missing_ok=True)
