"""What a plane codec is: a name, an inflation bound, and encode/decode of one tile's plane.

A *code plane* holds small unsigned codes (k-means indices, linear levels) packed at a plane
depth of 1, 2, 4 or 8 bits; a *value plane* holds the little-endian bytes of fp16 or untouched
tensors. Decoders are told the exact geometry by the manifest and refuse anything else.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..errors import DecodeError
from .bitpack import pack_rows, row_bytes, unpack_rows


class Codec:
    """Base class of plane codecs; subclasses are registered with kformat.codecs.register_codec.

    `max_inflation` bounds the decoded plane's bytes per stored byte: the reader refuses a tile
    that claims more before fetching it, so a kilobyte of blobs cannot promise a gigabyte.
    `exact` codecs store the plane as is: their blob length must equal the plane's bytes.
    """

    name: ClassVar[str]
    max_inflation: ClassVar[int]
    exact: ClassVar[bool] = False
    supports_codes: ClassVar[bool] = True
    supports_values: ClassVar[bool] = True

    def encode_codes(self, codes: np.ndarray, depth: int, entries: int) -> bytes:
        raise DecodeError(f"the {self.name} codec cannot hold a code plane")

    def decode_packed(self, data: bytes, rows: int, cols: int, depth: int) -> np.ndarray:
        """A code plane as packed rows (rows, row_bytes(cols, depth)), geometry checked; codes
        past the codebook are the caller's to check (decode_codes does). A codec implements
        this or decode_codes."""
        if type(self).decode_codes is Codec.decode_codes:
            raise DecodeError(f"the {self.name} codec cannot hold a code plane")
        return pack_rows(self.decode_codes(data, rows, cols, depth, 1 << depth), depth)

    def decode_codes(self, data: bytes, rows: int, cols: int, depth: int, entries: int) -> np.ndarray:
        """A code plane as uint8 codes (rows, cols), each below `entries`."""
        if type(self).decode_packed is Codec.decode_packed:
            raise DecodeError(f"the {self.name} codec cannot hold a code plane")
        return check_codes(unpack_rows(self.decode_packed(data, rows, cols, depth), cols, depth), entries)

    def encode_values(self, values: np.ndarray) -> bytes:
        raise DecodeError(f"the {self.name} codec cannot hold a value plane")

    def decode_values(self, data: bytes, rows: int, cols: int, dtype: np.dtype) -> np.ndarray:
        raise DecodeError(f"the {self.name} codec cannot hold a value plane")


def check_codes(codes: np.ndarray, entries: int) -> np.ndarray:
    """Refuse a plane holding a code past the end of its codebook."""
    if codes.size and int(codes.max()) >= entries:
        raise DecodeError(f"plane holds code {int(codes.max())} >= {entries} codebook entries")
    return codes


def little_endian(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))


def value_size(rows: int, cols: int, dtype: np.dtype) -> int:
    return rows * cols * np.dtype(dtype).itemsize


def packed_from_bytes(raw: bytes, rows: int, cols: int, depth: int) -> np.ndarray:
    stride = row_bytes(cols, depth)
    if len(raw) != rows * stride:
        raise DecodeError(f"plane holds {len(raw)} bytes, expected {rows * stride}")
    return np.frombuffer(raw, dtype=np.uint8).reshape(rows, stride)
