"""Plane codecs by name: how a tile's codes or values become a blob and back.

Every tile is a 2-D rectangle. A *code plane* holds small unsigned codes (k-means indices or
linear levels) packed at a plane depth of 1, 2, 4 or 8 bits; a *value plane* holds the raw
little-endian bytes of fp16 or untouched tensors. `png` encodes code planes only; `zstd` and
`raw` encode both. Decoders are told the exact geometry by the manifest and refuse anything
else. zstd byte-shuffles value planes before compressing (all first bytes of the elements,
then all second bytes, ...): the sign/exponent bytes of floats then compress well, while
the noisy low mantissa bytes no longer get in their way.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..errors import DecodeError, KFormatError
from . import png, zstd
from .bitpack import pack_rows, plane_depth, row_bytes, unpack_rows

__all__ = ["CODECS", "get_codec", "plane_depth", "PlaneCodec"]


class PlaneCodec(Protocol):
    name: str
    supports_values: bool

    def encode_codes(self, codes: np.ndarray, depth: int, entries: int) -> bytes: ...

    def decode_codes(
        self, data: bytes, rows: int, cols: int, depth: int, entries: int
    ) -> np.ndarray: ...

    def encode_values(self, values: np.ndarray) -> bytes: ...

    def decode_values(self, data: bytes, rows: int, cols: int, dtype: np.dtype) -> np.ndarray: ...


def _check_codes(codes: np.ndarray, entries: int) -> np.ndarray:
    if codes.size and int(codes.max()) >= entries:
        raise DecodeError(f"plane holds code {int(codes.max())} >= {entries} codebook entries")
    return codes


def _le(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))


def shuffle_bytes(values: np.ndarray) -> bytes:
    """Element bytes grouped by position: b0 of every element, then b1, ..."""
    values = _le(values)
    size = values.dtype.itemsize
    if size == 1:
        return values.tobytes()
    return values.reshape(-1).view(np.uint8).reshape(-1, size).T.tobytes()


def unshuffle_bytes(raw: bytes, rows: int, cols: int, dtype: np.dtype) -> np.ndarray:
    dtype = np.dtype(dtype).newbyteorder("<")
    size = dtype.itemsize
    planes = np.frombuffer(raw, dtype=np.uint8)
    if size > 1:
        planes = np.ascontiguousarray(planes.reshape(size, -1).T)
    return planes.view(dtype).reshape(rows, cols)


def _value_size(rows: int, cols: int, dtype: np.dtype) -> int:
    return rows * cols * np.dtype(dtype).itemsize


def _packed_from_bytes(raw: bytes, rows: int, cols: int, depth: int) -> np.ndarray:
    stride = row_bytes(cols, depth)
    if len(raw) != rows * stride:
        raise DecodeError(f"plane holds {len(raw)} bytes, expected {rows * stride}")
    return np.frombuffer(raw, dtype=np.uint8).reshape(rows, stride)


class PngCodec:
    name = "png"
    supports_values = False

    def encode_codes(self, codes: np.ndarray, depth: int, entries: int) -> bytes:
        return png.encode_png(codes, depth, entries)

    def decode_codes(self, data: bytes, rows: int, cols: int, depth: int, entries: int):
        return png.decode_png(data, rows, cols, depth, entries)

    def encode_values(self, values: np.ndarray) -> bytes:
        raise KFormatError("the png codec stores code planes only (use zstd or raw for values)")

    def decode_values(self, data: bytes, rows: int, cols: int, dtype: np.dtype) -> np.ndarray:
        raise DecodeError("the png codec cannot hold a value plane")


class ZstdCodec:
    name = "zstd"
    supports_values = True

    def encode_codes(self, codes: np.ndarray, depth: int, entries: int) -> bytes:
        return zstd.compress(pack_rows(codes, depth).tobytes())

    def decode_codes(self, data: bytes, rows: int, cols: int, depth: int, entries: int):
        raw = zstd.decompress_exact(data, rows * row_bytes(cols, depth))
        return _check_codes(unpack_rows(_packed_from_bytes(raw, rows, cols, depth), cols, depth), entries)

    def encode_values(self, values: np.ndarray) -> bytes:
        return zstd.compress(shuffle_bytes(values))

    def decode_values(self, data: bytes, rows: int, cols: int, dtype: np.dtype) -> np.ndarray:
        raw = zstd.decompress_exact(data, _value_size(rows, cols, dtype))
        return unshuffle_bytes(raw, rows, cols, dtype)


class RawCodec:
    name = "raw"
    supports_values = True

    def encode_codes(self, codes: np.ndarray, depth: int, entries: int) -> bytes:
        return pack_rows(codes, depth).tobytes()

    def decode_codes(self, data: bytes, rows: int, cols: int, depth: int, entries: int):
        packed = _packed_from_bytes(bytes(data), rows, cols, depth)
        return _check_codes(unpack_rows(packed, cols, depth), entries)

    def encode_values(self, values: np.ndarray) -> bytes:
        return _le(values).tobytes()

    def decode_values(self, data: bytes, rows: int, cols: int, dtype: np.dtype) -> np.ndarray:
        size = _value_size(rows, cols, dtype)
        if len(data) != size:
            raise DecodeError(f"raw plane holds {len(data)} bytes, expected {size}")
        return np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(rows, cols)


CODECS: dict[str, PlaneCodec] = {c.name: c for c in (PngCodec(), ZstdCodec(), RawCodec())}


def get_codec(name: str) -> PlaneCodec:
    try:
        return CODECS[name]
    except KeyError:
        raise DecodeError(f"unknown plane codec {name!r} (known: {', '.join(CODECS)})") from None
