"""raw planes: packed code rows or little-endian values, stored as they are."""

from __future__ import annotations

import numpy as np

from ..errors import DecodeError
from .base import Codec, little_endian, packed_from_bytes, value_size
from .bitpack import pack_rows


class RawCodec(Codec):
    name = "raw"
    max_inflation = 1
    exact = True

    def encode_codes(self, codes: np.ndarray, depth: int, entries: int) -> bytes:
        return pack_rows(codes, depth).tobytes()

    def decode_packed(self, data: bytes, rows: int, cols: int, depth: int) -> np.ndarray:
        return packed_from_bytes(bytes(data), rows, cols, depth)

    def encode_values(self, values: np.ndarray) -> bytes:
        return little_endian(values).tobytes()

    def decode_values(self, data: bytes, rows: int, cols: int, dtype: np.dtype) -> np.ndarray:
        size = value_size(rows, cols, dtype)
        if len(data) != size:
            raise DecodeError(f"raw plane holds {len(data)} bytes, expected {size}")
        return np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(rows, cols)
