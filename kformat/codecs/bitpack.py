"""Pack small unsigned codes into bytes, most significant bits first (PNG's row order).

A plane of codes of depth d (1, 2, 4 or 8 bits) is stored row by row; every row starts on a
byte boundary, so a row of `cols` codes takes ceil(cols * d / 8) bytes. Both plane codecs
(PNG and zstd) work on exactly these bytes, so they decode to the same codes.
"""

from __future__ import annotations

import numpy as np

PLANE_DEPTHS = (1, 2, 4, 8)


def plane_depth(bits: int) -> int:
    """The PNG bit depth that holds codes of `bits` bits (3 -> 4, 5..7 -> 8)."""
    for depth in PLANE_DEPTHS:
        if bits <= depth:
            return depth
    raise ValueError(f"codes of {bits} bits do not fit an index plane (at most 8)")


def row_bytes(cols: int, depth: int) -> int:
    return (cols * depth + 7) // 8


def pack_rows(codes: np.ndarray, depth: int) -> np.ndarray:
    """uint8 codes (rows, cols) -> packed bytes (rows, row_bytes(cols, depth))."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if depth == 8:
        return codes
    rows, cols = codes.shape
    per_byte = 8 // depth
    padded_cols = row_bytes(cols, depth) * per_byte
    if padded_cols != cols:
        padded = np.zeros((rows, padded_cols), dtype=np.uint8)
        padded[:, :cols] = codes
        codes = padded
    if depth == 1:
        return np.packbits(codes, axis=1, bitorder="big")
    grouped = codes.reshape(rows, -1, per_byte)
    out = np.zeros(grouped.shape[:2], dtype=np.uint8)
    for slot in range(per_byte):
        shift = 8 - depth * (slot + 1)
        out |= grouped[:, :, slot] << np.uint8(shift)
    return out


def unpack_rows(packed: np.ndarray, cols: int, depth: int) -> np.ndarray:
    """Inverse of pack_rows: packed (rows, row_bytes) -> uint8 codes (rows, cols)."""
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    if depth == 8:
        return packed[:, :cols]
    if depth == 1:
        return np.unpackbits(packed, axis=1, count=cols, bitorder="big")
    per_byte = 8 // depth
    mask = np.uint8((1 << depth) - 1)
    rows, nbytes = packed.shape
    out = np.empty((rows, nbytes, per_byte), dtype=np.uint8)
    for slot in range(per_byte):
        shift = 8 - depth * (slot + 1)
        np.bitwise_and(packed >> np.uint8(shift), mask, out=out[:, :, slot])
    return out.reshape(rows, nbytes * per_byte)[:, :cols]
