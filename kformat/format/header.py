"""The fixed 64-byte header and the msgpack manifest that follows it.

    offset size  field
    0      8     magic  \\x89 K F M T \\r \\n \\x1a
    8      2     major version (u16 LE)
    10     2     minor version (u16 LE)
    12     4     flags (u32 LE, reserved, written 0, ignored by readers)
    16     8     manifest length in bytes (u64 LE)
    24     8     data offset: start of the blob region (u64 LE; 0 in a sharded manifest)
    32     32    SHA-256 of the manifest bytes
    64     ...   manifest (msgpack map)

Checked in this order: magic, version, manifest size cap, manifest hash, manifest schema.
Extensions (`must_understand`, methods, codecs) are checked next, by kformat.format.validate.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

import msgpack
from pydantic import ValidationError

from ..errors import BadMagic, FormatError, TruncatedError, VersionError
from .constants import FORMAT_MAJOR, FORMAT_MINOR, HEADER_SIZE, MAGIC, MAX_MANIFEST_BYTES, SUPPORTED_MAJORS
from .manifest import Manifest

HEADER_STRUCT = struct.Struct("<8sHHIQQ32s")
if HEADER_STRUCT.size != HEADER_SIZE:  # pragma: no cover - a layout edit that breaks the spec
    raise ImportError("header struct does not match HEADER_SIZE")


@dataclass(frozen=True)
class Header:
    major: int
    minor: int
    manifest_length: int
    data_offset: int
    manifest_sha256: bytes


def encode_manifest(manifest: Manifest) -> bytes:
    return msgpack.packb(manifest.model_dump(mode="python"), use_bin_type=True)


def encode_header(manifest_bytes: bytes, data_offset: int) -> bytes:
    digest = hashlib.sha256(manifest_bytes).digest()
    return HEADER_STRUCT.pack(MAGIC, FORMAT_MAJOR, FORMAT_MINOR, 0, len(manifest_bytes), data_offset, digest)


def decode_header(data: bytes, source: str, max_manifest: int = MAX_MANIFEST_BYTES) -> Header:
    if len(data) < HEADER_SIZE:
        if not data:
            raise BadMagic(f"{source}: not a kformat file (bad magic): it is empty")
        if data[: len(MAGIC)] != MAGIC[: len(data)]:
            raise BadMagic(f"{source}: not a kformat file (bad magic)")
        raise TruncatedError(f"{source}: truncated: {len(data)} bytes, the header alone is {HEADER_SIZE}")
    magic, major, minor, _flags, length, data_offset, digest = HEADER_STRUCT.unpack_from(data)
    if magic != MAGIC:
        raise BadMagic(f"{source}: not a kformat file (bad magic {magic!r}, expected {MAGIC!r})")
    if major not in SUPPORTED_MAJORS:
        raise VersionError(
            f"{source}: format version {major}.{minor} is newer than this reader"
            f" (supports {', '.join(f'{m}.x' for m in SUPPORTED_MAJORS)}); upgrade kformat"
        )
    if length > max_manifest:
        raise FormatError(f"{source}: manifest of {length} bytes exceeds the cap of {max_manifest}")
    if data_offset and data_offset < HEADER_SIZE + length:
        raise FormatError(f"{source}: data offset {data_offset} lies inside the manifest")
    return Header(major, minor, length, data_offset, digest)


def _unique_keys(pairs: list) -> dict:
    """A msgpack map as a dict, refusing a key given twice (which one would win is undefined)."""
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set = set()
        duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"key {duplicate!r} appears twice in one map")
    return result


def decode_manifest(data: bytes, header: Header, source: str) -> Manifest:
    if len(data) != header.manifest_length:
        raise TruncatedError(
            f"{source}: truncated: manifest should be {header.manifest_length} bytes, got {len(data)}"
        )
    if hashlib.sha256(data).digest() != header.manifest_sha256:
        raise FormatError(f"{source}: manifest hash mismatch (corrupted manifest)")
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True, object_pairs_hook=_unique_keys)
    except Exception as exc:  # noqa: BLE001 - msgpack raises many types on bad input
        raise FormatError(f"{source}: manifest is not valid msgpack: {exc}") from None
    try:
        # Strict types, checked on the JSON form (msgpack arrays are JSON arrays): "37" is not a
        # dimension and true is not 1. A binary field has no JSON form and is refused too.
        text = json.dumps(raw, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"{source}: manifest holds a value that is not plain data: {exc}") from None
    try:
        manifest = Manifest.model_validate_json(text, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise FormatError(
            f"{source}: manifest field {loc}: {first['msg']} ({exc.error_count()} problem(s))"
        ) from None
    if manifest.version[0] != header.major:
        raise FormatError(
            f"{source}: manifest version {manifest.version} disagrees with header {header.major}"
        )
    return manifest


__all__ = ["HEADER_STRUCT", "Header", "encode_header", "decode_header", "encode_manifest", "decode_manifest"]
