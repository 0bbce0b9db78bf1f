import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from kformat.codecs import get_codec, plane_depth, shuffle_bytes, unshuffle_bytes
from kformat.codecs.bitpack import pack_rows, unpack_rows
from kformat.codecs.png import decode_png, encode_png
from kformat.errors import DecodeError, VersionError


@given(
    bits=st.integers(1, 8),
    rows=st.integers(1, 9),
    cols=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=150, deadline=None)
def test_bitpack_round_trip(bits, rows, cols, seed):
    depth = plane_depth(bits)
    codes = np.random.default_rng(seed).integers(0, 1 << bits, (rows, cols), dtype=np.uint8)
    packed = pack_rows(codes, depth)
    assert packed.shape == (rows, (cols * depth + 7) // 8)
    assert np.array_equal(unpack_rows(packed, cols, depth), codes)
    framed = np.full((rows, packed.shape[1] + 1), 7, dtype=np.uint8)  # as PNG rows: a filter byte first
    pack_rows(codes, depth, out=framed[:, 1:])
    assert np.array_equal(framed[:, 1:], packed) and np.all(framed[:, 0] == 7)


def test_pack_is_msb_first_like_png():
    codes = np.array([[1, 2, 3, 0]], dtype=np.uint8)
    assert pack_rows(codes, 2).tolist() == [[0b01101100]]
    assert pack_rows(np.array([[0xA, 0x5, 0xF]], np.uint8), 4).tolist() == [[0xA5, 0xF0]]


@pytest.mark.parametrize("bits", range(1, 9))
def test_png_plane_round_trips_and_opens_in_pillow(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, (23, 37), dtype=np.uint8)
    depth = plane_depth(bits)
    data = encode_png(codes, depth, 1 << bits)
    assert np.array_equal(decode_png(data, 23, 37, depth, 1 << bits), codes)
    image = Image.open(io.BytesIO(data))
    assert image.mode == "P" and image.size == (37, 23)
    assert np.array_equal(np.asarray(image), codes)
    assert len(image.getpalette()) // 3 >= 1 << bits


def _filtered_png(codes: np.ndarray, kinds: list[int], depth: int = 8) -> bytes:
    """A PNG whose rows use the given filter types (as other writers may produce)."""
    rows, width = codes.shape
    packed = pack_rows(codes, depth)
    prev = np.zeros(packed.shape[1], dtype=np.int32)
    out = bytearray()
    for r in range(rows):
        line = packed[r].astype(np.int32)
        left = np.concatenate(([0], line[:-1]))
        upleft = np.concatenate(([0], prev[:-1]))
        kind = kinds[r % len(kinds)]
        if kind == 0:
            pred = np.zeros_like(line)
        elif kind == 1:
            pred = left
        elif kind == 2:
            pred = prev
        elif kind == 3:
            pred = (left + prev) // 2
        else:
            p = left + prev - upleft
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        out.append(kind)
        out += ((line - pred) % 256).astype(np.uint8).tobytes()
        prev = line

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, rows, depth, 3, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"PLTE", bytes(768))
        + chunk(b"tEXt", b"Comment\0hi")
        + chunk(b"IDAT", zlib.compress(bytes(out)))
        + chunk(b"IEND", b"")
    )


def _idat(png: bytes) -> bytes:
    pos, body = 8, b""
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos : pos + 8])
        if kind == b"IDAT":
            body += png[pos + 8 : pos + 8 + length]
        pos += 12 + length
    return body


def _huffman_only(codes: np.ndarray, depth: int) -> bytes:
    packed = pack_rows(codes, depth)
    filtered = np.concatenate([np.zeros((len(packed), 1), np.uint8), packed], axis=1)
    deflater = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    return deflater.compress(filtered.tobytes()) + deflater.flush()


