"""zstd planes: the packed code rows (or byte-shuffled value bytes), as one zstd frame."""

from __future__ import annotations

import numpy as np
import pyzstd

from ..errors import DecodeError
from .base import Codec, packed_from_bytes, value_size
from .bitpack import pack_rows, row_bytes
from .shuffle import shuffle_bytes, unshuffle_bytes

ZSTD_LEVEL = 3  # higher levels gain <0.1% on codes and fp16 values, at 50-100x the time


def compress(data: bytes, level: int = ZSTD_LEVEL) -> bytes:
    return pyzstd.compress(data, level)


def decompress_exact(data: bytes, size: int) -> bytes:
    """Decompress one frame that must hold exactly `size` bytes; never inflate past that."""
    try:
        declared = pyzstd.get_frame_info(data).decompressed_size
    except pyzstd.ZstdError as exc:
        raise DecodeError(f"zstd frame header is corrupt: {exc}") from None
    if declared is not None and declared != size:
        raise DecodeError(f"zstd frame declares {declared} bytes, expected {size}")
    decompressor = pyzstd.ZstdDecompressor()
    try:
        out = decompressor.decompress(data, size + 1)
    except pyzstd.ZstdError as exc:
        raise DecodeError(f"zstd frame is corrupt: {exc}") from None
    if len(out) != size or not decompressor.eof:
        raise DecodeError(f"zstd frame decompresses to the wrong size (expected {size} bytes)")
    if decompressor.unused_data:
        raise DecodeError("zstd plane has trailing bytes after its frame")
    return out


class ZstdCodec(Codec):
    name = "zstd"
    # No zstd frame inflates more than 32768:1 (a 128 KiB RLE block in 4 bytes).
    max_inflation = 32768

    def encode_codes(self, codes: np.ndarray, depth: int, entries: int) -> bytes:
        return compress(pack_rows(codes, depth).tobytes())

    def decode_packed(self, data: bytes, rows: int, cols: int, depth: int) -> np.ndarray:
        raw = decompress_exact(data, rows * row_bytes(cols, depth))
        return packed_from_bytes(raw, rows, cols, depth)

    def encode_values(self, values: np.ndarray) -> bytes:
        return compress(shuffle_bytes(values))

    def decode_values(self, data: bytes, rows: int, cols: int, dtype: np.dtype) -> np.ndarray:
        raw = decompress_exact(data, value_size(rows, cols, dtype))
        return unshuffle_bytes(raw, rows, cols, dtype)
