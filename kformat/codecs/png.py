"""Index planes as real palette PNG images (bit depth 1, 2, 4 or 8).

The encoder is written here rather than borrowed from Pillow so that the bytes are fully
determined by the codes (same input, same file) and the filter choice is ours: filter 0 on
every row (neighbouring codes are not correlated the way pixels are, so prediction only adds
entropy) and Huffman-only deflate, or string matching when a tile's rows repeat. The palette
is a grey ramp in code order, and k-means codebooks are sorted, so a plane opened in an image
viewer looks like the weights.

The decoder accepts what any PNG writer may produce for such an image (all five filter
types, split IDAT chunks, ancillary chunks) but checks dimensions and the decompressed size
against what the manifest promises before and while inflating, so a forged plane cannot
exhaust memory. Filters 1 and 2 are undone with numpy; Average and Paeth, whose left-to-right
dependence numpy cannot vectorise, by Pillow's C decoder once those checks have passed.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np

from ..errors import DecodeError
from .base import Codec
from .bitpack import pack_rows, row_bytes, unpack_rows
from .zlibs import crc32, deflate, huffman_only, inflate_exact

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOR_TYPE_PALETTE = 3
ZLIB_LEVEL = 9
# Codes are close to independent symbols: string matching finds nothing worth its cost, and
# Huffman-only deflate lands within about 1% of the order-0 entropy, 3-4x faster than the
# default strategy (measured in tools/bench/size_quality.py).
# Some trained matrices repeat whole rows of codes (py3langid's n-gram table: an unseen feature
# has the same per-language floor in every row), where string matching wins 2-3x. A quick probe
# on the start of each tile decides whether matching is worth its cost there.
PROBE_BYTES = 1 << 14  # 16 KiB: on py3langid as good a judge as 64 KiB, at a quarter of the cost
PROBE_GAIN = 0.9  # try matching when a fast probe comes out 10% smaller than Huffman-only
MATCHING_LEVEL = 6


def _chunk(kind: bytes, *parts: bytes) -> list[bytes]:
    """A PNG chunk as pieces for one final join (each copy of a tile's bytes held the GIL)."""
    crc = crc32(kind)
    for part in parts:
        crc = crc32(part, crc)
    length = sum(map(len, parts))
    return [struct.pack(">I", length) + kind, *parts, struct.pack(">I", crc & 0xFFFFFFFF)]


@functools.cache
def grey_palette(entries: int) -> bytes:
    """RGB triples of a grey ramp with `entries` steps, black to white."""
    if entries == 1:
        return b"\x80\x80\x80"
    levels = np.round(np.linspace(0, 255, entries)).astype(np.uint8)
    return np.repeat(levels, 3).tobytes()


def encode_png(codes: np.ndarray, depth: int, palette_entries: int) -> bytes:
    """Encode uint8 codes (rows, cols), all < palette_entries, as a palette PNG."""
    rows, cols = codes.shape
    filtered = np.empty((rows, row_bytes(cols, depth) + 1), dtype=np.uint8)
    filtered[:, 0] = 0  # each row's filter byte: None
    pack_rows(codes, depth, out=filtered[:, 1:])
    ihdr = struct.pack(">IIBBBBB", cols, rows, depth, COLOR_TYPE_PALETTE, 0, 0, 0)
    idat = _deflate(memoryview(filtered).cast("B"))
    return b"".join(
        (
            SIGNATURE,
            *_chunk(b"IHDR", ihdr),
            *_chunk(b"PLTE", grey_palette(palette_entries)),
            *_chunk(b"IDAT", *idat),
            *_chunk(b"IEND"),
        )
    )


def _deflate(data) -> list[bytes]:
    """Huffman-only deflate, or string matching where a probe shows the rows repeat (smaller
    wins), as the pieces of one zlib stream.

    Deterministic: the choice depends on the bytes alone."""
    huffman = huffman_only(data, ZLIB_LEVEL)
    probe = data[:PROBE_BYTES]
    probe_huffman = sum(map(len, huffman if len(data) <= PROBE_BYTES else huffman_only(probe, ZLIB_LEVEL)))
    if len(deflate(probe, 1, zlib.Z_DEFAULT_STRATEGY)) < PROBE_GAIN * probe_huffman:
        matched = deflate(data, MATCHING_LEVEL, zlib.Z_DEFAULT_STRATEGY)
        if len(matched) < sum(map(len, huffman)):
            return [matched]
    return huffman


def _read_chunks(data: bytes):
    """(kind, body) of each chunk up to IEND, CRCs checked; bodies are views of `data`, not
    copies (a tile's IDAT was copied twice, 0.05 s of VGG16's 0.33 s load on two cores)."""
    if data[:8] != SIGNATURE:
        raise DecodeError("not a PNG image (bad signature)")
    view = memoryview(data)
    pos = 8
    while pos < len(data):
        if pos + 12 > len(data):
            raise DecodeError(f"PNG truncated inside the chunk header at byte {pos}")
        (length,) = struct.unpack_from(">I", data, pos)
        kind = bytes(data[pos + 4 : pos + 8])
        end = pos + 8 + length
        if length > 0x7FFFFFFF or end + 4 > len(data):
            raise DecodeError(f"PNG chunk {kind!r} at byte {pos} runs past the end of the image")
        body = view[pos + 8 : end]
        (crc,) = struct.unpack_from(">I", data, end)
        if crc32(body, crc32(kind)) & 0xFFFFFFFF != crc:
            raise DecodeError(f"PNG chunk {kind!r} at byte {pos} has a bad CRC")
        yield kind, body
        pos = end + 4
        if kind == b"IEND":
            return
    raise DecodeError("PNG has no IEND chunk")


def _unfilter(raw: np.ndarray, rows: int, stride: int) -> np.ndarray | None:
    """Undo filters 0, 1 and 2 with numpy (bytes per pixel is 1 for palette images of depth
    <= 8); None when a row uses Average or Paeth, whose left-to-right dependence numpy cannot
    vectorise (the caller then hands the checked image to a C decoder). Rows that all use
    filter 0 (what kformat writes) come back as a view of `raw`, without a copy."""
    lines = raw.reshape(rows, stride + 1)
    kinds = lines[:, 0]
    if not kinds.any():
        return lines[:, 1:]
    out = lines[:, 1:].copy()
    if kinds.max() > 4:
        raise DecodeError(f"PNG row uses unknown filter type {int(kinds.max())}")
    if (kinds >= 3).any():
        return None
    subs = kinds == 1
    out[subs] = np.cumsum(out[subs], axis=1, dtype=np.uint8)
    for r in np.flatnonzero(kinds == 2):
        if r:
            out[r] += out[r - 1]
    return out


def _decode_with_pillow(data: bytes, rows: int, cols: int) -> np.ndarray:
    """Codes of a palette PNG whose header, chunk CRCs and inflated size were already checked
    against the manifest, so Pillow decodes at most the promised rows x cols. (Imported here:
    kformat writes no such rows, and Pillow costs a load 2.2 MiB of memory.)"""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            image.load()
            codes = np.asarray(image, dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds on bad images
        raise DecodeError(f"PNG image data is corrupt: {exc}") from None
    if codes.shape != (rows, cols):
        raise DecodeError(f"PNG decodes to {codes.shape}, expected {(rows, cols)}")
    return codes


def decode_png(data: bytes, rows: int, cols: int, depth: int, palette_entries: int) -> np.ndarray:
    """Decode a palette PNG into uint8 codes, checking it is the promised plane."""
    codes = unpack_rows(decode_png_packed(data, rows, cols, depth, palette_entries), cols, depth)
    if palette_entries < (1 << depth) and codes.size and codes.max() >= palette_entries:
        raise DecodeError(f"PNG plane holds code {int(codes.max())} >= {palette_entries} entries")
    return codes


def decode_png_packed(data: bytes, rows: int, cols: int, depth: int, palette_entries: int) -> np.ndarray:
    """A palette PNG's rows, packed at `depth` bits (rows, row_bytes), once its header, palette,
    chunk CRCs and inflated size are what the manifest promises."""
    header = None
    idat = []
    palette_len = None
    for kind, body in _read_chunks(bytes(data)):
        if kind == b"IHDR":
            if len(body) != 13:
                raise DecodeError("PNG IHDR chunk has the wrong length")
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette_len = len(body) // 3
        elif kind == b"IDAT":
            idat.append(body)
    if header is None:
        raise DecodeError("PNG has no IHDR chunk")
    width, height, bit_depth, color_type, _comp, _filt, interlace = header
    expected = (cols, rows, depth, COLOR_TYPE_PALETTE, 0)
    got = (width, height, bit_depth, color_type, interlace)
    if got != expected:
        raise DecodeError(
            "PNG plane is not the promised one: expected (width, height, depth, colour type,"
            f" interlace) {expected}, got {got}"
        )
    if palette_len is None or palette_len < palette_entries:
        raise DecodeError(f"PNG palette has {palette_len} entries, expected {palette_entries}")
    stride = row_bytes(cols, depth)
    size = rows * (stride + 1)
    raw = inflate_exact(idat[0] if len(idat) == 1 else b"".join(idat), size)
    packed = _unfilter(np.frombuffer(raw, dtype=np.uint8), rows, stride)
    if packed is None:
        packed = pack_rows(_decode_with_pillow(data, rows, cols), depth)
    return packed


class PngCodec(Codec):
    """Code planes as palette PNG images; values cannot be stored as PNG."""

    name = "png"
    # No deflate stream inflates more than 1032:1.
    max_inflation = 1032
    supports_values = False

    def encode_codes(self, codes: np.ndarray, depth: int, entries: int) -> bytes:
        return encode_png(codes, depth, entries)

    def decode_packed(self, data: bytes, rows: int, cols: int, depth: int) -> np.ndarray:
        return decode_png_packed(data, rows, cols, depth, 1 << depth)

    def decode_codes(self, data: bytes, rows: int, cols: int, depth: int, entries: int) -> np.ndarray:
        return decode_png(data, rows, cols, depth, entries)
