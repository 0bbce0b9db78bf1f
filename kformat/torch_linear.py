"""QuantizedLinear's product: x @ W.T from the compact W, straight from the codes for one
input row (packed_matvec), otherwise a band of rows dequantized at a time.

kformat.torch owns the torch import and passes the module in, so this file never imports
torch itself. Whole-byte lookups (Method.dequantize_packed) gather through torch's
index_select here, not np.take: numpy first copies uint8 indices as 8-byte intp, torch
takes them as int32 and gathers faster. A 41 x 25088 band of VGG16's 4-bit fc1 took 0.20 ms
against 0.33 ms on one thread; see tools/bench/README.md for the layer's times.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from .methods import QuantizedTensor, get_method, kernels
from .methods.base import Take, lookup_in_c, take_rows
from .methods.compact import rows_per_band

_helpers: tuple[ThreadPoolExecutor, int] | None = None  # QuantizedLinear's threads beyond the caller's
_local = threading.local()  # each thread's index buffer (torch_take)
# Indices gathered per index_select: VGG16's FC head at one thread, batch 1, took 35.6 ms with
# runs of 2^19, 38.8 ms with 2^17, 46.7 ms with 2^15 (np.take: 51.3 ms; float32: 16.4 ms)
GATHER_INDICES = 1 << 19
MATVEC_ROWS = 256  # rows a thread takes at least in packed_matvec


def _forget_helpers_after_fork() -> None:
    global _helpers
    _helpers = None  # (threads do not survive fork)


os.register_at_fork(after_in_child=_forget_helpers_after_fork)


def torch_take(torch) -> Take:
    """A `take` (kformat.methods.base.Take): the C loops' lookup of whole bytes where they are
    built (a 41 x 25088 band of 4-bit codes 0.13 ms, against index_select's 0.25), else
    torch.index_select, for tables of 4- or 8-byte entries (one or two float32 values a byte:
    8- and 4-bit codes) gathered as integers, bits untouched; a 2-D table of rows gathers 4x
    slower, so other widths, and arrays torch cannot share, go to np.take. The indices go in
    runs of GATHER_INDICES through one int32 buffer per thread: a band's indices made afresh
    each time (2-4 MB) were kept by the C heap, and a forward pass of VGG16's FC head grew
    the process by 30-40 MiB."""
    as_integers = {4: np.int32, 8: np.int64}

    def take(table: np.ndarray, indices: np.ndarray, out: np.ndarray) -> np.ndarray:
        integer = as_integers.get(table.dtype.itemsize)
        shareable = (
            integer is not None
            and indices.flags.c_contiguous
            and indices.flags.writeable  # (torch warns of a read-only array)
            and table.flags.writeable
            and table.ndim == 1
            and out.flags.c_contiguous
        )
        if not shareable:
            return take_rows(table, indices, out)  # (the C lookup first, there too)
        if lookup_in_c(table, indices, out):
            return out
        entries = torch.from_numpy(table.view(integer))
        source = torch.from_numpy(indices).reshape(-1)
        target = torch.from_numpy(out.view(integer)).reshape(-1)
        buffer = _index_buffer(torch)
        for start in range(0, source.numel(), GATHER_INDICES):
            stop = min(source.numel(), start + GATHER_INDICES)
            index = buffer[: stop - start]
            index.copy_(source[start:stop])
            torch.index_select(entries, 0, index, out=target[start:stop])
        return out

    return take


def _index_buffer(torch):
    """This thread's int32 buffer of GATHER_INDICES indices."""
    buffer = getattr(_local, "index", None)
    if buffer is None or buffer.numel() < GATHER_INDICES:
        buffer = _local.index = torch.empty(GATHER_INDICES, dtype=torch.int32)
    return buffer


def packed_matvec(torch, q: QuantizedTensor, x, threads: int):
    """x @ W.T for one input row (batch 1) straight from 4- or 8-bit k-means codes, where the
    C loops are built and the processor has AVX2 (4-bit codes) or AVX-512 (both): eight or
    sixteen codes looked up at a time and multiplied as they are read, half a byte or a byte
    a weight, no float32 band written and read again. None where that does not apply (the
    caller dequantizes in bands). On one thread, with AVX-512, VGG16's 4-bit fc1 (4096 x
    25088) took 6.5 ms and its 8-bit fc2 (4096 x 4096) 1.8 ms, against float32's 13.2 and 2.5
    (tools/bench/README.md). The sums run in another order than a matmul's: the outputs
    agree to float32 rounding, not to the bit."""
    ready = kernels.c_loops()
    rows, cols = q.view
    codebook = q.tables.get("codebook")
    if (
        ready is None
        or x.shape[0] != 1
        or q.method != "kmeans"
        or not q.packed
        or q.bits not in (4, 8)
        or q.depth != q.bits
        or codebook is None
        or codebook.shape[1:] != (1 << q.bits,)
    ):
        return None
    codes = np.ascontiguousarray(q.codes)
    books = np.ascontiguousarray(codebook, dtype=np.float32)
    vector = np.ascontiguousarray(x.numpy()[0], dtype=np.float32)
    y = np.empty(rows, dtype=np.float32)
    parts = max(1, min(threads, rows // MATVEC_ROWS))
    cuts = [rows * i // parts for i in range(parts + 1)]
    done = [True] * parts

    def part(first: int, stop: int) -> None:
        made = ready.matvec(q.bits, codes, cols, q.group_rows, books, vector, y, first, stop)
        done[cuts.index(first)] = made

    _in_parts(part, cuts)
    if not all(done):  # (no AVX2 here, no AVX-512 for 8-bit codes, or the vectors set lower)
        return None
    scale = q.tables.get("scale")
    if scale is not None:  # scale=row: each row's value times its scale
        y *= scale.astype(np.float32)
    return torch.from_numpy(y)[None]


def banded_matmul(torch, q: QuantizedTensor, x, threads: int):
    """x @ W.T for the compact W, (n, out_features): W's rows cut in `threads` parts, each
    dequantized a band at a time into its own cache-sized buffer (the lookups release the
    GIL) and multiplied by torch under its own thread count. One band loop on one thread,
    with numpy's BLAS threading the products, left torch's second core to the float32 model:
    VGG16's FC head at two torch threads ran 112 ms against float32's 38 ms; cut in two, 63
    ms."""
    direct = packed_matvec(torch, q, x, threads)
    if direct is not None:
        return direct
    rows, cols = q.view
    step = rows_per_band(cols)
    parts = max(1, min(threads, rows // step))
    take = torch_take(torch)
    if parts == 1 or get_method(q.method).lossless:
        # one band loop: QuantizedTensor.matmul, with numpy's products (0.17-0.21 ms for a
        # 41 x 25088 band, torch's 0.26 ms)
        return torch.from_numpy(np.ascontiguousarray(q.matmul(x.numpy().T, take=take).T))
    out = torch.empty((rows, x.shape[0]))  # W @ x.T, rows in order
    xt = x.T

    def part(first: int, stop: int) -> None:
        buffer = np.empty((min(step, stop - first), cols), dtype=np.float32)
        for r0 in range(first, stop, step):
            r1 = min(stop, r0 + step)
            w = q.rows(r0, r1, buffer[: r1 - r0], take)  # (the buffer, filled)
            # torch's products: numpy's BLAS threads would fight these parts
            torch.mm(torch.from_numpy(np.ascontiguousarray(w)), xt, out=out[r0:r1])

    cuts = [rows * i // parts for i in range(parts + 1)]
    _in_parts(part, cuts)
    return out.T.contiguous()


def _in_parts(part: Callable[[int, int], None], cuts: list[int]) -> None:
    """part(cuts[i], cuts[i + 1]) for every i, the first on this thread, the others on helpers."""
    global _helpers
    parts = len(cuts) - 1
    if parts == 1:  # (no helper to start)
        part(cuts[0], cuts[1])
        return
    if _helpers is None or _helpers[1] < parts - 1:
        if _helpers is not None:  # torch's thread count grew: a larger pool replaces it
            _helpers[0].shutdown(wait=False)
        _helpers = (ThreadPoolExecutor(parts - 1, thread_name_prefix="kformat-linear"), parts - 1)
    others = [_helpers[0].submit(part, cuts[i], cuts[i + 1]) for i in range(1, parts)]
    try:
        part(cuts[0], cuts[1])
    finally:
        for other in others:
            other.result()
