"""Error and rate measures shared by pack, inspect, compare and the benchmarks."""

from __future__ import annotations

import math

import numpy as np

CHUNK_ROWS_ELEMENTS = 1 << 22


def entropy_bits(counts: np.ndarray) -> float:
    """Order-0 entropy (bits per symbol) of a code histogram."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts[counts > 0] / total
    return max(0.0, float(-(p * np.log2(p)).sum()))


def sqnr_db(signal_power: float, noise_power: float) -> float:
    """10 log10(sum x^2 / sum (x - x_hat)^2); inf when exact."""
    if noise_power <= 0:
        return math.inf
    if signal_power <= 0:
        return -math.inf
    return 10.0 * math.log10(signal_power / noise_power)


def squares(x: np.ndarray) -> float:
    """sum x^2 without BLAS: BLAS splits a dot product by its thread count, so its last bits
    (and the SQNR stats written to the manifest) would differ from machine to machine."""
    return float(np.einsum("i,i->", x, x))


def error_powers(original: np.ndarray, restored: np.ndarray) -> tuple[float, float]:
    """(sum x^2, sum (x - x_hat)^2) in float64, streamed to bound temporaries."""
    a = original.reshape(-1)
    b = restored.reshape(-1)
    signal = noise = 0.0
    for start in range(0, a.size, CHUNK_ROWS_ELEMENTS):
        x = a[start : start + CHUNK_ROWS_ELEMENTS].astype(np.float64)
        d = x - b[start : start + CHUNK_ROWS_ELEMENTS]
        signal += squares(x)
        noise += squares(d)
    return signal, noise


# Size estimates for bit allocation on tensors too large to encode under every candidate.
PNG_OVERHEAD = 1.02  # measured: PNG planes come within ~1% of the order-0 code entropy
TILE_OVERHEAD = 120  # bytes of PNG chunks, zlib and Huffman tables per tile, besides the palette


def entropy_bytes(counts: np.ndarray) -> float:
    """Order-0 entropy of a code histogram, in bytes for all its symbols."""
    counts = np.asarray(counts, dtype=np.float64)
    return entropy_bits(counts) * float(counts.sum()) / 8


def tile_count(view: tuple[int, int], tile: tuple[int, int]) -> int:
    return math.ceil(view[0] / tile[0]) * math.ceil(view[1] / tile[1])


# A manifest entry (msgpack): its name, shape, rule, stats and about this much more, plus a
# record (offset, length, SHA-256) per tile blob. Measured on a small CNN's 56 entries and
# VGG16's: 350-400 bytes for one tile; at 300 bytes in all the first round of a 120k-parameter
# model came out 5% over its target.
ENTRY_BYTES = 240
BLOB_RECORD_BYTES = 130


def manifest_entry_bytes(name: str, view: tuple[int, int], tile: tuple[int, int]) -> int:
    """About what a tensor's manifest entry takes: bit allocation counts it against the
    target, and the single-file writer reserves room for it ahead of the blobs."""
    return ENTRY_BYTES + len(name.encode()) + BLOB_RECORD_BYTES * tile_count(view, tile)
