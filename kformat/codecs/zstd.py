"""zstd planes: the packed code rows (or value bytes), compressed as one zstd frame."""

from __future__ import annotations

import pyzstd

from ..errors import DecodeError

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
