#!/usr/bin/env python3
"""Regenerate spec/conformance/attacks/: one small crafted container per attack, and the error
it must raise.

Each attack starts from a golden vector in spec/conformance/vectors/ and forges one thing,
keeping every other check satisfied (manifest hash, blob hashes) so that the defence under test
is the one that fires. spec/conformance/attacks.json lists, per file: what it forges, the
language-neutral kind of error a reader must raise (kformat.errors: `kind`), and a fragment of
the Python reader's message. Run on purpose (`make conformance`); tests only read these files.
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
import zlib
from pathlib import Path

import msgpack
import numpy as np
import pyzstd

import craft
from kformat import errors

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "spec" / "conformance" / "vectors"
OUT = ROOT / "spec" / "conformance" / "attacks"
INDEX = ROOT / "spec" / "conformance" / "attacks.json"


def base(name: str) -> craft.Parts:
    return craft.split((VECTORS / f"{name}.kf").read_bytes())


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )


def png(width: int, height: int, depth: int, idat: bytes, palette: int = 16) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, 3, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"PLTE", bytes(3 * palette))
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def single_file_attacks() -> dict[str, tuple[bytes, str, str, str]]:
    """name -> (file bytes, what it forges, error class, message fragment)."""
    out: dict[str, tuple[bytes, str, str, str]] = {}

    def add(name, data, what, error, match):
        out[name] = (data, what, error, match)

    good = base("kmeans4")
    good_bytes = craft.assemble(good)

    # -- header -------------------------------------------------------------------------
    add("bad_magic", b"GIF89a" + good_bytes[6:], "not a kformat file", "FormatError", "bad magic")
    add(
        "truncated_header",
        good_bytes[:40],
        "a file shorter than the 64-byte header",
        "FormatError",
        "truncated",
    )
    future = good.copy()
    future.major = 99
    add(
        "future_major_version",
        craft.assemble(future),
        "major version 99",
        "VersionError",
        "newer than this reader",
    )
    add(
        "manifest_length_cap",
        craft.assemble(good, manifest_length=1 << 40),
        "a header promising a 1 TiB manifest",
        "FormatError",
        "exceeds the cap",
    )
    add(
        "data_offset_in_manifest",
        craft.assemble(good, data_offset=80),
        "a data region starting inside the manifest",
        "FormatError",
        "lies inside the manifest",
    )
    add(
        "manifest_hash_mismatch",
        craft.assemble(good, digest=bytes(32)),
        "a manifest whose SHA-256 is not the header's",
        "FormatError",
        "manifest hash mismatch",
    )
    add("manifest_truncated", good_bytes[:200], "a file cut inside its manifest", "FormatError", "truncated")
    garbage = b"\xc1" * 64
    add(
        "manifest_not_msgpack",
        craft.assemble(good, garbage),
        "a manifest that is not msgpack",
        "FormatError",
        "not valid msgpack",
    )

    # -- manifest schema and consistency -------------------------------------------------
    def forged(mutate, name, what, error, match, vector="kmeans4"):
        parts = base(vector)
        mutate(parts)
        add(name, craft.assemble(parts), what, error, match)

    forged(
        lambda p: p.manifest.pop("tensors"),
        "manifest_missing_field",
        "no tensor list",
        "FormatError",
        "manifest field tensors",
    )
    forged(
        lambda p: p.manifest.__setitem__("must_understand", ["x-homomorphic-weights"]),
        "unknown_extension",
        "a must-understand extension this reader lacks",
        "VersionError",
        "x-homomorphic-weights",
    )
    forged(
        lambda p: p.tensor("dense.weight")["tiles"][0]["blob"].__setitem__("offset", -64),
        "negative_offset",
        "a blob at offset -64",
        "FormatError",
        "greater than or equal to 0",
    )
    forged(
        lambda p: p.manifest["tensors"].append(p.manifest["tensors"][0]),
        "duplicate_tensor_name",
        "two tensors named dense.weight",
        "FormatError",
        "appears twice",
    )
    forged(
        lambda p: p.tensor("dense.weight").__setitem__("shape", [37, 71]),
        "shape_view_mismatch",
        "a shape the 2-D view cannot hold",
        "FormatError",
        "does not hold shape",
    )
    forged(
        lambda p: p.tensor("dense.weight").__setitem__("view", [74, 35]),
        "view_rows_mismatch",
        "a view whose rows disagree with the shape",
        "FormatError",
        "view has 74 rows",
    )
    forged(
        lambda p: p.tensor("dense.weight")["tiles"][1].__setitem__("cols", 31),
        "tile_off_grid",
        "a tile rectangle off the grid",
        "FormatError",
        "is not grid cell",
    )
    forged(
        lambda p: p.tensor("dense.weight")["tiles"].pop(),
        "tile_missing",
        "a tensor missing its last tile",
        "FormatError",
        "tiles, the 16x32 grid",
    )
    forged(
        lambda p: p.tensor("dense.weight").__setitem__("depth", 8),
        "bits_depth_mismatch",
        "4-bit codes in an 8-bit plane",
        "FormatError",
        "code planes need",
    )
    forged(
        lambda p: p.tensor("dense.weight")["quant"]["codebook"].__setitem__("shape", [1, 8]),
        "codebook_shape",
        "a 4-bit codebook of 8 entries",
        "FormatError",
        "codebook: expected",
    )

    def overlap(p):
        tiles = p.tensor("dense.weight")["tiles"]
        tiles[1]["blob"] = dict(tiles[0]["blob"])

    forged(overlap, "blob_overlap", "two tiles sharing one blob", "FormatError", "overlaps")

    def past_end(p):
        p.tensor("dense.weight")["tiles"][0]["blob"]["offset"] = len(p.data) + 4096

    forged(
        past_end,
        "blob_past_end_of_file",
        "a blob beyond the end of the file",
        "StorageError",
        "shorter than the manifest says",
    )
    forged(
        lambda p: p.manifest.__setitem__(
            "shards", [{"name": "../../../etc/passwd", "length": 10, "sha256": "0" * 64}]
        ),
        "single_file_lists_shards",
        "a single file naming a shard",
        "FormatError",
        "lists shards",
    )

    # -- a manifest read strictly ------------------------------------------------------------
    packer = msgpack.Packer(use_bin_type=True)
    pairs = list(good.manifest.items()) + [("tensors", [])]
    twice = packer.pack_map_header(len(pairs)) + b"".join(packer.pack(k) + packer.pack(v) for k, v in pairs)
    add(
        "duplicate_key",
        craft.assemble(good, twice),
        "a manifest giving 'tensors' twice",
        "FormatError",
        "appears twice in one map",
    )
    forged(
        lambda p: p.tensor("dense.weight").__setitem__("shape", ["37", 70]),
        "string_dimension",
        'a dimension written as the string "37"',
        "FormatError",
        "manifest field tensors.0.shape.0",
    )
    forged(
        lambda p: p.tensor("dense.weight")["quant"].__setitem__("group_rows", True),
        "bool_for_int",
        "group_rows written as true",
        "FormatError",
        "manifest field tensors.0.quant.group_rows",
    )

    # -- shapes and sizes before any allocation ------------------------------------------------
    def rank(p):
        t = p.tensor("dense.weight")
        t["shape"] = [37, 70] + [1] * 70

    forged(rank, "rank_too_large", "a tensor of rank 72", "LimitError", "exceeds the limit of 32 dimensions")

    def empty_huge(p):
        t = p.tensor("dense.weight")
        t.update(shape=[0, 2**62], view=[0, 2**62], tiles=[])

    forged(
        empty_huge,
        "empty_huge_dimension",
        "an empty tensor with a dimension of 2^62",
        "LimitError",
        "exceeds 1099511627776",
    )

    def empty_view(p):
        t = p.tensor("dense.weight")
        t.update(shape=[0, 5], view=[7, 0], tiles=[])

    forged(
        empty_view,
        "empty_view_mismatch",
        "an empty tensor whose view has 7 rows",
        "FormatError",
        "view has 7 rows",
    )

    def amplified(p):
        t = p.tensor("dense.weight")
        rows, cols, tile_rows = 32768, 16384, 4096
        t.update(shape=[rows, cols], view=[rows, cols], tile=[tile_rows, cols], depth=1, codec="zstd")
        t["quant"].update(bits=1, group_rows=rows)
        plane = np.zeros((tile_rows, cols // 8), np.uint8).tobytes()
        frame = pyzstd.compress(plane, 19)
        first = dict(t["tiles"][0])
        t["tiles"] = []
        for r in range(0, rows, tile_rows):
            tile = dict(first, row=r, col=0, rows=tile_rows, cols=cols, blob=dict(first["blob"]))
            p.replace_blob(tile["blob"], frame)
            t["tiles"].append(tile)
        p.replace_blob(t["quant"]["codebook"]["blob"], np.zeros(2, "<f2").tobytes())
        t["quant"]["codebook"]["shape"] = [1, 2]

    forged(
        amplified,
        "amplification",
        "2 GiB of float32 promised by a few kilobytes of zstd frames",
        "LimitError",
        "more than 4096:1",
    )

    def missing_blobs(p):
        t = p.tensor("dense.weight")
        rows = cols = 1 << 17
        side = 4096
        t.update(shape=[rows, cols], view=[rows, cols], tile=[side, side])
        t["quant"]["group_rows"] = rows
        first = dict(t["tiles"][0])
        t["tiles"] = []
        offset = len(p.data) + (1 << 20)
        for r in range(0, rows, side):
            for c in range(0, cols, side):
                blob = dict(first["blob"], offset=offset, length=16 << 10)
                t["tiles"].append(dict(first, row=r, col=c, rows=side, cols=side, blob=blob))
                offset += 16 << 10

    forged(
        missing_blobs,
        "blobs_not_in_file",
        "a 2^17 x 2^17 tensor whose tiles lie past the end of the file",
        "StorageError",
        "shorter than the manifest says",
    )

    # -- extensions this reader does not know, listed in must_understand or not ----------------
    forged(
        lambda p: p.tensor("dense.weight")["quant"].__setitem__("method", "sparse"),
        "unknown_method",
        "a tensor quantized by a method no reader knows",
        "VersionError",
        "unknown quantization method 'sparse'",
    )
    forged(
        lambda p: p.tensor("dense.weight").__setitem__("codec", "jpeg"),
        "unknown_codec",
        "a tile plane in a codec no reader knows",
        "VersionError",
        "unknown plane codec 'jpeg'",
    )

    # -- limits on what a manifest may ask ------------------------------------------------
    def huge_tile(p):
        t = p.tensor("dense.weight")
        t.update(shape=[16384, 8192], view=[16384, 8192], tile=[16384, 8192])
        t["quant"]["group_rows"] = 16384
        t["tiles"] = [dict(t["tiles"][0], rows=16384, cols=8192)]

    forged(
        huge_tile,
        "tile_too_large",
        "one 16384 x 8192 tile (2^27 elements)",
        "LimitError",
        "exceeds the limit",
    )

    def inflation(p):
        t = p.tensor("dense.weight")
        t.update(shape=[4096, 4096], view=[4096, 4096], tile=[4096, 4096])
        t["quant"]["group_rows"] = 4096
        t["tiles"] = [dict(t["tiles"][0], rows=4096, cols=4096)]

    forged(
        inflation,
        "inflation_bound",
        "a 16M-element tile promised by a 200-byte PNG",
        "LimitError",
        "cannot hold",
    )

    # -- forged blobs (hashes match: only the decoders can refuse them) -------------------
    def forged_blob(
        name, what, error, match, make, vector="kmeans4", tensor="dense.weight", which="tile", mutate=None
    ):
        parts = base(vector)
        t = parts.tensor(tensor)
        if mutate:
            mutate(parts, t)
        ref = t["tiles"][0]["blob"] if which == "tile" else t["quant"][which]["blob"]
        parts.replace_blob(ref, make(parts, t))
        add(name, craft.assemble(parts), what, error, match)

    forged_blob(
        "png_dimensions",
        "a PNG plane claiming 60000 x 60000 pixels",
        "DecodeError",
        "not the promised one",
        lambda p, t: png(60000, 60000, 4, zlib.compress(b"\0" * 1000)),
    )
    # 16 rows x (16 bytes + filter byte) promised; 64 MiB of zeros inflate from 64 KiB.
    forged_blob(
        "png_bomb",
        "a PNG plane whose pixels inflate to 64 MiB",
        "DecodeError",
        "inflates to the wrong size",
        lambda p, t: png(32, 16, 4, zlib.compress(bytes(64 << 20), 9)),
    )
    forged_blob(
        "png_bad_crc",
        "a PNG chunk with a wrong CRC",
        "DecodeError",
        "CRC",
        lambda p, t: p.blob(t["tiles"][0]["blob"])[:-4] + b"\xde\xad\xbe\xef",
    )
    forged_blob(
        "png_filter_type",
        "a PNG row with filter type 9",
        "DecodeError",
        "filter type",
        lambda p, t: png(32, 16, 4, zlib.compress(bytes([9] + [0] * 16) * 16)),
    )
    forged_blob(
        "zstd_declared_size",
        "a zstd frame declaring 1 GiB",
        "DecodeError",
        "declares",
        lambda p, t: _zstd_with_size(1 << 30),
        vector="kmeans4_zstd",
    )
    forged_blob(
        "zstd_bomb",
        "a zstd frame without a size that inflates to 64 MiB",
        "DecodeError",
        "wrong size",
        lambda p, t: _zstd_streamed(bytes(64 << 20)),
        vector="kmeans4_zstd",
    )

    def three_bits(p, t):  # a valid 3-bit codebook: 8 entries
        t["quant"]["bits"] = 3
        t["quant"]["codebook"]["shape"] = [1, 8]
        p.replace_blob(t["quant"]["codebook"]["blob"], np.linspace(-1, 1, 8).astype("<f2").tobytes())

    forged_blob(
        "code_beyond_codebook",
        "3-bit k-means whose plane holds code 15",
        "DecodeError",
        ">= 8",
        lambda p, t: _zstd_streamed(bytes([0xFF]) * (16 * 16)),
        vector="kmeans4_zstd",
        mutate=three_bits,
    )

    def nan_codebook(p, t):
        return np.array([np.nan] + [0.0] * 15, dtype="<f2").tobytes()

    forged_blob(
        "codebook_nan", "a codebook holding NaN", "DecodeError", "NaN", nan_codebook, which="codebook"
    )

    # floatz: one zstd frame per byte plane, each exactly the tile's element count
    forged_blob(
        "floatz_missing_plane",
        "a float32 floatz tile with 3 of its 4 byte-plane frames",
        "DecodeError",
        "not a complete zstd frame",
        lambda p, t: _tile_frames(3),
        vector="lossless_floatz",
    )
    forged_blob(
        "floatz_trailing_frame",
        "a float32 floatz tile with a fifth frame after its four planes",
        "DecodeError",
        "after its last frame",
        lambda p, t: _tile_frames(5),
        vector="lossless_floatz",
    )
    forged_blob(
        "floatz_plane_bomb",
        "a floatz byte plane whose frame inflates to 64 MiB",
        "DecodeError",
        "wrong size",
        lambda p, t: _zstd_streamed(bytes(64 << 20)) + _tile_frames(3),
        vector="lossless_floatz",
    )

    # scaled codebooks: value = codebook entry x the row's scale
    scaled = base("kmeans4_scaled")
    scaled.manifest["must_understand"] = []
    add(
        "scale_not_declared",
        craft.assemble(scaled),
        "a scaled codebook without 'scaled-codebooks' in must_understand (a reader ignoring the"
        " scale would decode wrong values)",
        "FormatError",
        "scaled-codebooks",
    )
    scaled = base("kmeans4_scaled")
    scaled.tensor("dense.weight")["quant"]["scale"]["shape"] = [36]
    add(
        "scale_wrong_shape", craft.assemble(scaled), "a row-scale table one row short", "FormatError", "scale"
    )

    # aliases: tied tensors stored once
    tied = base("tied_kmeans4")
    tied.manifest["must_understand"] = []
    add(
        "alias_not_declared",
        craft.assemble(tied),
        "aliases without 'aliases' in must_understand (an older reader would drop tensors)",
        "FormatError",
        "must_understand",
    )
    tied = base("tied_kmeans4")
    tied.manifest["aliases"] = {"head.weight": "nowhere"}
    add(
        "alias_to_nowhere",
        craft.assemble(tied),
        "an alias naming no stored tensor",
        "FormatError",
        "not a stored tensor",
    )
    tied = base("tied_kmeans4")
    tied.manifest["aliases"] = {"dense.bias": "dense.weight"}
    add(
        "alias_shadows_tensor",
        craft.assemble(tied),
        "an alias with the name of a stored tensor",
        "FormatError",
        "name of a stored tensor",
    )

    # -- corruption (hashes do not match) ------------------------------------------------
    parts = base("kmeans4")
    ref = parts.tensor("dense.weight")["tiles"][0]["blob"]
    start = ref["offset"] + ref["length"] // 2
    parts.data = parts.data[:start] + bytes([parts.data[start] ^ 0x10]) + parts.data[start + 1 :]
    add(
        "blob_bit_flip", craft.assemble(parts), "one flipped bit in a tile", "IntegrityError", "hash mismatch"
    )
    add(
        "truncated_data",
        good_bytes[: len(good_bytes) - 100],
        "a file cut in its data region",
        "StorageError",
        "shorter than the manifest says",
    )
    return out


def _zstd_with_size(size: int) -> bytes:
    """A tiny zstd frame whose header declares `size` bytes of content: magic, a descriptor
    (single segment, 8-byte content size), the size, then one empty raw last block."""
    return struct.pack("<IBQ", 0xFD2FB528, 0xE0, size) + b"\x01\x00\x00"


def _tile_frames(count: int) -> bytes:
    """`count` zstd frames of one 16 x 32 tile's byte plane each (a float32 floatz tile has 4)."""
    return b"".join(pyzstd.compress(bytes(16 * 32)) for _ in range(count))


