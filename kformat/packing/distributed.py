"""Packing on a Dask cluster: every tensor is a task; the manifest is assembled here.

    client ──submit(tensor)──► worker: read the tensor from the source (a path every worker
                                        sees), quantize, encode its tiles, leave the part at
                                        <staging>/<index>.part (any fsspec URL)
    client ◄──part, in order── staging: emit it into the sink exactly as a local pack does

So the output is byte-identical to a local pack (the same encoder, the same order). What
moves: each worker reads its tensors from the source; each part (the tensor's stored bytes,
4-10x less than float32 for quantized rules) is written to staging once and read back once by
the client. A source held in memory (a dict of arrays) is scattered to the workers instead.
Needs the `dask` extra (dask.distributed) here and kformat on every worker.
"""

from __future__ import annotations

import functools
import logging
import os
import uuid
from pathlib import Path

import numpy as np

from ..errors import InputError, KFormatError, StorageError
from ..loading.store import get_object, put_object, remove_objects
from ..recipe import Decision
from ..sources import TensorSource, open_source
from .parts import from_part, to_part
from ..heap import keep_freed_memory
from .encoded import Encoded, encode_blobs

log = logging.getLogger("kformat")

# How long to keep trying to reach the scheduler (KFORMAT_DASK_CONNECT_TIMEOUT, seconds).
CONNECT_TIMEOUT_SECONDS = 20.0


@functools.lru_cache(maxsize=4)
def _worker_source(path: str) -> TensorSource:
    """A worker opens each source once (memory-mapped where the format allows)."""
    return open_source(path)


def encode_part(source, name: str, decision: Decision, tile, importance, part_url: str) -> int:
    """Runs on a worker: one tensor from the source to a part in staging; its size in bytes."""
    keep_freed_memory()  # Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536
    array = source if isinstance(source, np.ndarray) else _worker_source(source).load(name)
    data = to_part(encode_blobs(name, array, decision, tile, importance=importance))
    put_object(part_url, data)
    return len(data)


class _PartFuture:
    """A task's future whose result is the Encoded read back from staging (and removed)."""

    def __init__(self, encoder: "DaskEncoder", future, url: str, name: str):
        self.encoder, self.future, self.url, self.name = encoder, future, url, name

    def done(self) -> bool:
        return self.future.done()

    def result(self) -> Encoded:
        try:
            size = self.future.result()
        except KFormatError:
            raise
        except Exception as exc:  # noqa: BLE001 - a worker died, the cluster went away...
            raise StorageError(
                f"tensor {self.name!r}: the Dask task failed ({type(exc).__name__}: {exc})"
            ) from None
        data = get_object(self.url)
        remove_objects(self.url)
        self.encoder.moved += size
        return from_part(data, self.url)


class DaskEncoder:
    """Submits every tensor to the cluster at once; parts wait in staging, not in memory."""

    window = 1 << 30

    def __init__(self, scheduler: str, source: TensorSource, tile, importance, output: Path, staging=None):
        self.scheduler, self.source, self.tile, self.importance = scheduler, source, tile, importance
        if staging is None:  # next to the output: a shared filesystem when the output is on one
            staging = str(output.parent.resolve() / f".{output.name}.parts-{uuid.uuid4().hex[:8]}")
        self.staging = str(staging).rstrip("/")
        self.moved = 0
        self.count = 0
        self.client = None

    def __enter__(self) -> "DaskEncoder":
        try:
            from distributed import Client
        except ImportError:
            raise InputError("--scheduler needs Dask: pip install 'kformat[dask]'") from None
        try:
            timeout = float(os.environ.get("KFORMAT_DASK_CONNECT_TIMEOUT", CONNECT_TIMEOUT_SECONDS))
            self.client = Client(self.scheduler, timeout=f"{timeout}s", set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise StorageError(f"cannot reach the Dask scheduler at {self.scheduler}: {exc}") from None
        self._importance = (
            None if self.importance is None else self.client.scatter(self.importance, broadcast=True)
        )
        self._path = None if self.source.path is None else str(Path(self.source.path).resolve())
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            remove_objects(self.staging)
            if exc_type is None:
                log.info(
                    "dask: %d tensors, %d bytes of parts through %s", self.count, self.moved, self.staging
                )
        finally:
            self.client.close()

    def no_more(self) -> None:
        """(The cluster's workers are the cluster's: nothing to let go.)"""

    def submit(self, decision: Decision, critical: bool = False, stream=None) -> _PartFuture:
        """(`critical`, the long pole, and `stream`, its blobs as they are made, matter to
        local workers only: a cluster's tensors come back whole.)"""
        if self._path is not None:
            source = self._path
        else:
            source = self.client.scatter(self.source.load(decision.name))  # bytes from here
        url = f"{self.staging}/{self.count:06d}.part"
        self.count += 1
        future = self.client.submit(
            encode_part,
            source,
            decision.name,
            decision,
            self.tile,
            self._importance,
            url,
            key=f"kformat-encode-{uuid.uuid4().hex}",
            pure=False,
        )
        return _PartFuture(self, future, url, decision.name)
