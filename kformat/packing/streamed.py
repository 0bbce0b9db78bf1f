"""The long pole's tile blobs written while it is still encoding.

Tensors are written in file order once encoded, so the long pole (started first, and near
the front of most files) was written whole after its last tile: on VGG16 `kmeans8`, 102 MB
in 88 ms at the end of the pack, with every core idle but the writer's, 16% of an 0.84 s
pack at two jobs. A BlobStream collects the pole's blobs as its tile threads make them, and
the packer, once every tensor before the pole is written, writes them in tile order as they
come, so at the end only the last tiles are left to write.

A blob is written only once the blobs made so far rule out the one change encode_blobs may
still make to them: planes that compress past the reader's limit are stored raw instead
(kformat.packing.encoded.stored_raw), which needs the whole tensor's bytes to decide. Past
(input bytes - slack) / MAX_AMPLIFICATION bytes of blobs (a few KB for any real tensor) it
can no longer happen. The bytes of the file are the same: the same blobs, in the same order.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Callable

WAKE = 0.05  # seconds between checks for an interrupt while waiting for blobs


class BlobStream:
    """Blobs of one tensor by tile index, put by the threads that make them."""

    def __init__(self) -> None:
        self._final: Callable[[int], bool] | None = None  # (begin())
        self._made: dict[int, tuple[bytes, str]] = {}
        self._bytes = 0
        self._changed = threading.Condition()

    def begin(self, final: Callable[[int], bool]) -> None:
        """The tensor's tiles are about to be made; final(bytes) says whether that many bytes
        of blobs rule out the fallback (then every blob made is final)."""
        with self._changed:
            self._final = final
            self._changed.notify_all()

    def put(self, index: int, blob: bytes, digest: str) -> None:
        with self._changed:
            self._made[index] = (blob, digest)
            self._bytes += len(blob)
            self._changed.notify_all()

    @property
    def made_bytes(self) -> int:
        """The bytes of every blob put so far."""
        return self._bytes

    def unwritten(self, count: int) -> list[bytes | None]:
        """Once all `count` blobs are put: those the writer will not take from the stream,
        None for each it will. Their bytes rule out the fallback, so it takes them all; or
        they do not, so it takes none (and they come back whole, the stream let go of them)."""
        with self._changed:
            if self._safe():
                return [None] * count
            return [self._made.pop(index)[0] for index in range(count)]

    def _safe(self) -> bool:
        return self._final is not None and self._final(self._bytes)

    def write_while_encoding(self, add, future: Future, check=lambda: None) -> list:
        """add(blob, digest) for each blob in tile order as they come, once safe, until
        `future` (the tensor's Encoded) is done; what add returned, in order. `check` runs
        while waiting (interrupts)."""
        future.add_done_callback(lambda _: self._wake())
        written: list = []
        while True:
            with self._changed:
                while not future.done() and not (self._safe() and len(written) in self._made):
                    self._changed.wait(WAKE)
                    check()
                ready = []
                if self._safe():
                    while len(written) + len(ready) in self._made:
                        ready.append(self._made.pop(len(written) + len(ready)))
            if not ready:
                return written
            for blob, digest in ready:
                written.append(add(blob, digest))

    def _wake(self) -> None:
        with self._changed:
            self._changed.notify_all()
