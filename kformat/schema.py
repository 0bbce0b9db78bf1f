"""The container's schema: constants and the pydantic models of the manifest.

These models *are* the format's schema: `tools/gen_schema.py` writes spec/schema/*.json from
them and a test fails when the committed files drift. Unknown optional fields are ignored
(extra="ignore") so newer minor versions stay readable; an extension that changes meaning
is listed in `must_understand` and a reader that does not know it refuses the file.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .recipe import Recipe

MAGIC = b"\x89KFMT\r\n\x1a"
FORMAT_MAJOR = 1
FORMAT_MINOR = 0
SUPPORTED_MAJORS = (1,)
HEADER_SIZE = 64
ALIGNMENT = 64
MAX_MANIFEST_BYTES = 64 << 20  # default cap a reader accepts; a reader option can lower it
MANIFEST_NAME = "manifest.kf"
SHARD_DIR = "shards"
SHARD_SUFFIX = ".kfs"
DEFAULT_SHARD_SIZE = 64 << 20
KNOWN_EXTENSIONS: frozenset[str] = frozenset()

HEX64 = re.compile(r"^[0-9a-f]{64}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class BlobRef(_Model):
    """Where a blob lives: shard index (0 for a single file), offset, length, and its hash."""

    shard: int = Field(0, ge=0, description="index into shards; 0 in a single file")
    offset: int = Field(ge=0, description="bytes from the start of the data region or shard")
    length: int = Field(ge=0, description="blob length in bytes")
    sha256: str = Field(description="lowercase hex SHA-256 of the blob's bytes")

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not HEX64.match(value):
            raise ValueError("must be 64 lowercase hex digits")
        return value


class Tile(_Model):
    """One rectangle of a tensor's 2-D view and the blob holding its plane."""

    row: int = Field(ge=0)
    col: int = Field(ge=0)
    rows: int = Field(ge=1)
    cols: int = Field(ge=1)
    blob: BlobRef


class Table(_Model):
    """A small array stored as a blob: codebooks, linear scales and zero points."""

    dtype: Literal["float16", "float32", "uint8"]
    shape: list[int] = Field(description="(groups, entries) for codebooks, (groups,) otherwise")
    blob: BlobRef


class Quant(_Model):
    """How a tensor's planes turn back into values."""

    method: Literal["kmeans", "linear", "fp16", "raw"]
    bits: int | None = Field(None, ge=1, le=8)
    group_rows: int = Field(0, ge=0, description="rows sharing one codebook/scale (0: none)")
    codebook: Table | None = None
    scale: Table | None = None
    zero_point: Table | None = None


class TensorEntry(_Model):
    name: str = Field(min_length=1)
    dtype: str = Field(description="numpy dtype name of the source tensor")
    shape: list[int]
    view: tuple[int, int] = Field(description="rows x cols of the 2-D view tiles are cut from")
    storage: str = Field(description="element type of planes: uint8 codes, float16, or dtype")
    depth: int | None = Field(None, description="plane bit depth (1, 2, 4, 8) of code planes")
    codec: Literal["png", "zstd", "raw"]
    tile: tuple[int, int]
    quant: Quant
    tiles: list[Tile]
    rule: str = Field(description="the rule applied, in its short text form")
    reason: str = Field("", description="why this rule (recipe entry, fallback)")
    stats: dict[str, float] = Field(default_factory=dict)


class Shard(_Model):
    name: str = Field(description="file name under shards/: <sha256>.kfs")
    length: int = Field(ge=0)
    sha256: str


class Manifest(_Model):
    format: Literal["kformat"] = "kformat"
    version: tuple[int, int] = (FORMAT_MAJOR, FORMAT_MINOR)
    generator: str = ""
    layout: Literal["single", "sharded"] = "single"
    alignment: int = ALIGNMENT
    must_understand: list[str] = Field(default_factory=list)
    shards: list[Shard] = Field(default_factory=list)
    tensors: list[TensorEntry]
    recipe: Recipe | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