def test_png_uses_string_matching_only_where_rows_repeat():
    """Repeating rows (like a trained n-gram table) get ordinary deflate, much smaller than
    Huffman-only; independent codes keep the Huffman-only stream, byte for byte."""
    rng = np.random.default_rng(5)
    pattern = rng.integers(0, 256, size=(1, 142), dtype=np.uint8)
    repeating = np.repeat(pattern, 512, axis=0)
    repeating[rng.random(repeating.shape) < 0.05] = 7
    independent = rng.integers(0, 256, size=(512, 142), dtype=np.uint8)
    for codes, matched in ((repeating, True), (independent, False)):
        png = encode_png(codes, 8, 256)
        assert np.array_equal(decode_png(png, *codes.shape, 8, 256), codes)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), codes)
        huffman = _huffman_only(codes, 8)
        if matched:
            assert len(_idat(png)) < 0.5 * len(huffman)
        else:
            assert _idat(png) == huffman


@pytest.mark.parametrize("depth", [1, 2, 4, 8])
@pytest.mark.parametrize("kinds", [[0], [1], [2], [3], [4], [1, 2], [0, 1, 2, 3, 4], [4, 2, 2, 1, 3]])
def test_png_decoder_undoes_every_filter_type(depth, kinds):
    codes = np.random.default_rng(5).integers(0, 1 << depth, (10, 37), dtype=np.uint8)
    data = _filtered_png(codes, kinds, depth)
    assert np.array_equal(decode_png(data, 10, 37, depth, 1 << depth), codes)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), codes)


def test_png_decoder_checks_codes_from_the_c_decoder_too():
    codes = np.full((6, 9), 7, dtype=np.uint8)
    with pytest.raises(DecodeError, match="code 7 >= 5"):
        decode_png(_filtered_png(codes, [4]), 6, 9, 8, 5)


def test_png_refuses_wrong_geometry_and_bombs():
    codes = np.zeros((4, 4), dtype=np.uint8)
    data = encode_png(codes, 8, 256)
    with pytest.raises(DecodeError, match="not the promised"):
        decode_png(data, 5, 4, 8, 256)
    # A plane that inflates to far more than promised is cut off at the promised size.
    bomb = _filtered_png(np.zeros((2000, 2000), np.uint8), [0])
    with pytest.raises(DecodeError):
        decode_png(bomb, 4, 4, 8, 256)


def test_png_refuses_bad_crc_and_truncation():
    data = bytearray(encode_png(np.ones((3, 3), np.uint8), 1, 2))
    data[40] ^= 0xFF
    with pytest.raises(DecodeError):
        decode_png(bytes(data), 3, 3, 1, 2)
    good = encode_png(np.ones((3, 3), np.uint8), 1, 2)
    for cut in (0, 7, 20, len(good) - 1):
        with pytest.raises(DecodeError):
            decode_png(good[:cut], 3, 3, 1, 2)


@pytest.mark.parametrize("name", ["png", "zstd", "raw"])
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8])
def test_code_codecs_round_trip(name, bits):
    codec = get_codec(name)
    codes = np.random.default_rng(bits).integers(0, 1 << bits, (7, 33), dtype=np.uint8)
    depth = plane_depth(bits)
    blob = codec.encode_codes(codes, depth, 1 << bits)
    assert np.array_equal(codec.decode_codes(blob, 7, 33, depth, 1 << bits), codes)


@pytest.mark.parametrize("name", ["zstd", "raw"])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int8", "int64", "uint16", "bool"])
def test_value_codecs_round_trip_bit_exact(name, dtype):
    values = (np.random.default_rng(0).standard_normal((5, 9)) * 100).astype(dtype)
    codec = get_codec(name)
    back = codec.decode_values(codec.encode_values(values), 5, 9, np.dtype(dtype))
    assert back.dtype == values.dtype and back.tobytes() == values.tobytes()


def test_shuffle_groups_bytes_by_position():
    values = np.array([0x0102, 0x0304], dtype="<u2")
    assert shuffle_bytes(values) == bytes([0x02, 0x04, 0x01, 0x03])
    assert unshuffle_bytes(shuffle_bytes(values), 1, 2, np.dtype("<u2")).tolist() == [[0x0102, 0x0304]]


