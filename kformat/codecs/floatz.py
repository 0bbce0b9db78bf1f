"""floatz: lossless floats, their exponents entropy-coded (the ZipNN / DFloat11 idea).

Trained weights use few exponent values (about 3 bits of entropy out of 8) while sign and
mantissa bits are close to random. bfloat16 and float32 straddle their 8-bit exponent across
two bytes, so a plain byte shuffle mixes it with mantissa bits; floatz moves it out first:

* bfloat16 / float32: the exponent byte of every element, then the sign and mantissa bits
  (sign as the top bit, ``(sign << m) | mantissa`` with m = 7 or 23) as 1 or 3 byte planes,
  most significant first;
* every other dtype (float16, whose exponent already sits in its high byte, float8, float64,
  integers, bool): the element bytes shuffled, most significant first.

Each byte plane is compressed as its own zstd frame and the frames are concatenated: zstd
codes literals with a Huffman table per block, so a plane of its own costs about its entropy
(a shared block would mix exponent and mantissa statistics), and incompressible mantissa
planes are stored as raw blocks. Value planes only.
"""

from __future__ import annotations

import numpy as np
import pyzstd

from ..errors import DecodeError
from .base import Codec, little_endian
from .zstd import decompress_exact

# dtype name -> (unsigned view, mantissa bits, bytes of sign + mantissa)
_SPLIT = {"bfloat16": (np.uint16, 7, 1), "float32": (np.uint32, 23, 3)}
# Level 1 with matches of 7+ bytes only: the planes gain almost nothing from LZ matching, and
# short matches in the exponent plane cost both size and decoding speed (measured in
# tools/bench/lossless.py); any zstd decoder reads the frames.
PARAMS = {
    pyzstd.CParameter.compressionLevel: 1,
    pyzstd.CParameter.minMatch: 7,
    pyzstd.CParameter.strategy: pyzstd.Strategy.fast,
}


def split_planes(values: np.ndarray) -> list[bytes]:
    values = little_endian(values)
    split = _SPLIT.get(values.dtype.name)
    if split is None:
        size = values.dtype.itemsize
        return list(values.reshape(-1).view(np.uint8).reshape(-1, size)[:, ::-1].T.copy())
    unsigned, mantissa_bits, rest = split
    bits = values.reshape(-1).view(unsigned)
    exponent = ((bits >> mantissa_bits) & 0xFF).astype(np.uint8)
    sign = (bits >> (8 + mantissa_bits)).astype(unsigned)
    low = (sign << mantissa_bits) | (bits & ((1 << mantissa_bits) - 1))
    planes = [exponent] + [((low >> (8 * i)) & 0xFF).astype(np.uint8) for i in reversed(range(rest))]
    return [p.tobytes() for p in planes]


def merge_planes(planes: list[bytes], count: int, dtype: np.dtype) -> np.ndarray:
    dtype = np.dtype(dtype).newbyteorder("<")
    planes = [np.frombuffer(p, dtype=np.uint8) for p in planes]
    split = _SPLIT.get(dtype.name)
    if split is None:
        if len(planes) == 1:
            return planes[0].view(dtype)
        out = np.empty((count, len(planes)), dtype=np.uint8)
        for i, plane in enumerate(reversed(planes)):
            out[:, i] = plane
        return out.view(dtype).reshape(-1)
    unsigned, mantissa_bits, rest = split
    exponent, top = planes[0], planes[1]  # top: the sign and the highest mantissa bits
    if rest == 1:  # bfloat16: whole-array 16-bit operations, no byte interleaving
        out = exponent.astype(unsigned)
        out <<= mantissa_bits
        sign = top.astype(unsigned)
        out |= sign & 0x7F
        sign &= 0x80
        sign <<= 8
        out |= sign
        return out.view(dtype)
    out = np.empty((count, 4), dtype=np.uint8)  # float32: bytes b0..b3 of each element
    out[:, 0], out[:, 1] = planes[3], planes[2]
    out[:, 2] = (exponent << 7) | (top & 0x7F)
    out[:, 3] = (top & 0x80) | (exponent >> 1)
    return out.view(dtype).reshape(-1)


class FloatzCodec(Codec):
    name = "floatz"
    max_inflation = 32768  # that of its zstd frame
    supports_codes = False

    def encode_values(self, values: np.ndarray) -> bytes:
        return b"".join(pyzstd.compress(plane, PARAMS) for plane in split_planes(values))

    def decode_values(self, data: bytes, rows: int, cols: int, dtype: np.dtype) -> np.ndarray:
        count = rows * cols
        planes = []
        view = memoryview(data)
        for i in range(np.dtype(dtype).itemsize):  # one frame per byte plane, `count` bytes each
            try:
                size = pyzstd.get_frame_size(view)
            except pyzstd.ZstdError:
                raise DecodeError(f"floatz byte plane {i}: not a complete zstd frame") from None
            planes.append(decompress_exact(view[:size], count))
            view = view[size:]
        if len(view):
            raise DecodeError(f"floatz plane has {len(view)} bytes after its last frame")
        return merge_planes(planes, count, dtype).reshape(rows, cols)
