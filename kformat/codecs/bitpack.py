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


def pack_rows(codes: np.ndarray, depth: int, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 codes (rows, cols), each below 2**depth -> packed bytes (rows, row_bytes(cols,
    depth)), written to `out` (a uint8 array of that shape, possibly a strided view) if given."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    rows, cols = codes.shape
    if depth == 8 and out is None:
        return codes
    if out is None:
        out = np.empty((rows, row_bytes(cols, depth)), dtype=np.uint8)
    if depth == 8:
        out[...] = codes
        return out
    per_byte = 8 // depth
    padded_cols = row_bytes(cols, depth) * per_byte
    if padded_cols != cols:
        padded = np.zeros((rows, padded_cols), dtype=np.uint8)
        padded[:, :cols] = codes
        codes = padded
    if depth == 1:
        out[...] = np.packbits(codes, axis=1, bitorder="big")
    elif np.little_endian:
        # Read each byte's codes as one little-endian word (code s at bit 8s) and shift every
        # code to its place in one pass per code (4x faster than a strided pass per slot).
        word = codes.view(np.uint16 if per_byte == 2 else np.uint32)
        packed = word << np.uint8(8 - depth)
        for slot in range(1, per_byte):
            packed |= word >> np.uint8(8 * slot - 8 + depth * (slot + 1))
        np.copyto(out, packed, casting="unsafe")  # the low byte: codes below 2**depth never spill
    else:
        grouped = codes.reshape(rows, -1, per_byte)
        out[...] = 0
        for slot in range(per_byte):
            out |= grouped[:, :, slot] << np.uint8(8 - depth * (slot + 1))
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