def test_zstd_refuses_wrong_size():
    codec = get_codec("zstd")
    blob = codec.encode_values(np.zeros((4, 4), np.float32))
    with pytest.raises(DecodeError):
        codec.decode_values(blob, 4, 5, np.dtype(np.float32))
    with pytest.raises(DecodeError):
        codec.decode_values(b"garbage!", 4, 4, np.dtype(np.float32))


def test_unknown_codec_is_a_clear_error():
    with pytest.raises(VersionError, match="unknown plane codec .jpeg."):
        get_codec("jpeg")


@pytest.mark.parametrize("backend", ["libdeflate", "isal", "zlib"])
def test_png_planes_decode_the_same_with_every_inflate(monkeypatch, backend):
    import zlib as plain_zlib

    from kformat.codecs import png, zlibs

    rng = np.random.default_rng(3)
    shapes = [(64, 300, 4, 16), (9, 33, 8, 256)]
    planes = [
        encode_png(rng.integers(0, 16, (64, 300), dtype=np.uint8), 4, 16),
        _filtered_png(rng.integers(0, 256, (9, 33), dtype=np.uint8), [0, 1, 2, 3, 4]),
    ]
    reference = [png.decode_png_packed(p, *shape) for p, shape in zip(planes, shapes)]
    if backend == "libdeflate":
        pytest.importorskip("deflate")
    else:
        monkeypatch.setattr(zlibs, "_libdeflate", None)
    if backend == "zlib":
        monkeypatch.setattr(zlibs, "INFLATE", plain_zlib)
        monkeypatch.setattr(zlibs, "INFLATE_ERRORS", (plain_zlib.error,))
    got = [png.decode_png_packed(p, *shape) for p, shape in zip(planes, shapes)]
    assert all(np.array_equal(a, b) for a, b in zip(reference, got))
    with pytest.raises(DecodeError):  # truncated deflate stream
        png.decode_png_packed(planes[0][:-40] + planes[0][-12:], 64, 300, 4, 16)
    stream = plain_zlib.compress(bytes(100))
    for size in (99, 101):  # inflates past, or short of, what the manifest promises
        with pytest.raises(DecodeError, match="inflate"):
            png.inflate_exact(stream, size)
    assert png.inflate_exact(stream, 100) == bytes(100)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    symbols=st.integers(1, 256),
    size=st.integers(0, 300_000),
    skew=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**16),
)
def test_zlib_ng_writes_zlibs_huffman_only_bytes(symbols, size, skew, seed):
    """Planes must not depend on whether the fast extra is installed."""
    zlib_ng = pytest.importorskip("zlib_ng.zlib_ng")
    from kformat.codecs import zlibs

    rng = np.random.default_rng(seed)
    data = np.minimum(rng.geometric(skew, size) - 1, symbols - 1).astype(np.uint8).tobytes()
    assert zlibs.deflate(data, 9, zlib.Z_HUFFMAN_ONLY, zlib_ng) == zlibs.deflate(data, 9, zlib.Z_HUFFMAN_ONLY)


def test_a_huffman_library_that_writes_other_bytes_is_not_used(monkeypatch):
    from kformat.codecs import zlibs

    class Stored:  # a valid zlib writer whose streams differ from zlib's
        @staticmethod
        def compressobj(level, method, wbits, memlevel, strategy):
            return zlib.compressobj(0, method, wbits, memlevel, strategy)

    monkeypatch.setattr(zlibs, "_zlib_ng", Stored)
    zlibs.huffman_library.cache_clear()
    try:
        assert zlibs.huffman_library() is zlib
        data = bytes(range(256)) * 50
        assert b"".join(zlibs.huffman_only(data, 9)) == zlibs.deflate(data, 9, zlib.Z_HUFFMAN_ONLY)
    finally:
        zlibs.huffman_library.cache_clear()