def _zstd_streamed(data: bytes) -> bytes:
    """A frame without a declared content size (as a streaming compressor writes it)."""
    compressor = pyzstd.ZstdCompressor(3)
    return compressor.compress(data, pyzstd.ZstdCompressor.CONTINUE) + compressor.flush(
        pyzstd.ZstdCompressor.FLUSH_FRAME
    )


def sharded_attacks() -> dict[str, tuple[Path, str, str, str]]:
    """Directories forged from the sharded golden vector."""
    out = {}
    source = VECTORS / "mobile_sharded"
    manifest = craft.split((source / "manifest.kf").read_bytes()).manifest

    def add(name, mutate, what, error, match, corrupt_shard=False):
        target = OUT / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target)
        m = json.loads(json.dumps(manifest))
        mutate(m)
        (target / "manifest.kf").write_bytes(craft.sharded_manifest(m))
        if corrupt_shard:
            shard = sorted((target / "shards").iterdir())[0]
            data = bytearray(shard.read_bytes())
            data[len(data) // 2] ^= 0x01
            shard.write_bytes(bytes(data))
        out[name] = (target, what, error, match)

    def rename(new):
        return lambda m: m["shards"][0].__setitem__("name", new)

    add(
        "shard_path_traversal",
        rename("../../../../etc/passwd"),
        "a shard named ../../../../etc/passwd",
        "FormatError",
        "is not <sha256>.kfs",
    )
    add(
        "shard_absolute_path",
        rename("/etc/passwd"),
        "a shard named /etc/passwd",
        "FormatError",
        "is not <sha256>.kfs",
    )
    add(
        "shard_name_not_hash",
        rename("0" * 64 + ".kfs"),
        "a shard name that is not its hash",
        "FormatError",
        "is not <sha256>.kfs",
    )
    add(
        "blob_past_end_of_shard",
        lambda m: m["tensors"][0]["tiles"][0]["blob"].__setitem__("offset", m["shards"][0]["length"]),
        "a blob beyond the end of its shard",
        "FormatError",
        "past the end of shard",
    )
    add(
        "blob_in_missing_shard",
        lambda m: m["tensors"][0]["tiles"][0]["blob"].__setitem__("shard", 99),
        "a blob in shard 99 of 2",
        "FormatError",
        "does not exist",
    )
    add(
        "shard_bit_flip",
        lambda m: None,
        "one flipped bit in a shard",
        "IntegrityError",
        "hash mismatch",
        corrupt_shard=True,
    )
    return out


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.kf"):
        old.unlink()
    table = {}
    for name, (data, what, error, match) in single_file_attacks().items():
        (OUT / f"{name}.kf").write_bytes(data)
        table[f"attacks/{name}.kf"] = {"forges": what, "kind": getattr(errors, error).kind, "match": match}
    for name, (_path, what, error, match) in sharded_attacks().items():
        table[f"attacks/{name}/"] = {"forges": what, "kind": getattr(errors, error).kind, "match": match}
    INDEX.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(table)} attacks to {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
