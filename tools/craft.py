"""Take kformat containers apart and put forged ones together, for attack files and fuzzing.

A forged manifest is re-encoded with a matching header hash, so that the check under test is
the one that fires, not the manifest hash. Blobs can be replaced (the manifest's length and
hash follow) to forge planes and tables that only their decoder can refuse.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field

import msgpack

from kformat.format.constants import ALIGNMENT, HEADER_SIZE, MAGIC
from kformat.format.header import HEADER_STRUCT as HEADER


@dataclass
class Parts:
    """A single-file container as (header fields, manifest dict, data region)."""

    manifest: dict
    data: bytes
    major: int = 1
    minor: int = 0
    flags: int = 0
    extra: dict = field(default_factory=dict)

    def copy(self) -> "Parts":
        return Parts(copy.deepcopy(self.manifest), self.data, self.major, self.minor, self.flags)

    def tensor(self, name: str) -> dict:
        return next(t for t in self.manifest["tensors"] if t["name"] == name)

    def blob(self, ref: dict) -> bytes:
        return self.data[ref["offset"] : ref["offset"] + ref["length"]]

    def replace_blob(self, ref: dict, payload: bytes) -> None:
        """Append `payload` to the data region and point `ref` at it, with its true hash."""
        pad = (-len(self.data)) % ALIGNMENT
        self.data += b"\0" * pad
        ref.update(offset=len(self.data), length=len(payload), sha256=hashlib.sha256(payload).hexdigest())
        self.data += payload


def split(container: bytes) -> Parts:
    magic, major, minor, flags, length, data_offset, _digest = HEADER.unpack_from(container)
    assert magic == MAGIC, "not a kformat file"
    manifest = msgpack.unpackb(container[HEADER_SIZE : HEADER_SIZE + length], raw=False)
    return Parts(manifest, container[data_offset:], major, minor, flags)


def encode_manifest(manifest: dict) -> bytes:
    return msgpack.packb(manifest, use_bin_type=True)


def assemble(
    parts: Parts,
    manifest_bytes: bytes | None = None,
    *,
    manifest_length: int | None = None,
    data_offset: int | None = None,
    digest: bytes | None = None,
) -> bytes:
    """A container from parts; the keyword arguments forge single header fields."""
    body = encode_manifest(parts.manifest) if manifest_bytes is None else manifest_bytes
    start = HEADER_SIZE + len(body)
    start += (-start) % ALIGNMENT
    header = HEADER.pack(
        MAGIC,
        parts.major,
        parts.minor,
        parts.flags,
        len(body) if manifest_length is None else manifest_length,
        start if data_offset is None else data_offset,
        hashlib.sha256(body).digest() if digest is None else digest,
    )
    return header + body + b"\0" * (start - HEADER_SIZE - len(body)) + parts.data


def sharded_manifest(manifest: dict) -> bytes:
    """A sharded directory's manifest.kf: header and manifest, no data region."""
    body = encode_manifest(manifest)
    return (
        HEADER.pack(
            MAGIC,
            manifest["version"][0],
            manifest["version"][1],
            0,
            len(body),
            0,
            hashlib.sha256(body).digest(),
        )
        + body
    )


def rewrite_manifest(source, target, change) -> None:
    """Copy a single-file container with `change(manifest_dict)` applied to its manifest."""
    from pathlib import Path

    parts = split(Path(source).read_bytes())
    change(parts.manifest)
    Path(target).write_bytes(assemble(parts))
