"""The zlib streams of PNG planes, through the fastest library that gives the same bytes.

Inflating is most of a PNG plane's decoding time. With the `fast` extra, libdeflate (the
`deflate` package; 1.5x zlib on code planes, whose size the manifest gives in advance) or
else ISA-L's zlib-compatible inflate (python-isal, 1.25x) is used; the bytes are the same.

Deflating is most of a k-means pack's encoding time. zlib-ng (the `zlib-ng` package, also in
the `fast` extra) writes Huffman-only streams about 2x faster than zlib and, for that strategy,
the very bytes zlib writes (same block boundaries, same Huffman trees), so a plane does not
depend on whether the extra is installed. That is checked on a sample before zlib-ng is
trusted; the string-matching levels, whose output differs between the two, stay on zlib.
"""

from __future__ import annotations

import hashlib
import zlib
from functools import cache

import numpy as np

from ..errors import DecodeError

try:
    import deflate as _libdeflate
except ImportError:  # pragma: no cover - without the extra
    _libdeflate = None
try:
    from isal import isal_zlib as INFLATE

    INFLATE_ERRORS: tuple[type[Exception], ...] = (zlib.error, INFLATE.IsalError)
except ImportError:  # pragma: no cover - without the extra
    INFLATE = zlib
    INFLATE_ERRORS = (zlib.error,)
try:
    from zlib_ng import zlib_ng as _zlib_ng
except ImportError:  # pragma: no cover - without the extra
    _zlib_ng = None

WINDOW_BITS = 15
MEM_LEVEL = 9

# PNG chunk CRCs (standard CRC-32, the same numbers): libdeflate's runs at about 22 GB/s here,
# zlib's at 3.3 (2.7% of a VGG16 load's CPU went to it)
crc32 = _libdeflate.crc32 if _libdeflate is not None else INFLATE.crc32


def inflate_exact(stream: bytes, size: int) -> bytes:
    """A zlib stream that must inflate to exactly `size` bytes; never inflates past that."""
    if _libdeflate is not None:
        try:
            raw = _libdeflate.zlib_decompress(stream, size)
        except _libdeflate.DeflateError:
            raw = None  # corrupt, truncated or too long: the streaming inflate below says which
        if raw is not None and len(raw) == size:
            return raw
    inflater = INFLATE.decompressobj()
    try:
        raw = inflater.decompress(stream, size + 1)
    except INFLATE_ERRORS as exc:
        raise DecodeError(f"PNG image data is corrupt: {exc}") from None
    if len(raw) != size or not inflater.eof:
        raise DecodeError(f"PNG image data inflates to the wrong size (expected {size} bytes)")
    return raw


def deflate_parts(data, level: int, strategy: int, library=zlib) -> list[bytes]:
    """A zlib stream of `data` (window 2^15, memLevel 9), as the pieces the deflater gave:
    a caller that joins it with other pieces copies the stream once, not twice."""
    deflater = library.compressobj(level, zlib.DEFLATED, WINDOW_BITS, MEM_LEVEL, strategy)
    return [deflater.compress(data), deflater.flush()]


def deflate(data, level: int, strategy: int, library=zlib) -> bytes:
    """A zlib stream of `data` (window 2^15, memLevel 9)."""
    return b"".join(deflate_parts(data, level, strategy, library))


def _sample() -> bytes:
    """Bytes that span several deflate blocks, with skewed (geometric, p = 0.2) and uniform
    stretches. Drawn from a hash, not numpy.random, whose import was 5 ms of every pack."""
    uniform = np.frombuffer(hashlib.shake_128(b"kformat: zlib-ng check").digest(200_000), np.uint8)
    geometric = np.ceil(np.log1p(-(np.arange(256) + 0.5) / 256) / np.log1p(-0.2))
    skewed = np.minimum(geometric, 255).astype(np.uint8)[uniform[:150_000]]
    return skewed.tobytes() + uniform[150_000:].tobytes() + bytes(5000)


@cache
def huffman_library():
    """zlib-ng when installed and it writes zlib's Huffman-only bytes, else zlib."""
    if _zlib_ng is None:
        return zlib
    sample = _sample()
    huffman = zlib.Z_HUFFMAN_ONLY
    same = all(
        deflate(part, 9, huffman, _zlib_ng) == deflate(part, 9, huffman) for part in (sample, sample[:1000])
    )
    return _zlib_ng if same else zlib


def huffman_only(data, level: int) -> list[bytes]:
    """A Huffman-only zlib stream of `data`, in pieces: the same bytes through zlib-ng or zlib."""
    return deflate_parts(data, level, zlib.Z_HUFFMAN_ONLY, huffman_library())
